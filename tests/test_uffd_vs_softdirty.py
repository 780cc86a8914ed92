"""The uffd and soft-dirty back ends, side by side on the same process and the same random writes.

Both track one C target at once (soft-dirty by clear_refs, uffd by an
injected userfaultfd).  After every epoch: each page the target wrote (and
did not zap or move since) is reported by both, and a page reported by only
one of them carries a stated cause (NEW_MAPPING, MOVED, PROTECTION_LOST,
HUGE, UNTRACKED), never a bare WRITTEN.  Needs a kernel with both:
soft-dirty and uffd-wp async (Debian 6.12 in the VM: tools/vmtest/run-tests).

One known exception, counted apart: registering a new VMA can merge it with
a registered neighbour, and the merged VMA carries VM_SOFTDIRTY (smaps
``sd``), so soft-dirty reports all of the neighbour too, as it does for any
new VMA.  When every page of such a VMA is present or holds a uffd-wp marker
(which pagemap shows as a swap entry), the soft-dirty back end cannot see
that the VMA-wide flag is the reason and labels the pages WRITTEN instead of
NEW_MAPPING.  The test accepts a soft-dirty-only page exactly when its VMA
has ``sd`` in smaps when harvested, and counts those.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from helpers.uffd_programs import PAGE, Target, build
from hypothesis import given, settings
from hypothesis import strategies as st

import softdirty
from softdirty.dirtyset import Cause

pytestmark = [pytest.mark.softdirty_kernel, pytest.mark.uffd_wp_async]


@pytest.fixture(scope="module")
def exe() -> Iterator[str]:
    path = build()
    yield path
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


WRITE = st.tuples(st.just("write"), st.integers(0, 1 << 16))
OPS = st.one_of(
    WRITE, WRITE, WRITE,  # writes are what we compare: make them common
    st.tuples(st.just("read"), st.integers(0, 1 << 16)),
    st.tuples(st.just("dontneed"), st.integers(0, 1 << 16)),
    st.tuples(st.just("protect"), st.integers(0, 1 << 16)),  # read-only, then writable again
    st.tuples(st.just("remap"), st.integers(0, 1 << 16)),  # move one page elsewhere
    st.tuples(st.just("unmap"), st.integers(0, 1 << 16)),
    st.tuples(st.just("map"), st.integers(1, 6)),
)
EPOCHS = st.lists(st.lists(OPS, min_size=4, max_size=16), min_size=2, max_size=4)


def vm_softdirty(pid: int, pages: list[int]) -> set[int]:
    """The pages that lie in a VMA with VM_SOFTDIRTY (smaps VmFlags ``sd``)."""
    soft_vmas = []
    with open(f"/proc/{pid}/smaps") as f:
        span = (0, 0)
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and ":" not in head:
                lo, hi = head.split("-")
                span = (int(lo, 16), int(hi, 16))
            elif head == "VmFlags:" and "sd" in line.split()[1:]:
                soft_vmas.append(span)
    return {page for page in pages if any(lo <= page < hi for lo, hi in soft_vmas)}


def compare(epochs: list[list[tuple[str, int]]], exe: str) -> tuple[int, int, int, int]:
    """Run the epochs; returns (written pages checked, pages both reported, one-sided with a cause,
    soft-dirty-only inside a VM_SOFTDIRTY VMA)."""
    checked = both = one_sided = vsd = 0
    with Target(exe, "ctl") as t:
        base = t.map(24)
        t.write(base, 24)  # present pages before the checkpoint
        mapped = [base + i * PAGE for i in range(24)]
        with softdirty.track(t.pid, backend="softdirty") as sd, \
                softdirty.track(t.pid, backend="uffd", nohugepage=True) as uf:
            uf.reset()
            sd.reset()
            for ops in epochs:
                written: set[int] = set()
                for op, arg in ops:
                    if op == "map":
                        addr = t.map(arg)
                        mapped += [addr + i * PAGE for i in range(arg)]
                        continue
                    if not mapped:
                        continue
                    page = mapped[arg % len(mapped)]
                    if op == "write":
                        t.write(page)
                        written.add(page)
                    elif op == "read":
                        t.cmd(f"touch {page:x} 1")
                    elif op == "dontneed":
                        t.cmd(f"dontneed {page:x} 1")
                        written.discard(page)  # zapped: soft-dirty forgets it, uffd says PROTECTION_LOST
                    elif op == "protect":
                        t.cmd(f"protect {page:x} 1 1")
                        t.cmd(f"protect {page:x} 1 3")
                    elif op == "remap":
                        dest = t.map(1)
                        t.cmd(f"remap {page:x} 1 {dest:x}")
                        mapped.remove(page)
                        mapped.append(dest)  # the moved page replaced the reserved one
                        written.discard(page)
                    elif op == "unmap":
                        t.cmd(f"unmap {page:x} 1")
                        mapped.remove(page)
                        written.discard(page)
                ufds = uf.harvest()  # reports and re-arms
                explained = vm_softdirty(t.pid, mapped)
                sdds = sd.harvest()
                sd.reset()
                for page in mapped:
                    u, s = ufds.flags_at(page), sdds.flags_at(page)
                    if page in written:
                        checked += 1
                        assert u and s, f"written page {page:#x}: uffd {u!r}, soft-dirty {s!r}"
                    if u and s:
                        both += 1
                    elif u or s:
                        one_sided += 1
                        side, flags = ("uffd", u) if u else ("soft-dirty", s)
                        if side == "soft-dirty" and page in explained:
                            vsd += 1  # the merge case described at the top
                            continue
                        assert flags != Cause.WRITTEN, f"only {side} reports {page:#x}, as plainly written"
                        assert flags & ~Cause.WRITTEN, f"only {side} reports {page:#x} without a cause"
    return checked, both, one_sided, vsd


@pytest.fixture(scope="module")
def totals() -> Iterator[list[int]]:
    counts = [0, 0, 0, 0]
    yield counts
    print(f"\nuffd vs soft-dirty: written pages checked {counts[0]}, reported by both {counts[1]}, "
          f"one-sided with a stated cause {counts[2]}, soft-dirty only inside a VM_SOFTDIRTY VMA "
          f"{counts[3]}")


@settings(max_examples=30)  # ~3 s each under TCG; the VM profile's default of 8 covers too little
@given(EPOCHS)
def test_uffd_and_softdirty_agree_on_random_writes(exe: str, totals: list[int],
                                                  epochs: list[list[tuple[str, int]]]) -> None:
    for i, n in enumerate(compare(epochs, exe)):
        totals[i] += n
