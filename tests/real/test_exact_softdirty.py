"""Exact soft-dirty harvests on a real kernel: nothing is lost under a hammering writer.

The check: keep a *shadow* copy of the writer's buffer, and after every
harvest refresh the shadow's copy of the pages reported dirty.  If a write
ever fell between a harvest's read and its clear, its page would stay stale
in the shadow forever, and the final comparison (made with the writer
stopped) would fail.  A control test injects exactly such a write into a
non-exact tracker and sees the comparison fail, so the check can fail.

Also here: the causes the tracker adds on the soft-dirty back end (MOVED,
HUGE, NEW_MAPPING) on the real kernel.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import rawkernel as rk
from sdtargets import PAGE, Writer

import softdirty
from softdirty import Cause, vmio
from softdirty.dirtyset import DirtySet

pytestmark = pytest.mark.softdirty_kernel


def refresh(shadow: bytearray, w: Writer, dirty: DirtySet) -> int:
    """Copy the dirty pages of the writer's buffer into the shadow; pages refreshed."""
    n = 0
    for r in dirty:
        s, e = max(r.start, w.addr), min(r.end, w.end)
        if s < e:
            shadow[s - w.addr : e - w.addr] = vmio.read(w.pid, s, e - s)
            n += (e - s) // PAGE
    return n


@pytest.mark.parametrize("method", ["pagemap", "scan"])
def test_exact_mode_loses_nothing_under_a_hammering_writer(method: str) -> None:
    if method == "scan" and not softdirty.probe().scan_soft_dirty.ok:
        pytest.skip(f"PAGEMAP_SCAN cannot harvest soft-dirty here: {softdirty.probe().scan_soft_dirty.reason}")
    with Writer(pages=128, writers=2) as w:
        w.wait_for(lambda: w.stores(0) > 0 and w.stores(1) > 0, "both writers to start")
        with softdirty.track(w.pid, backend="softdirty", exact=True, method=method) as t:
            assert "every thread stopped" in t.why
            t.reset()
            shadow = bytearray(w.memory())
            refreshed = 0
            epochs = []
            for _ in range(8):
                dirty = t.harvest()  # read and clear with the writer stopped
                epochs.append(dirty.epoch)
                refreshed += refresh(shadow, w, dirty)
                assert t.last_freeze is not None and len(t.last_freeze.tids) >= 3  # main + 2 writers
            with t.frozen():
                dirty = t.harvest()
                refreshed += refresh(shadow, w, dirty)
                assert bytes(shadow) == w.memory(), "a write was lost between a harvest and its clear"
        assert epochs == list(range(1, 9))  # harvests chain: each starts the next epoch
        assert refreshed > 0


def test_the_shadow_check_catches_a_write_between_read_and_clear() -> None:
    with Writer(pages=32, writers=0) as w, softdirty.track(w.pid, backend="softdirty") as t:
        t.reset()
        shadow = bytearray(w.memory())
        vmio.write(w.pid, w.addr + 3 * PAGE, b"seen")
        first = t.harvest()  # not exact: read only
        vmio.write(w.pid, w.addr + 7 * PAGE, b"lost")  # lands after the read, before the clear
        t.reset()
        refresh(shadow, w, first)
        second = t.harvest()
        refresh(shadow, w, second)
        assert w.addr + 3 * PAGE in first and w.addr + 7 * PAGE not in second
        assert bytes(shadow) != w.memory()  # the lost write shows: the check above is not vacuous


def test_exact_mode_reports_a_write_after_the_harvest_in_the_next_epoch() -> None:
    with Writer(pages=32, writers=0) as w, softdirty.track(w.pid, backend="softdirty", exact=True) as t:
        t.reset()
        vmio.write(w.pid, w.addr + 3 * PAGE, b"one")
        first = t.harvest()
        vmio.write(w.pid, w.addr + 7 * PAGE, b"two")
        second = t.harvest()
        assert w.addr + 3 * PAGE in first and w.addr + 7 * PAGE not in first
        assert w.addr + 7 * PAGE in second and w.addr + 3 * PAGE not in second
        assert second.epoch == first.epoch + 1


