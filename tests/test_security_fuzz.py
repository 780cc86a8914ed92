"""Hostile input: the maps parser, the pagemap entry decoder and the image reader
take anything and answer with a result or a clear error (ValueError subclasses or our
typed errors), never a crash or a stray exception from deep inside.  Also: a dump into a
directory with planted symlinks, or over an existing image, stays inside its directory and
keeps the old image."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stress.targets import build

from softdirty.errors import SoftDirtyError
from softdirty.maps import parse_maps
from softdirty.pagemap import Entry

CLEAR = (ValueError, SoftDirtyError)

hexes = st.integers(0, 2**64 + 5).map(lambda n: f"{n:x}")
maps_line = st.one_of(
    st.builds(lambda a, b, p, o, d, i, path: f"{a}-{b} {p} {o} {d} {i} {path}",
              hexes, hexes, st.text("rwxps-", min_size=0, max_size=5), hexes,
              st.text("0123456789abcdef:", max_size=7), st.integers(-5, 2**65).map(str),
              st.text(max_size=30)),
    st.text(max_size=120),
)


@given(st.lists(maps_line, max_size=8).map("\n".join))
def test_maps_parser_takes_anything(text: str) -> None:
    try:
        vmas = parse_maps(text)
    except CLEAR:
        return
    for v in vmas:
        assert v.start <= v.end


@given(st.integers(-(2**70), 2**70))
def test_entry_decoder_takes_any_integer(raw: int) -> None:
    try:
        e = Entry.decode(raw)
    except CLEAR:
        assert not 0 <= raw < 2**64, f"a valid 64-bit entry {raw:#x} was refused"
        return
    assert 0 <= raw < 2**64
    assert e.encode() == raw  # every u64 round-trips
    repr(e)
    e.pfn  # noqa: B018 - must not raise either


@given(st.binary(max_size=24))
def test_entry_decoder_takes_any_bytes(raw: bytes) -> None:
    try:
        Entry.from_bytes(raw)
    except CLEAR:
        assert len(raw) != 8


dump_mod = pytest.importorskip("softdirty.dump")

index_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150)
@given(st.dictionaries(st.sampled_from(["COMPLETE", "img/index.json", "img/round-0.bin", "img", "x"]),
                       st.binary(max_size=200) | index_values.map(lambda v: json.dumps(v).encode()),
                       max_size=4),
       st.booleans())
def test_image_reader_takes_any_directory(files: dict[str, bytes], check: bool) -> None:
    with tempfile.TemporaryDirectory() as where:
        for name, body in files.items():
            path = Path(where, name)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(body)
            except (IsADirectoryError, NotADirectoryError, FileExistsError):
                continue
        try:
            dump_mod.load_image(where, check_data=check).close()
        except CLEAR:
            pass


def _victim() -> subprocess.Popen[str]:
    p = subprocess.Popen([build("victim"), "-2"], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    p.stdout.readline()
    return p


def _tree(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            if not os.path.islink(path):
                out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


def test_dump_with_planted_symlinks_stays_inside() -> None:
    p = _victim()
    try:
        with tempfile.TemporaryDirectory() as outside, tempfile.TemporaryDirectory() as where:
            Path(outside, "precious").write_bytes(b"keep me")
            before = _tree(outside)
            # Symlinks under every name the dump writes or might write, pointing outside.
            for name in ("COMPLETE", "index.json", ".tmp", "img", "round-0.bin", "LOCK", "lock"):
                os.symlink(os.path.join(outside, "precious"), os.path.join(where, name))
            os.symlink(outside, os.path.join(where, "dir"))
            try:
                dump_mod.dump(p.pid, where, backend="uffd", compare=False)
            except CLEAR:
                pass
            assert _tree(outside) == before, "the dump wrote outside its directory"
            assert sorted(os.listdir(outside)) == ["precious"]
    finally:
        p.kill()
        p.wait()


def test_dump_over_existing_image_keeps_the_old_one() -> None:
    p = _victim()
    try:
        with tempfile.TemporaryDirectory() as where:
            dump_mod.dump(p.pid, where, backend="uffd", compare=False)
            old = _tree(where)
            with pytest.raises(dump_mod.ImageExists):
                dump_mod.dump(p.pid, where, backend="uffd", compare=False)
            assert _tree(where) == old
            # force: replaced only once the new one is complete; here the target dies first.
            p.kill()
            p.wait()
            with pytest.raises(CLEAR):
                dump_mod.dump(p.pid, where, backend="uffd", compare=False, force=True)
            assert _tree(where) == old
            dump_mod.load_image(where).close()
    finally:
        p.kill()
        p.wait()
