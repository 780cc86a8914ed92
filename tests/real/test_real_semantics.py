"""Kernel scenarios of spec §7 (items 22-25, 27-29) on a real soft-dirty kernel.

Each checks both the kernel (bit 55 read directly) and the library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
import rawkernel as rk

import softdirty
from softdirty import Cause

pytestmark = pytest.mark.softdirty_kernel

IN_VM = os.environ.get("SOFTDIRTY_IN_VM") == "1"


@pytest.fixture
def tracker() -> Iterator[softdirty.Tracker]:
    with softdirty.track(os.getpid(), backend="softdirty") as t:
        yield t


def lib_and_kernel(t: softdirty.Tracker, start: int, pages: int) -> tuple[set[int], set[int]]:
    return rk.dirty_pages(t.harvest(), start, pages), rk.soft_dirty_pages(start, pages)


# ---- 22: write / clear / write, many times (selftest test_simple) --------------------

def test_22_simple_repeated(tracker: softdirty.Tracker) -> None:
    rounds = 200  # the selftest does 10000; TCG is ~18x slower
    with rk.Region(1) as r:
        for i in range(rounds):
            tracker.reset()
            assert not rk.entry(r.base) & rk.PM_SOFT_DIRTY, f"round {i}: bit 55 survived clear_refs"
            rk.write(r.base, value=i & 0xFF)
            assert rk.entry(r.base) & rk.PM_SOFT_DIRTY, f"round {i}: write did not set bit 55"
            if i % 20 == 0:  # the library too, on a tenth of the rounds (a harvest walks the whole process)
                ds = tracker.harvest()
                assert r.base in ds, f"round {i}"
                tracker.reset()
                assert r.base not in tracker.harvest(), f"round {i}"
                rk.write(r.base)


# ---- 23: VMA reuse (selftest test_vma_reuse) -----------------------------------------

def test_23_vma_reuse(tracker: softdirty.Tracker) -> None:
    length = 4 * rk.PAGE
    # A PROT_NONE reservation around the slot keeps the new VMA from merging.
    outer = rk.mmap(length + 2 * rk.PAGE, rk.PROT_NONE)
    addr = outer + rk.PAGE
    try:
        rk.mmap(length, flags=rk.MAP_PRIVATE | rk.MAP_ANONYMOUS | rk.MAP_FIXED, addr=addr)
        rk.write(addr, length)
        tracker.reset()
        assert lib_and_kernel(tracker, addr, 4) == (set(), set())
        rk.munmap(addr, length)
        got = rk.mmap(length, flags=rk.MAP_PRIVATE | rk.MAP_ANONYMOUS | rk.MAP_FIXED_NOREPLACE, addr=addr)
        assert got == addr
        # untouched, yet dirty: the VMA is new since the checkpoint
        ds = tracker.harvest()
        assert rk.dirty_pages(ds, addr, 4) == rk.soft_dirty_pages(addr, 4) == {0, 1, 2, 3}
        assert rk.flags_at(ds, addr) & Cause.NEW_MAPPING
    finally:
        rk.munmap(outer, length + 2 * rk.PAGE)


# ---- 24: transparent huge page (selftest test_hugepage) ------------------------------

THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


@pytest.fixture
def thp() -> None:
    try:
        with open(THP_ENABLED) as f:
            mode = f.read()
    except OSError as exc:
        pytest.skip(f"no THP here ({THP_ENABLED}: {exc.strerror})")
    if "[never]" in mode:
        if not IN_VM:
            pytest.skip(f"THP is off ({mode.strip()}); the VM turns it on (tools/vmtest/run-tests)")
        with open(THP_ENABLED, "w") as f:  # root in a throw-away guest
            f.write("madvise")


@pytest.mark.usefixtures("thp")
def test_24_huge_page(tracker: softdirty.Tracker) -> None:
    outer, huge = rk.aligned_huge_region()
    n = rk.HPAGE // rk.PAGE
    try:
        rk.madvise(huge, rk.HPAGE, rk.MADV_HUGEPAGE)
        rk.write(huge)
        present = [e & rk.PM_PRESENT != 0 for e in rk.pagemap_entries(huge, n)]
        assert all(present), f"no THP: a 1-byte write made {sum(present)} of {n} pages present"
        tracker.reset()
        assert lib_and_kernel(tracker, huge, n) == (set(), set())
        rk.write(huge + 100 * rk.PAGE)
        library, kernel = lib_and_kernel(tracker, huge, n)
        assert kernel == set(range(n)), "one byte written in a THP marks all 512 entries"
        assert library == kernel
    finally:
        rk.munmap(outer, 3 * rk.HPAGE)


# ---- 30 and collapse: huge-page paths that dirty 512 pages ---------------------------

@pytest.mark.usefixtures("thp")
def test_30_thp_split_after_clear(tracker: softdirty.Tracker) -> None:
    """After "4", split a THP whose PMD is hardware-dirty, without writing.

    Observed: 6.12 marks all 512 PTEs soft-dirty (the split applies
    pte_mkdirty, which sets soft-dirty on x86); 6.1 marks none (it carries
    the dirty bit to the page only: the partial revert of "carry over dirty
    bit when thp splits on pmd").  The library must agree with the kernel
    either way.
    """
    outer, huge = rk.aligned_huge_region()
    n = rk.HPAGE // rk.PAGE
    try:
        rk.madvise(huge, rk.HPAGE, rk.MADV_HUGEPAGE)
        rk.write(huge)
        assert all(e & rk.PM_PRESENT for e in rk.pagemap_entries(huge, n)), "no THP"
        tracker.reset()
        assert lib_and_kernel(tracker, huge, n) == (set(), set())
        rk.mprotect(huge + 7 * rk.PAGE, rk.PAGE, rk.PROT_READ)  # splits the PMD, no write
        library, kernel = lib_and_kernel(tracker, huge, n)
        assert library == kernel
        assert kernel in (set(), set(range(n)))
        release = os.uname().release
        if release.startswith("6.1.") and release.endswith("-amd64"):
            assert kernel == set()
        elif release.startswith("6.12.") and release.endswith("-amd64"):
            assert kernel == set(range(n))
        rk.write(huge + 3 * rk.PAGE)
        assert 3 in lib_and_kernel(tracker, huge, n)[0]
    finally:
        rk.munmap(outer, 3 * rk.HPAGE)


MADV_NOHUGEPAGE, MADV_COLLAPSE = 15, 25


@pytest.mark.usefixtures("thp")
def test_collapse_after_one_write_dirties_the_whole_huge_page(tracker: softdirty.Tracker) -> None:
    """MADV_COLLAPSE (what khugepaged does in the background) makes a soft-dirty PMD.

    After "4" every PTE is write-protected and collapse refuses (EINVAL:
    it wants a writable PTE); one write makes it possible, and then all 512
    pages read dirty: 511 of them never written.
    """
    outer, huge = rk.aligned_huge_region()
    n = rk.HPAGE // rk.PAGE
    try:
        rk.madvise(huge, rk.HPAGE, MADV_NOHUGEPAGE)
        for i in range(0, n, 8):
            rk.write(huge + i * rk.PAGE)  # small pages
        rk.madvise(huge, rk.HPAGE, rk.MADV_HUGEPAGE)
        tracker.reset()
        with pytest.raises(OSError):
            rk.madvise(huge, rk.HPAGE, MADV_COLLAPSE)
        assert lib_and_kernel(tracker, huge, n) == (set(), set())
        rk.write(huge + 5 * rk.PAGE)
        library, kernel = lib_and_kernel(tracker, huge, n)
        assert library == kernel
        if not all(e & rk.PM_PRESENT for e in rk.pagemap_entries(huge, n)):  # khugepaged may be quicker
            assert kernel == {5}
        rk.madvise(huge, rk.HPAGE, MADV_COLLAPSE)
        entries = rk.pagemap_entries(huge, n)
        assert all(e & rk.PM_PRESENT for e in entries), "not collapsed"
        library, kernel = lib_and_kernel(tracker, huge, n)
        assert kernel == set(range(n)), "the collapsed PMD is soft-dirty as a whole"
        assert library == kernel
    finally:
        rk.munmap(outer, 3 * rk.HPAGE)


# ---- 25: mprotect (selftest test_mprotect), anon and shared file -----------------------

@pytest.fixture(params=["anon", "shared_file"])
def mapping(request: pytest.FixtureRequest) -> Iterator[rk.Region]:
    if request.param == "anon":
        with rk.Region(2) as r:
            yield r
        return
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryFile(dir=shm) as f:
        os.ftruncate(f.fileno(), 2 * rk.PAGE)
        with rk.Region(2, flags=rk.MAP_SHARED, fd=f.fileno()) as r:
            yield r


def test_25_mprotect(tracker: softdirty.Tracker, mapping: rk.Region) -> None:
    r = mapping
    rk.write(r.base)
    assert lib_and_kernel(tracker, r.base, 1) == ({0}, {0})
    tracker.reset()
    assert lib_and_kernel(tracker, r.base, 1) == (set(), set())
    rk.mprotect(r.base, r.length, rk.PROT_READ)
    assert lib_and_kernel(tracker, r.base, 1) == (set(), set())
    rk.mprotect(r.base, r.length, rk.RW)
    assert lib_and_kernel(tracker, r.base, 1) == (set(), set())
    rk.write(r.base)
    assert lib_and_kernel(tracker, r.base, 1) == ({0}, {0})


# ---- 27: MADV_POPULATE_READ / _WRITE ---------------------------------------------------

def test_27_populate(tracker: softdirty.Tracker) -> None:
    with rk.Region(4) as r:
        tracker.reset()
        rk.madvise(r.base, r.length, rk.MADV_POPULATE_READ)
        assert all(e & rk.PM_PRESENT for e in rk.pagemap_entries(r.base, 4))
        assert lib_and_kernel(tracker, r.base, 4) == (set(), set())
        rk.madvise(r.base, 2 * rk.PAGE, rk.MADV_POPULATE_WRITE)
        assert lib_and_kernel(tracker, r.base, 4) == ({0, 1}, {0, 1})


# ---- 28: swap round trip -------------------------------------------------------------

def _active_swap() -> list[str]:
    with open("/proc/swaps") as f:
        return f.read().splitlines()[1:]


def _tool(name: str) -> str:
    # root's tools live in sbin, which a CI PATH may lack
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


def _sh(*cmd: str) -> None:
    subprocess.run([_tool(cmd[0]), *cmd[1:]], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   text=True)


def _zram_swap() -> None:
    _sh("modprobe", "zram", "num_devices=1")
    with open("/sys/block/zram0/disksize", "w") as f:
        f.write(str(64 << 20))
    _sh("mkswap", "/dev/zram0")
    _sh("swapon", "/dev/zram0")


def _loop_swap() -> None:
    # a swap file cannot live on tmpfs/overlayfs, but a loop device over one can
    path = "/dev/shm/softdirty-swap"
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    _sh("modprobe", "loop")
    dev = subprocess.run([_tool("losetup"), "--find", "--show", path], check=True, capture_output=True,
                         text=True).stdout.strip()
    _sh("mkswap", dev)
    _sh("swapon", dev)


@pytest.fixture(scope="module")
def swap() -> None:
    if _active_swap():
        return
    if not IN_VM:
        pytest.skip("no swap here; the VM sets up zram swap (tools/vmtest/run-tests)")
    errors = []
    for how in (_zram_swap, _loop_swap):
        try:
            how()
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            errors.append(f"{how.__name__}: {exc} {detail.strip()}")
        if _active_swap():
            return
    pytest.fail("could not set up swap in the VM: " + "; ".join(errors))


def _page_out(addr: int) -> int:
    for _ in range(10):  # reclaim may pass a page over; it is ours alone, so it goes soon
        rk.madvise(addr, rk.PAGE, rk.MADV_PAGEOUT)
        e = rk.entry(addr)
        if e & rk.PM_SWAP:
            return e
    pytest.fail(f"MADV_PAGEOUT did not swap the page out (entry {rk.entry(addr):#x}, swaps {_active_swap()})")


@pytest.mark.usefixtures("swap")
def test_28_swap_round_trip(tracker: softdirty.Tracker) -> None:
    with rk.Region(1) as r:
        rk.write(r.base, value=0x11)
        tracker.reset()
        rk.write(r.base, value=0x22)
        e = _page_out(r.base)
        assert e & rk.PM_SOFT_DIRTY, "swap-out keeps soft-dirty (swp-SD)"
        assert r.base in tracker.harvest()

        tracker.reset()
        e = rk.entry(r.base)
        assert e & rk.PM_SWAP and not e & rk.PM_SOFT_DIRTY, f"clear_refs clears swp-SD: {e:#x}"
        assert r.base not in tracker.harvest()

        assert rk.read(r.base) == 0x22  # swap-in by a read
        e = rk.entry(r.base)
        assert e & rk.PM_PRESENT and not e & rk.PM_SOFT_DIRTY, f"read swap-in stays clean: {e:#x}"
        assert r.base not in tracker.harvest()

        rk.write(r.base, value=0x33)
        assert lib_and_kernel(tracker, r.base, 1) == ({0}, {0})


# ---- 29: brk and stack growth (in a child process) ------------------------------------

@pytest.fixture(scope="module")
def child() -> Iterator[rk.Child]:
    with rk.Child() as c:
        yield c


def test_29_brk_growth_dirties_the_whole_heap(child: rk.Child) -> None:
    with softdirty.track(child.pid, backend="softdirty") as t:
        t.reset()
        child.run("_ = None")  # the child wakes, runs a command and stops again
        lo, hi = rk.vma_named("[heap]", child.pid)
        heap_pages = (hi - lo) // rk.PAGE
        before = t.harvest()
        assert rk.dirty_pages(before, lo, heap_pages) != set(range(heap_pages)), \
            "precondition: a command alone leaves part of the heap clean"

        t.reset()
        child.run(f"_ = rk.sbrk({64 * rk.PAGE})")
        lo, hi = rk.vma_named("[heap]", child.pid)
        heap_pages = (hi - lo) // rk.PAGE
        ds = t.harvest()
        kernel = rk.soft_dirty_pages(lo, heap_pages, child.pid)
        assert kernel == set(range(heap_pages)), "brk growth sets VM_SOFTDIRTY on the whole heap VMA"
        assert rk.dirty_pages(ds, lo, heap_pages) == kernel
        assert rk.flags_at(ds, lo) & Cause.NEW_MAPPING


def test_29_stack_growth_dirties_only_written_pages(child: rk.Child) -> None:
    lo, hi = rk.vma_named("[stack]", child.pid)
    read_at, untouched, write_at = lo - 16 * rk.PAGE, lo - 12 * rk.PAGE, lo - 8 * rk.PAGE
    with softdirty.track(child.pid, backend="softdirty") as t:
        t.reset()
        # loads/stores below the stack VMA grow it (a read maps the zero page)
        child.run(f"_ = rk.read({read_at}); rk.write({write_at})")
        new_lo, new_hi = rk.vma_named("[stack]", child.pid)
        assert new_lo <= read_at and new_hi == hi, "the stack VMA grew down"
        ds = t.harvest()
        kernel = {a for a in (read_at, untouched, write_at)
                  if rk.entry(a, child.pid) & rk.PM_SOFT_DIRTY}
        assert kernel == {write_at}, "stack growth: only written pages are soft-dirty"
        assert {a for a in (read_at, untouched, write_at) if a in ds} == kernel
        assert not rk.flags_at(ds, write_at) & Cause.NEW_MAPPING
