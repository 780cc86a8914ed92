"""Both harvest paths of the soft-dirty back end give the same answer.

``harvest(method="pagemap")`` (windowed pagemap reads, C scanner) and
``harvest(method="scan")`` (PAGEMAP_SCAN with PAGE_IS_SOFT_DIRTY, 6.8+) are
compared over a whole frozen child process, and both against bit 55 of the
child's pagemap.  Where PAGEMAP_SCAN is missing (6.1), the scan method must
refuse with Unsupported naming it.

A frozen process's soft-dirty bits can still change: khugepaged (THP
"always", Debian's default) collapses 512 PTEs into a huge page and the new
PMD is soft-dirty, so a 2 MiB range turns dirty with no write at all (seen
on 6.12 between two harvests).  The comparison therefore brackets the scan
harvest between two pagemap harvests and retries if those two differ.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import rawkernel as rk
from hypothesis import given
from hypothesis import strategies as st

import softdirty
from softdirty.errors import Unsupported

pytestmark = pytest.mark.softdirty_kernel

PAGES = 24
IN_VM = os.environ.get("SOFTDIRTY_IN_VM") == "1"


@pytest.fixture(scope="module")
def child() -> Iterator[rk.Child]:
    with rk.Child() as c:
        yield c


@pytest.fixture(scope="module")
def region(child: rk.Child) -> int:
    """A guarded region of PAGES pages in the child (the Region object stays alive there)."""
    base: int = child.run(f"region = rk.Region({PAGES}); _ = region.base")
    return base


@pytest.fixture(scope="module")
def huge(child: rk.Child) -> int:
    """A 2 MiB-aligned MADV_HUGEPAGE region in the child, faulted in (a THP where THP is on)."""
    addr: int = child.run("outer, _ = rk.aligned_huge_region(); "
                          "rk.madvise(_, rk.HPAGE, rk.MADV_HUGEPAGE); rk.write(_)")
    present = sum(1 for e in rk.pagemap_entries(addr, rk.HPAGE // rk.PAGE, child.pid) if e & rk.PM_PRESENT)
    if present != rk.HPAGE // rk.PAGE:
        # without a THP khugepaged may collapse it at any time, dirtying all 512 pages
        msg = f"no THP in the child ({present} pages present after a 1-byte write)"
        if IN_VM:
            pytest.fail(msg + "; the VM's kernels default to THP 'always'")
        pytest.skip(msg)
    return addr


def scan_works() -> bool:
    return softdirty.probe().scan_soft_dirty.ok


def as_pairs(ds: softdirty.DirtySet) -> list[tuple[int, int, int]]:
    return [(r.start, r.end, int(r.flags)) for r in ds.ranges]


def stable_pair(t: softdirty.Tracker) -> tuple[softdirty.DirtySet, softdirty.DirtySet]:
    """(pagemap harvest, scan harvest) taken while the frozen child's bits did not change."""
    seen = []
    for _ in range(4):
        before = t.harvest(method="pagemap")
        by_scan = t.harvest(method="scan")
        after = t.harvest(method="pagemap")
        if as_pairs(before) == as_pairs(after):
            return before, by_scan
        seen.append(sorted(set(as_pairs(after)) - set(as_pairs(before))))
    pytest.fail(f"the frozen child's soft-dirty bits kept changing between harvests: new ranges {seen}")


def test_scan_refused_without_pagemap_scan(child: rk.Child) -> None:
    if scan_works():
        pytest.skip("this kernel has PAGEMAP_SCAN with PAGE_IS_SOFT_DIRTY (the 6.1 VM checks the refusal)")
    with softdirty.track(child.pid, backend="softdirty") as t:
        t.reset()
        with pytest.raises(Unsupported) as info:
            t.harvest(method="scan")
        assert "PAGEMAP_SCAN" in str(info.value)
        assert "PAGEMAP_SCAN" in info.value.feature
        assert t.harvest(method="pagemap") is not None  # the other path still works


@given(written=st.sets(st.integers(0, PAGES - 1)), read=st.sets(st.integers(0, PAGES - 1)),
       fresh=st.booleans(), huge_write=st.none() | st.integers(0, rk.HPAGE // rk.PAGE - 1))
def test_methods_agree_with_each_other_and_the_kernel(child: rk.Child, region: int, huge: int, written: set[int],
                                                      read: set[int], fresh: bool, huge_write: int | None) -> None:
    n_huge = rk.HPAGE // rk.PAGE
    with softdirty.track(child.pid, backend="softdirty") as t:
        t.reset()
        code = "; ".join([f"rk.read({region + i * rk.PAGE})" for i in sorted(read)]
                         + [f"rk.write({region + i * rk.PAGE})" for i in sorted(written)]
                         + ([f"rk.write({huge + huge_write * rk.PAGE})"] if huge_write is not None else [])
                         # a mapping made after the checkpoint: VM_SOFTDIRTY
                         + (["extra = rk.Region(3); _ = extra.base"] if fresh else ["_ = None"]))
        extra = child.run(code)
        try:
            if scan_works():
                by_pagemap, by_scan = stable_pair(t)
                assert as_pairs(by_scan) == as_pairs(by_pagemap)
            else:
                by_pagemap = t.harvest(method="pagemap")
            assert rk.soft_dirty_pages(region, PAGES, child.pid) == written
            assert rk.dirty_pages(by_pagemap, region, PAGES) == written
            kernel_huge = rk.soft_dirty_pages(huge, n_huge, child.pid)
            assert rk.dirty_pages(by_pagemap, huge, n_huge) == kernel_huge
            # a THP is dirty as a whole
            assert kernel_huge == (set() if huge_write is None else set(range(n_huge)))
            if extra is not None:
                assert rk.dirty_pages(by_pagemap, extra, 3) == rk.soft_dirty_pages(extra, 3, child.pid) == {0, 1, 2}
        finally:
            if extra is not None:
                child.run("extra.close(); _ = None")
