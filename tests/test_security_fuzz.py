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


# --------------------------------------------------------------------------- emulator scenarios
scenario_mod = pytest.importorskip("softdirty.emulator.scenario")
ScenarioError = scenario_mod.ScenarioError

# Numbers a hostile scenario may carry: small, page-ish, huge (2**40 pages), negative, past u64.
numbers = st.one_of(st.integers(-4, 70), st.sampled_from([2**20, 2**35, 2**40, 2**47, 2**63, 2**64, -(2**40)]),
                    st.integers(-(2**70), 2**70))
labels = st.sampled_from(["a", "b", "child", "uffd", "nolabel"])
addresses = st.one_of(numbers, labels, st.builds(lambda lb, n: f"{lb}+{n}", labels, st.integers(0, 2**45)),
                      st.builds(lambda n: f"{n:#x}", st.integers(0, 2**66)), st.text(max_size=12))
# Wrong types anywhere: floats, bools, lists, tables, strings.
junk = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=12),
                 st.lists(st.integers(-3, 300), max_size=3), st.dictionaries(st.text(max_size=4), numbers, max_size=2))
any_value = st.one_of(numbers, addresses, junk)
step_keys = ["name", "at", "pages", "length", "to", "prot", "flags", "advice", "new_pages", "to_addr", "grow_pages",
             "value", "repeat", "offset", "count", "file", "offset_pages", "mode", "features", "uffd",
             "protect", "max_pages", "vec_len", "end_extra", "inverted", "mask", "anyof", "return"]
expectation = st.dictionaries(
    st.sampled_from(list(scenario_mod.EXPECT_KEYS)),
    st.one_of(any_value, st.dictionaries(addresses.map(str), st.one_of(st.text(max_size=6), numbers), max_size=2),
              st.lists(st.lists(addresses, max_size=3), max_size=2)),
    max_size=2)
def rarely(good: st.SearchStrategy[object], bad: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """``good`` 19 times in 20 (so most scenarios get past parsing), else ``bad``."""
    return st.integers(0, 19).flatmap(lambda k: bad if k == 0 else good)


plausible = {  # per key: mostly values of the right kind (so steps get past parsing), sometimes anything
    "at": addresses, "to": addresses, "to_addr": addresses, "pages": numbers, "length": numbers,
    "new_pages": numbers, "grow_pages": numbers, "count": numbers, "offset": numbers, "repeat": numbers,
    "prot": st.sampled_from(["rw", "r", "-", "rwx", "w"]), "advice": st.sampled_from(
        ["dontneed", "free", "populate_write", "populate_read", "willneed", "cold", "pageout", "nope"]),
    "flags": st.sampled_from(["private|anonymous", "private|anonymous|populate", "shared|anonymous", "fixed",
                              "maymove", "WP_MATCHING", "bogus"]),
    "features": st.sampled_from(["WP_ASYNC|WP_UNPOPULATED", "WP_ASYNC", ""]),
    "mode": st.sampled_from(["WP", "MISSING"]),
    "proc": st.sampled_from(["main", "child", "nope"]), "name": labels, "file": st.sampled_from(["f", "g"]),
    "value": st.sampled_from(["4", "1", "x", 7]),
}
step_body = st.dictionaries(st.sampled_from(step_keys), any_value, max_size=2).flatmap(
    lambda extra: st.fixed_dictionaries({}, optional={k: rarely(v, any_value) for k, v in plausible.items()}).map(
        lambda kv: dict(extra, **kv)))
steps = st.builds(
    lambda op, kv, exp: dict(kv, op=op, **({"expect": exp} if exp else {})),
    rarely(st.sampled_from(scenario_mod.OPS), junk),
    step_body, expectation | st.just({}))
# Mostly valid-looking scenarios (a mapping first, so later steps have something to act on).
first = st.builds(lambda n, fl: {"op": "mmap", "name": "a", "pages": n, "flags": fl},
                  st.integers(-2, 70) | st.sampled_from([2**16, 2**16 + 1, 2**40]),
                  st.sampled_from(["private|anonymous", "private|anonymous|populate", "shared|anonymous"]))
header = st.fixed_dictionaries({}, optional={
    "kernel": rarely(st.sampled_from(["6.1", "6.12", "6.18"]), junk),
    "layout": rarely(st.sampled_from(["bare", "exec"]), junk),
    "name": any_value,
    "profile": rarely(st.dictionaries(st.sampled_from(["soft_dirty", "scan_guard"]), st.booleans(), max_size=1),
                      st.dictionaries(st.text(max_size=5), any_value))})
scenarios = st.fixed_dictionaries(
    {"step": st.lists(steps, max_size=6) | st.builds(lambda f, ss: [f] + ss, first, st.lists(steps, max_size=6))},
    optional={"scenario": header,
              "file": rarely(st.lists(st.fixed_dictionaries({"name": st.sampled_from(["f", "g"]) | junk,
                                                             "pages": numbers | junk},
                                                            optional={"cached": junk, "kind": junk}), max_size=2),
                             junk)})


def run_hostile_scenario(data: object) -> None:
    """Parse and replay: results or ScenarioError only."""
    try:
        sc = scenario_mod.parse_scenario(data)  # type: ignore[arg-type]
        results = scenario_mod.run_scenario(sc)
    except ScenarioError:
        return
    assert len(results) == len(sc.steps)


@settings(max_examples=300)
@given(scenarios)
def test_scenario_runner_takes_any_structure(data: dict[str, object]) -> None:
    run_hostile_scenario(data)


@settings(max_examples=100)
@given(st.recursive(any_value, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
    st.sampled_from(["scenario", "step", "file", "op", "expect", "pages", "name"]), kids, max_size=3),
    max_leaves=12))
