"""hugetlb under the soft-dirty back end: pagemap never reports a hugetlb page
soft-dirty after a clear (spec 1.6), so a write there would be lost unless the
back end reports the whole VMA as untracked.  Runs in the VM (root, and we may
set vm.nr_hugepages there)."""

from __future__ import annotations

import os

import pytest

import softdirty
from softdirty import _libc

pytestmark = pytest.mark.softdirty_kernel

HPAGE = 2 << 20
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


@pytest.fixture
def huge_pool() -> object:
    if os.environ.get("SOFTDIRTY_IN_VM") != "1":
        pytest.skip("changes vm.nr_hugepages: only inside the throw-away VM (tools/vmtest/run-tests)")
    with open(NR_HUGEPAGES) as f:
        before = f.read().strip()
    with open(NR_HUGEPAGES, "w") as f:
        f.write("2")
    with open(NR_HUGEPAGES) as f:
        assert int(f.read()) >= 1, "the VM could not reserve a huge page"
    yield
    with open(NR_HUGEPAGES, "w") as f:
        f.write(before)


def test_written_hugetlb_page_is_reported_untracked_not_clean(huge_pool: object) -> None:
    addr = _libc.mmap(HPAGE, flags=_libc.MAP_PRIVATE | _libc.MAP_ANONYMOUS | _libc.MAP_HUGETLB)
    try:
        _libc.poke(addr)
        with softdirty.track(os.getpid(), backend="softdirty") as tracker:
            tracker.reset()
            _libc.poke(addr + 4096 * 7)
            for method in ["pagemap"] + (["scan"] if softdirty.probe().scan_soft_dirty.ok else []):
                dirty = tracker.harvest(method=method)
                assert addr + 4096 * 7 in dirty, method
                assert dirty.flags_at(addr) == softdirty.Cause.UNTRACKED, method
                assert dirty.pages_in(addr, addr + HPAGE) == HPAGE // 4096
        # The kernel itself: bit 55 stays clear on the written hugetlb page.
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            entry = int.from_bytes(os.pread(fd, 8, (addr + 4096 * 7) // 4096 * 8), "little")
        finally:
            os.close(fd)
        assert entry >> 63 & 1 and not entry >> 55 & 1, hex(entry)
    finally:
        _libc.munmap(addr, HPAGE)