def test_a_failing_consumer_loses_nothing_on_softdirty() -> None:
    with Writer(pages=32, writers=0) as w, softdirty.track(w.pid, backend="softdirty", exact=True) as t:
        t.reset()
        vmio.write(w.pid, w.addr + 5 * PAGE, b"x")
        with pytest.raises(RuntimeError), t.harvest() as dirty:
            assert w.addr + 5 * PAGE in dirty
            raise RuntimeError("consumer failed")
        again = t.harvest()  # the exact harvest had cleared the bit: only the merge reports it
        assert w.addr + 5 * PAGE in again and again.epochs == (1, 2)


def test_exact_mode_cannot_track_ourselves() -> None:
    with pytest.raises(ValueError, match="cannot stop itself"):
        softdirty.track(os.getpid(), backend="softdirty", exact=True)


def test_exact_mode_is_released_if_the_harvest_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    with Writer(pages=16, writers=1) as w, softdirty.track(w.pid, backend="softdirty", exact=True) as t:
        t.reset()

        def broken(**kw: object) -> object:
            raise OSError(5, "injected")

        monkeypatch.setattr(t.backend, "harvest", broken)
        with pytest.raises(OSError, match="injected"):
            t.harvest()
        count = w.stores()
        w.wait_for(lambda: w.stores() > count, "the writer to run after a failed exact harvest")


# -- causes on the real kernel --------------------------------------------------------------


@pytest.fixture
def tracker() -> Iterator[softdirty.Tracker]:
    with softdirty.track(os.getpid(), backend="softdirty") as t:
        yield t


def test_mremap_is_reported_moved(tracker: softdirty.Tracker) -> None:
    from softdirty import _libc

    with rk.Region(8) as r:
        for i in range(8):
            rk.write(r.page(i))
        # A hole between two guard pages to move into (a hole: no VMA was there at the checkpoint).
        outer = rk.mmap(10 * PAGE, rk.PROT_NONE)
        hole = outer + PAGE
        rk.munmap(hole, 8 * PAGE)
        try:
            tracker.reset()
            dest = _libc.mremap(r.base, 8 * PAGE, 8 * PAGE, _libc.MREMAP_MAYMOVE | _libc.MREMAP_FIXED, hole)
            assert dest == hole
            dirty = tracker.harvest()
            assert dirty.pages_in(dest, dest + 8 * PAGE) == 8  # the kernel marks moved pages dirty
            assert all(dirty.flags_at(dest + i * PAGE) & Cause.MOVED for i in range(8))
            assert any("moved" in n for n in dirty.notes)
        finally:
            rk.munmap(outer, 10 * PAGE)


def test_a_new_mapping_is_new_not_moved(tracker: softdirty.Tracker) -> None:
    tracker.reset()
    with rk.Region(4) as r:
        dirty = tracker.harvest()
        flags = dirty.flags_at(r.base)
        assert flags & Cause.NEW_MAPPING and not flags & Cause.MOVED


def test_a_written_thp_is_reported_huge(tracker: softdirty.Tracker) -> None:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read()
    except OSError as exc:
        pytest.skip(f"no THP here: {exc.strerror}")
    if "[never]" in mode:
        pytest.skip("THP is disabled here")
    outer, base = rk.aligned_huge_region()
    try:
        rk.madvise(base, rk.HPAGE, rk.MADV_HUGEPAGE)
        rk.write(base)
        present = sum(1 for e in rk.pagemap_entries(base, 512) if e & rk.PM_PRESENT)
        if present != 512:
            pytest.skip(f"the kernel gave no THP ({present} of 512 pages present after a write)")
        tracker.reset()
        rk.write(base + 100 * PAGE)
        dirty = tracker.harvest()
        assert dirty.pages_in(base, base + rk.HPAGE) == 512
        assert dirty.flags_at(base + 100 * PAGE) & Cause.HUGE
        assert dirty.flags_at(base) & Cause.HUGE and dirty.flags_at(base) & Cause.WRITTEN
    finally:
        rk.munmap(outer, 3 * rk.HPAGE)
