"""The seed's own test and the basic soft-dirty cycle, on a real soft-dirty kernel.

Every step checks the library (harvest of this very process) against bit 55
read straight from /proc/self/pagemap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import rawkernel as rk

import softdirty
from softdirty import Cause

pytestmark = pytest.mark.softdirty_kernel


@pytest.fixture
def tracker() -> Iterator[softdirty.Tracker]:
    with softdirty.track(os.getpid(), backend="softdirty") as t:
        yield t


def both(t: softdirty.Tracker, region: rk.Region) -> tuple[set[int], set[int]]:
    """(pages the library reports, pages whose bit 55 the kernel sets) in the region."""
    ds = t.harvest()
    return rk.dirty_pages(ds, region.base, region.pages), rk.soft_dirty_pages(region.base, region.pages)


def test_seed_read_write_clear(tracker: softdirty.Tracker) -> None:
    with rk.Region(3) as r:
        tracker.reset()
        rk.read(r.page(0))
        rk.write(r.page(2))
        assert both(tracker, r) == ({2}, {2})

        tracker.reset()
        assert both(tracker, r) == (set(), set())

        rk.write(r.page(0))
        rk.write(r.page(1))
        rk.read(r.page(2))
        assert both(tracker, r) == ({0, 1}, {0, 1})


def test_written_page_carries_written_cause(tracker: softdirty.Tracker) -> None:
    with rk.Region(2) as r:
        tracker.reset()
        rk.write(r.page(1))
        ds = tracker.harvest()
        assert rk.flags_at(ds, r.page(1)) & Cause.WRITTEN
        assert r.page(0) not in ds


def test_new_mapping_after_reset_reads_dirty_as_a_whole(tracker: softdirty.Tracker) -> None:
    """VM_SOFTDIRTY: a VMA made after the checkpoint reads dirty, touched or not."""
    tracker.reset()
    with rk.Region(4) as r:
        rk.write(r.page(1))
        library, kernel = both(tracker, r)
        assert kernel == {0, 1, 2, 3}
        assert library == kernel
        assert rk.flags_at(tracker.harvest(), r.page(3)) & Cause.NEW_MAPPING
        tracker.reset()
        assert both(tracker, r) == (set(), set())


def test_harvest_does_not_reset(tracker: softdirty.Tracker) -> None:
    with rk.Region(2) as r:
        tracker.reset()
        rk.write(r.page(0))
        first = rk.dirty_pages(tracker.harvest(), r.base, 2)
        second = rk.dirty_pages(tracker.harvest(), r.base, 2)
        assert first == second == {0}
