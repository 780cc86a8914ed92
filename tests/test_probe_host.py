"""softdirty.probe() agrees with independent raw checks on whatever kernel runs the tests.

On the development host (6.18 without CONFIG_MEM_SOFT_DIRTY) that means:
soft-dirty no (the reason names bit 55), PAGEMAP_SCAN yes, uffd-wp async yes.
In the VM (tests/real) the same checks run against the real soft-dirty kernels.
"""

from __future__ import annotations

import os

import pytest
import rawkernel as rk

import softdirty
from softdirty.errors import Unsupported


def test_soft_dirty_answer_matches_a_raw_round_trip() -> None:
    caps = softdirty.probe()
    works = rk.raw_soft_dirty_works()
    assert caps.soft_dirty.ok == works, caps.soft_dirty.reason
    if not works:
        assert "55" in caps.soft_dirty.reason, caps.soft_dirty.reason


def test_track_softdirty_backend_follows_the_probe() -> None:
    caps = softdirty.probe()
    if caps.soft_dirty.ok:
        with softdirty.track(os.getpid(), backend="softdirty") as t:
            assert t.backend_name == "softdirty"
    else:
        with pytest.raises(Unsupported) as info:
            softdirty.track(os.getpid(), backend="softdirty")
        assert caps.soft_dirty.reason in str(info.value)


def test_pagemap_scan_answer_matches_the_ioctl() -> None:
    caps = softdirty.probe()
    assert caps.pagemap_scan.ok == rk.raw_pagemap_scan(), caps.pagemap_scan.reason
    assert caps.scan_soft_dirty.ok == rk.raw_pagemap_scan(rk.PAGE_IS_SOFT_DIRTY), caps.scan_soft_dirty.reason


def test_uffd_wp_async_answer_matches_uffdio_api() -> None:
    caps = softdirty.probe()
    assert caps.uffd_wp_async.ok == rk.raw_uffd_wp_async(), caps.uffd_wp_async.reason


def test_probe_is_cached() -> None:
    assert softdirty.probe() is softdirty.probe()


@pytest.mark.softdirty_kernel
def test_probing_leaves_the_callers_soft_dirty_bits_alone() -> None:
    """The soft-dirty round trip clears bits process-wide: it runs in a forked child, so a tracker's
    checkpoint of this very process survives someone calling probe() in it."""
    import threading

    from softdirty import _libc
    from softdirty.pagemap import PAGE_SIZE, PM
    from softdirty.probe import probe

    assert threading.active_count() == 1  # the forked-child path is the one under test
    # Our page between two PROT_NONE pages: probe()'s own scratch mappings cannot merge into its VMA
    # (a merge with a new VMA makes all of it read soft-dirty through VM_SOFTDIRTY, hiding a clear).
    fence = _libc.mmap(3 * PAGE_SIZE)
    _libc.mprotect(fence, PAGE_SIZE, _libc.PROT_NONE)
    _libc.mprotect(fence + 2 * PAGE_SIZE, PAGE_SIZE, _libc.PROT_NONE)
    page = fence + PAGE_SIZE
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("4")
        _libc.poke(page, 1)
        with open("/proc/self/pagemap", "rb") as pm:
            def soft_dirty() -> bool:
                return bool(int.from_bytes(os.pread(pm.fileno(), 8, page // PAGE_SIZE * 8), "little") & PM.SOFT_DIRTY)

            assert soft_dirty()
            probe.cache_clear()
            assert probe().soft_dirty.ok  # it really probed (this kernel has soft-dirty)
            assert soft_dirty(), "probe() cleared the caller's soft-dirty bits"
    finally:
        _libc.munmap(fence, 3 * PAGE_SIZE)