def test_scenario_parser_takes_any_value(data: object) -> None:
    run_hostile_scenario(data)


toml_bits = st.sampled_from(["[scenario]\n", "[[step]]\n", "[[file]]\n", "[step.expect]\n", 'op = "mmap"\n',
                             'op = "write"\n', 'name = "a"\n', 'at = "a+1"\n', "pages = 3\n",
                             "pages = 1099511627776\n", "pages = -1\n", 'kernel = "6.1"\n', "count = 9e99\n",
                             'pagemap = { "a" = "P", "a..a+9999999" = "" }\n', "[[[[\n", "= =\n", "\x00", "\xff"])


@settings(max_examples=200)
@given(st.lists(toml_bits, max_size=12).map("".join).map(lambda t: t.encode("utf-8", "surrogateescape"))
       | st.binary(max_size=300))
def test_scenario_loader_takes_any_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as where:
        path = Path(where, "s.toml")
        path.write_bytes(raw)
        try:
            results = scenario_mod.replay(path)
        except ScenarioError:
            return
        assert isinstance(results, list)


def test_scenario_loader_refuses_invalid_utf8_and_deep_nesting() -> None:
    with tempfile.TemporaryDirectory() as where:
        for body in (b"\xff\xfe[[step]]\n", b"x = " + b"[" * 100_000):
            path = Path(where, "s.toml")
            path.write_bytes(body)
            with pytest.raises(ScenarioError):
                scenario_mod.load_scenario(path)


@pytest.mark.parametrize("data", [
    {"step": [{"op": "mmap", "name": "a", "pages": 2**40}]},
    {"step": [{"op": "mmap", "name": "a", "pages": 2**16 + 1, "flags": "private|anonymous|populate"}]},
    {"file": [{"name": "f", "pages": 2**40}], "step": [{"op": "exit"}]},
    {"step": [{"op": "mmap", "name": "a", "pages": 4}, {"op": "write", "at": "a", "pages": 2**40}]},
    {"step": [{"op": "clear_refs", "repeat": 2**40}]},
    {"step": [{"op": "pagemap_read", "count": 2**40}]},
    {"step": [{"op": "mmap", "name": "a", "pages": 4, "expect": {"pagemap": {"0..0x7fffffffffff": ""}}}]},
])
def test_scenario_with_huge_page_counts_is_refused(data: dict[str, object]) -> None:
    """2**40 pages must be a clear ScenarioError, not a walk over 2**40 pages or memory exhaustion."""
    with pytest.raises(ScenarioError, match="at most|between|longer than"):
        scenario_mod.run_scenario(scenario_mod.parse_scenario(data))
