"""uffd back end races that the reliability churn finds only now and then, made deterministic.

The target is this test process (the uffd back end tracks its caller too); a process wrapper
changes the address space at the exact point of a pass where a real target might.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

import softdirty
from softdirty import _libc
from softdirty.dirtyset import Cause
from softdirty.maps import Vma
from softdirty.process import LiveProcess

PAGE = 4096
pytestmark = pytest.mark.uffd_wp_async


class ChangesAfterMapsRead(LiveProcess):
    """Runs ``then`` once, right after the next maps read (between a pass's maps read and its walk)."""

    then: Callable[[], None] | None = None

    def read_maps(self) -> list[Vma]:
        vmas = super().read_maps()
        if self.then is not None:
            act, self.then = self.then, None
            act()
        return vmas


def _two_mappings() -> tuple[int, int, int]:
    """a (4 pages) and b (4 pages) 32 pages apart in a reserved stretch: base, a, b."""
    base = _libc.mmap(64 * PAGE, prot=_libc.PROT_NONE)
    _libc.munmap(base, 64 * PAGE)
    fixed = _libc.MAP_PRIVATE | _libc.MAP_ANONYMOUS | _libc.MAP_FIXED
    a = _libc.mmap(4 * PAGE, flags=fixed, addr=base)
    b = _libc.mmap(4 * PAGE, flags=fixed, addr=base + 32 * PAGE)
    for addr in (a, b):
        _libc.madvise(addr, 4 * PAGE, _libc.MADV_NOHUGEPAGE)
    return base, a, b


@pytest.mark.parametrize("when", ["after the maps read", "just before the walk"])
def test_neighbour_moved_in_mid_pass_does_not_hide_earlier_writes(when: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """mremap of a registered VMA next to another registered one merges them, and the kernel then
    drops the merged VMA's registration (no UFFD_FEATURE_EVENT_REMAP), so a pass's walk skips it.
    A write made to the neighbour before the move must still be in this very harvest, and
    tracking goes on over the merged VMA afterwards."""
    base, a, b = _two_mappings()

    def move() -> None:
        _libc.mremap(b, 4 * PAGE, 4 * PAGE, 3, a + 4 * PAGE)  # MREMAP_MAYMOVE | MREMAP_FIXED

    proc = ChangesAfterMapsRead(os.getpid())
    try:
        with softdirty.track(proc, backend="uffd") as t:
            t.reset()  # a and b registered and armed
            _libc.poke(a + 2 * PAGE, 7)  # the write that must not be hidden
            if when == "after the maps read":
                proc.then = move
            else:
                walk = t.backend._harvest_ours  # type: ignore[attr-defined]

                def move_then_walk(*args: object) -> None:
                    monkeypatch.undo()
                    move()
                    walk(*args)

                monkeypatch.setattr(t.backend, "_harvest_ours", move_then_walk)
            got = t.harvest()
            shown = [(hex(r.start - base), hex(r.end - base), r.flags) for r in got
                     if base <= r.start < base + 64 * PAGE]
            assert a + 2 * PAGE in got, shown
            assert got.flags_at(a + 2 * PAGE) & (Cause.WRITTEN | Cause.PROTECTION_LOST), shown
            # Tracking goes on over the merged VMA: b's moved pages are reported (moved), then
            # only what is written.
            again = t.harvest()
            assert a + 4 * PAGE in again and a + 7 * PAGE in again
            _libc.poke(a + 6 * PAGE, 9)
            _libc.poke(a + 1 * PAGE, 9)
            last = t.harvest()
            pages = {p for p in range(a, a + 8 * PAGE, PAGE) if p in last}
            assert pages == {a + PAGE, a + 6 * PAGE}, [hex(p - a) for p in pages]
    finally:
        proc.close()
        _libc.munmap(base, 64 * PAGE)


@pytest.mark.parametrize("meanwhile", ["write", "mprotect"])
def test_stale_protection_bits_after_registration_dropped_do_not_hide_writes(meanwhile: str) -> None:
    """The kernel drops the registration of a VMA of ours that a moved mapping merged with
    (mremap, no UFFD_FEATURE_EVENT_REMAP) but leaves its PTEs' uffd-wp bits.  A write to such a page
    (the page is reused, the bit kept) or an mprotect to writable while unregistered makes its PTE
    writable with the bit set.  The pass then registers the VMA again and arms it: with PAGEMAP_SCAN's
    fast path, which skips PTEs that have the bit, every later write to those pages went unseen
    (the churn's rare lost write).  Every write after the VMA is tracked again must be harvested."""
    base, a, b = _two_mappings()
    for i in range(4):
        _libc.poke(a + i * PAGE, 1)  # a: present pages (b stays unfaulted, so the moved b merges with a)
    proc = LiveProcess(os.getpid())
    try:
        with softdirty.track(proc, backend="uffd") as t:
            t.reset()  # a and b registered and armed: a's PTEs have the uffd-wp bit
            _libc.mremap(b, 4 * PAGE, 4 * PAGE, 3, a + 4 * PAGE)  # MREMAP_MAYMOVE | MREMAP_FIXED: b next to a
            if meanwhile == "write":
                _libc.poke(a, 2)
            else:
                _libc.mprotect(a, 8 * PAGE, _libc.PROT_READ)
                _libc.mprotect(a, 8 * PAGE, _libc.PROT_READ | _libc.PROT_WRITE)
            got = t.harvest()  # a (+ b) registered again and reported whole
            assert a in got and a + PAGE in got
            quiet = t.harvest()  # nothing written since: nothing of a reported
            assert not any(p in quiet for p in range(a, a + 8 * PAGE, PAGE))
            _libc.poke(a, 3)
            _libc.poke(a + PAGE, 3)
            _libc.poke(a + 5 * PAGE, 3)
            last = t.harvest()
            pages = {(p - a) // PAGE for p in range(a, a + 8 * PAGE, PAGE) if p in last}
            assert pages == {0, 1, 5}, sorted(pages)
    finally:
        proc.close()
        _libc.munmap(base, 64 * PAGE)
