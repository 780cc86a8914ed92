"""softdirty.dump: pre-copy into an image directory, atomic publication, verify."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sdtargets import PAGE, Writer

from softdirty import dump as dm
from softdirty import vmio
from softdirty.errors import NoSuchProcess

uffd = pytest.mark.uffd_wp_async


# -- the stop rule ----------------------------------------------------------------------


def test_stop_rule_defaults_and_each_reason() -> None:
    rule = dm.StopRule()
    assert (rule.min_pages, rule.max_rounds, rule.max_growth) == (64, 8, 0.10)
    assert rule.stop(1, None, None) is None  # after the full round: always go on
    assert rule.stop(2, 1000, None) is None
    assert "63 pages" in (rule.stop(2, 63, None) or "")
    assert rule.stop(3, 110, 100) is None  # +10 % exactly is still converging
    assert "grew" in (rule.stop(3, 111, 100) or "")
    assert "8 pre-copy rounds" in (rule.stop(8, 5000, 5000) or "")
    assert "1 pre-copy rounds" in (dm.StopRule(max_rounds=1).stop(1, None, None) or "")


@pytest.mark.parametrize("kw", [{"min_pages": -1}, {"max_rounds": 0}, {"max_growth": -0.1}, {"max_rounds": True}])
def test_stop_rule_rejects_bad_values(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dm.StopRule(**kw)  # type: ignore[arg-type]


# -- layering -----------------------------------------------------------------------------


def run(vaddr: int, pages: int, rnd: int) -> dict[str, object]:
    return {"vaddr": vaddr, "nr_pages": pages, "round": rnd}


def test_resolve_takes_the_highest_round_per_page() -> None:
    runs = [run(0, 10, 0), run(2 * PAGE, 2, 1), run(3 * PAGE, 4, 2), run(20 * PAGE, 1, 0)]
    assert dm.resolve(runs) == [(0, 2 * PAGE, 0), (2 * PAGE, 3 * PAGE, 1), (3 * PAGE, 7 * PAGE, 2),
                                (7 * PAGE, 10 * PAGE, 0), (20 * PAGE, 21 * PAGE, 3)]


def test_resolve_a_later_run_under_an_earlier_one() -> None:
    runs = [run(0, 4, 3), run(0, 8, 1)]
    assert dm.resolve(runs) == [(0, 4 * PAGE, 0), (4 * PAGE, 8 * PAGE, 1)]


# -- the image directory ------------------------------------------------------------------


def test_writer_refuses_foreign_files_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(dm.ImageError, match="not part of an image"):
        dm.ImageWriter(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(dm.ImageError, match="symbolic links"):
        dm.ImageWriter(tmp_path / "link")
    with pytest.raises(dm.ImageError, match="parent"):
        dm.ImageWriter(tmp_path / "no" / "such")


def publish_dummy(path: Path, payload: bytes, force: bool = False) -> str:
    """An image of one run of ``payload`` (whole pages) at 0x10000."""
    w = dm.ImageWriter(path, force=force)
    try:
        offset = w.append("pages-0.img", payload)
        run = {"vaddr": 0x10000, "nr_pages": len(payload) // PAGE, "flags": 0, "causes": [], "round": 0,
               "file": "pages-0.img", "offset": offset, "sha256": hashlib.sha256(payload).hexdigest()}
        return w.publish({"format": dm.FORMAT, "version": dm.VERSION, "vmas": [], "runs": [run], "skipped": [],
                          "rounds": [{"round": 0, "kind": "full", "file": "pages-0.img", "bytes": len(payload)}]})
    finally:
        w.close()


def test_publication_modes_and_replacement(tmp_path: Path) -> None:
    d = tmp_path / "img"
    first = publish_dummy(d, b"a" * PAGE)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / first).stat().st_mode) == 0o700
    for f in (d / "COMPLETE", d / first / "index.json", d / first / "pages-0.img"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert json.loads((d / "COMPLETE").read_text())["image"] == first
    with pytest.raises(dm.ImageExists, match="force"):
        publish_dummy(d, b"b" * PAGE)
    second = publish_dummy(d, b"b" * PAGE, force=True)
    assert sorted(os.listdir(d)) == sorted(["COMPLETE", second])  # the old image went, after the switch
    with dm.load_image(d) as img:
        assert img.name == second


def test_an_aborted_image_leaves_the_old_one_alone(tmp_path: Path) -> None:
    d = tmp_path / "img"
    first = publish_dummy(d, b"a" * PAGE)
    before = (d / "COMPLETE").read_bytes()
    w = dm.ImageWriter(d, force=True)
    w.append("pages-0.img", b"new" * 100)
    w.abort()
    w.close()
    assert (d / "COMPLETE").read_bytes() == before and sorted(os.listdir(d)) == sorted(["COMPLETE", first])


def test_load_image_catches_corruption(tmp_path: Path) -> None:
    d = tmp_path / "img"
    name = publish_dummy(d, b"a" * PAGE)
    with (d / name / "pages-0.img").open("r+b") as f:
        f.write(b"X")
    with pytest.raises(dm.ImageError, match="checksum"):
        dm.load_image(d)
    with (d / name / "pages-0.img").open("r+b") as f:
        f.write(b"a")
    dm.load_image(d).close()  # repaired
    with (d / name / "pages-0.img").open("ab") as f:
        f.write(b"tail")
    with pytest.raises(dm.ImageError, match="bytes"):
        dm.load_image(d)
    index = d / name / "index.json"
    index.write_text(index.read_text().replace('"nr_pages": 1', '"nr_pages": 2'))
    with pytest.raises(dm.ImageError, match="checksum in COMPLETE"):
        dm.load_image(d)
    (d / "COMPLETE").unlink()
    with pytest.raises(dm.ImageError, match="no complete image"):
        dm.load_image(d)


# -- dump and verify a running writer (uffd on the host) ------------------------------------


@uffd
def test_dump_then_verify_a_running_writer(tmp_path: Path) -> None:
    with Writer(pages=512, writers=2, pause_every=256) as w:
        w.wait_for(lambda: w.stores(0) > 0, "the writers to start")
        report = dm.dump(w.pid, tmp_path / "img", leave="frozen")
        try:
            assert report.rounds[0].kind == "full" and report.rounds[-1].kind == "final"
            assert all(r.kind == "dirty" for r in report.rounds[1:-1])
            assert report.stop_reason
            assert report.total_bytes == sum(r.bytes_copied for r in report.rounds)
            assert report.stop_and_copy_bytes and report.stop_and_copy_bytes >= w.pages * PAGE
            assert set(w.task_states().values()) == {"t"}  # left frozen, as asked
            ok = dm.verify(tmp_path / "img", w.pid, freeze=report.freeze)
            assert ok.ok, (ok.mismatches[:5], ok.missing[:5], ok.unreadable[:5], ok.layout[:5])
            assert ok.compared_pages >= w.pages
            # Change one page behind the image's back: verify must name exactly it.
            target = w.addr + 77 * PAGE + 100
            vmio.write(w.pid, target, b"\xee\xff")
            bad = dm.verify(tmp_path / "img", w.pid, freeze=report.freeze)
            assert not bad.ok and bad.mismatches == [(w.addr + 77 * PAGE, w.addr + 78 * PAGE)]
        finally:
            report.release()
        count = w.stores(0)
        w.wait_for(lambda: w.stores(0) > count, "the writer to run after release")
        index = json.loads((tmp_path / "img" / report.image / "index.json").read_text())
        assert {r["round"] for r in index["rounds"]} == set(range(len(report.rounds)))
        assert all(set(r) >= {"vaddr", "nr_pages", "flags", "round"} for r in index["runs"])


@uffd
def test_dump_records_unreadable_memory_as_skipped(tmp_path: Path) -> None:
    with Writer(pages=8, writers=0) as w:
        report = dm.dump(w.pid, tmp_path / "img", compare=False, leave="frozen")
        try:
            reasons = " ".join(s["reason"] for s in report.skipped)
            assert "[vvar]" in reasons or "unreadable" in reasons  # every process has [vvar]
            ok = dm.verify(tmp_path / "img", w.pid, freeze=report.freeze)
            assert ok.ok and ok.skipped_pages > 0 and not ok.unreadable
        finally:
            report.release()


def test_dump_refuses_ourselves_and_dead_pids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="itself"):
        dm.dump(os.getpid(), tmp_path / "a")
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    with pytest.raises(NoSuchProcess):
        dm.dump(p.pid, tmp_path / "b")
    assert not (tmp_path / "b").exists()


@uffd
def test_an_exception_mid_dump_leaves_no_image_and_keeps_the_old_one(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "img"
    with Writer(pages=64, writers=1, pause_every=16) as w:
        dm.dump(w.pid, d, compare=False)
        old = (d / "COMPLETE").read_bytes()
        old_image = json.loads(old)["image"]
        old_index = (d / old_image / "index.json").read_bytes()
        real = dm.copy_spans
        calls = [0]

        def failing(*a: object, **kw: object) -> object:
            calls[0] += 1
            if calls[0] == 2:
                raise OSError(28, "No space left on device (injected)")
            return real(*a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(dm, "copy_spans", failing)
        with pytest.raises(OSError, match="injected"):
            dm.dump(w.pid, d, force=True, compare=False)
        assert calls[0] == 2
        assert (d / "COMPLETE").read_bytes() == old
        assert sorted(os.listdir(d)) == sorted(["COMPLETE", old_image])  # the temporary directory is gone
        assert (d / old_image / "index.json").read_bytes() == old_index
        with dm.load_image(d) as img:
            assert img.name == old_image
        assert w.proc.poll() is None and "t" not in set(w.task_states().values())
        # A fresh directory gets nothing that looks complete either.
        calls[0] = 0
        with pytest.raises(OSError, match="injected"):
            dm.dump(w.pid, tmp_path / "fresh", compare=False)
        assert os.listdir(tmp_path / "fresh") == []


KILLED_DUMP = textwrap.dedent("""
    import os, sys, time
    from softdirty import dump as dm
    pid, directory, when = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    real = dm.copy_spans
    def copy_spans(p, spans, sink, progress=None, **kw):
        if when == "final" and progress is None and sink.__name__ == "keep":
            print("in-final", flush=True)   # the target is frozen right now
            time.sleep(3600)
        return real(p, spans, sink, progress, **kw)
    dm.copy_spans = copy_spans
    def progress(number, kind, done, total):
        if when == "round1" and number == 1:
            print("in-round1", flush=True)
            time.sleep(3600)
    dm.dump(pid, directory, force=True, compare=False, progress=progress)
    print("done", flush=True)
""")


@uffd
@pytest.mark.parametrize("when", ["round1", "final"])
def test_a_killed_dump_leaves_no_complete_image_and_releases_the_target(tmp_path: Path, when: str) -> None:
    d = tmp_path / "img"
    with Writer(pages=64, writers=1, pause_every=16) as w:
        old_image = dm.dump(w.pid, d, compare=False).image
        old = (d / "COMPLETE").read_bytes()
        child = subprocess.Popen([sys.executable, "-c", KILLED_DUMP, str(w.pid), str(d), when],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == f"in-{when}"
            if when == "final":
                assert set(w.task_states().values()) == {"t"}
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert (d / "COMPLETE").read_bytes() == old
        leftovers = [n for n in os.listdir(d) if n.startswith(".tmp-")]
        assert len(leftovers) == 1  # SIGKILL leaves its temporary directory ...
        count = w.stores(0)
        w.wait_for(lambda: w.stores(0) > count, "the target to run after its dumper died")
        with dm.load_image(d) as img:
            assert img.name == old_image
        report = dm.dump(w.pid, d, force=True, compare=False)  # ... which the next dump clears away
        assert sorted(os.listdir(d)) == sorted(["COMPLETE", report.image])


# -- planning a round ---------------------------------------------------------------------------


def test_merge_spans_reads_overlaps_once() -> None:
    spans = [(0, 4 * PAGE, 1), (2 * PAGE, 6 * PAGE, 2), (8 * PAGE, 9 * PAGE, 1)]
    assert dm.merge_spans(spans) == [(0, 2 * PAGE, 1), (2 * PAGE, 4 * PAGE, 3), (4 * PAGE, 6 * PAGE, 2),
                                     (8 * PAGE, 9 * PAGE, 1)]


def test_new_ranges_are_copied_whole_and_anonymous_ones_only_where_pages_exist() -> None:
    from softdirty import _libc
    from softdirty.maps import Vma
    from softdirty.process import LiveProcess

    base = _libc.mmap(8 * PAGE)
    try:
        _libc.poke(base + 2 * PAGE)
        _libc.poke(base + 3 * PAGE)
        anon = Vma(base, base + 8 * PAGE, "rw-p")
        lib_old = Vma(0x10000, 0x14000, "r--p", 0, "08:01", 7, "/lib/x.so")
        lib_new = Vma(0x20000, 0x24000, "r--p", 0, "08:01", 7, "/lib/x.so")  # the same file range, moved
        with LiveProcess(os.getpid()) as me:
            assert dm.new_ranges(me, [anon, lib_old], [anon, lib_old]) == []
            got = dm.new_ranges(me, [lib_old], [anon, lib_new])
        new = int(dm.Cause.NEW_MAPPING)
        assert (lib_new.start, lib_new.end, new) in got
        assert (base + 2 * PAGE, base + 4 * PAGE, new) in got and len(got) == 2  # untouched pages read zero
        grown = Vma(base, base + 8 * PAGE, "rw-p")
        with LiveProcess(os.getpid()) as me:
            assert dm.new_ranges(me, [Vma(base, base + 3 * PAGE, "rw-p")], [grown]) == [
                (base + 3 * PAGE, base + 4 * PAGE, new)]  # only the grown part, where a page exists
            assert dm.new_ranges(me, [Vma(base, base + 8 * PAGE, "---p")], [grown]) == [
                (base + 2 * PAGE, base + 4 * PAGE, new)]  # mprotect'ed from a reservation: new
    finally:
        _libc.munmap(base, 8 * PAGE)


def test_arena_hands_out_disjoint_prefaulted_pieces_and_fresh_memory_past_them() -> None:
    arena = dm.Arena(3 * dm.PAGE_SIZE)
    pieces = [arena.take(dm.PAGE_SIZE) for _ in range(5)]  # 3 from the arena, 2 fresh
    for i, p in enumerate(pieces):
        p[:] = bytes([i + 1]) * dm.PAGE_SIZE
    assert [bytes(p[:1])[0] for p in pieces] == [1, 2, 3, 4, 5]  # nobody overwrote another
    assert all(len(p) == dm.PAGE_SIZE for p in pieces)
    assert len(dm.Arena(0).take(10)) == 10
