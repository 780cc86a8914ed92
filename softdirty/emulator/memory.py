"""Emulated physical memory: folios with PFNs, files and their page cache, swap."""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable

from softdirty.emulator.profile import KernelProfile
from softdirty.emulator.x86 import (
    _PAGE_SOFT_DIRTY,
    _PAGE_SPECIAL,
    _PAGE_SWP_SOFT_DIRTY,
    _PAGE_SWP_UFFD_WP,
    _PAGE_UFFD_WP,
    PTE_PFN_MASK,
    swp_offset,
)
from softdirty.pagemap import PM_PFRAME_MASK, PTE_MARKER_GUARD, PTE_MARKER_UFFD_WP, SWP_PTE_MARKER

PM_PRESENT = 1 << 63
PM_SWAP = 1 << 62
PM_FILE = 1 << 61
PM_GUARD = 1 << 58
PM_UFFD_WP = 1 << 57
PM_EXCL = 1 << 56
PM_SOFT_DIRTY = 1 << 55

HPAGE_NR = 512  # pages in a PMD-sized folio
ZERO_PFN = 0x2B0A  # the shared zero page (a fixed low PFN, as on real machines)
HUGE_ZERO_PFN = 0x245C00  # the huge zero folio (512-aligned)
FIRST_PFN = 0x100000  # allocations start at 4 GiB of "physical memory"


class Folio:
    """A page or a 2 MiB folio: what ``struct folio`` holds that we need.

    Per-subpage lists: ``mapcount`` (PTE mappings plus PMD mappings),
    ``rmap`` (the PTE slots mapping the subpage), ``excl``
    (PageAnonExclusive), ``data`` (sparse content: offset -> byte).
    """

    __slots__ = (
        "pfn", "nr", "anon", "file", "index", "mapcount", "rmap", "pmd_rmap", "excl", "data",
        "swap", "lazyfree", "dirty", "hugetlb", "freed", "total",
    )

    def __init__(self, pfn: int, nr: int, *, anon: bool, file: EmuFile | None = None, index: int = 0,
                 hugetlb: bool = False) -> None:
        self.pfn = pfn
        self.nr = nr
        self.anon = anon
        self.file = file
        self.index = index  # page offset in the file (file/shmem folios)
        self.mapcount = [0] * nr
        self.rmap: list[list[tuple[object, int]]] = [[] for _ in range(nr)]
        self.pmd_rmap: list[tuple[object, int]] = []
        self.excl = [False] * nr
        self.data: list[dict[int, int] | None] = [None] * nr
        self.swap: int | None = None  # swap slot of the first page while in the swap cache
        self.lazyfree = False  # MADV_FREE'd and still clean
        self.dirty = False
        self.hugetlb = hugetlb
        self.freed = False
        self.total = 0  # sum of mapcount

    @property
    def large(self) -> bool:
        return self.nr > 1

    def __repr__(self) -> str:
        kind = "anon" if self.anon else f"file:{self.file.name if self.file else '?'}@{self.index}"
        return f"<Folio pfn={self.pfn:#x} nr={self.nr} {kind}>"


class EmuFile:
    """A file (regular, tmpfs, or the shmem object behind MAP_SHARED|MAP_ANONYMOUS).

    ``cache`` is the page cache (page offset -> folio); ``disk`` keeps the
    contents of evicted pages; ``swapped`` holds shmem pages on swap.
    """

    _inodes = itertools.count(1000)

    def __init__(self, name: str, size: int, *, kind: str = "regular", dev: str = "08:01",
                 inode: int | None = None) -> None:
        if kind not in ("regular", "tmpfs", "shmem", "hugetlbfs"):
            raise ValueError(f"unknown file kind {kind!r}")
        self.name = name
        self.size = size
        self.kind = kind
        self.dev = dev if kind == "regular" else "00:01"
        self.inode = next(self._inodes) if inode is None else inode
        self.cache: dict[int, Folio] = {}
        self.disk: dict[int, dict[int, int]] = {}
        self.swapped: dict[int, int] = {}

    @property
    def shmem(self) -> bool:
        """Backed by shmem (no writeback, no page_mkwrite)."""
        return self.kind in ("tmpfs", "shmem")

    @property
    def has_page_mkwrite(self) -> bool:
        return self.kind == "regular"

    @property
    def pages(self) -> int:
        return (self.size + 4095) // 4096

    def __repr__(self) -> str:
        return f"<EmuFile {self.name!r} {self.kind} {self.size} bytes>"


class SwapDevice:
    """Swap type 0: slots, their reference counts, and the swapped-out content."""

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self.count: dict[int, int] = {}  # slot -> PTE/shmem references
        self.cache: dict[int, Folio] = {}  # slot -> folio in the swap cache
        self.data: dict[int, list[dict[int, int] | None]] = {}
        self._next = 1  # slot 0 holds the header

    def alloc(self) -> int:
        if len(self.count) + len(self.cache) >= self.pages - 1:
            raise OSError(errno.ENOMEM, "emulated swap device is full")
        for _ in range(self.pages):
            slot = self._next
            self._next = self._next + 1 if self._next + 1 < self.pages else 1
            if slot not in self.count and slot not in self.cache and slot not in self.data:
                return slot
        raise OSError(errno.ENOMEM, "emulated swap device is full")

    def in_use(self, slot: int) -> bool:
        return self.count.get(slot, 0) > 0 or slot in self.cache

    def put(self, slot: int) -> None:
        """Drop one reference; free the slot when nobody needs it."""
        n = self.count.get(slot, 0) - 1
        if n > 0:
            self.count[slot] = n
            return
        self.count.pop(slot, None)
        if slot not in self.cache:
            self.data.pop(slot, None)


class Machine:
    """The emulated machine: profile, physical memory, files, swap, processes.

    Oracles let a driver feed real-world nondeterminism in:
    ``thp_oracle(addr) -> bool`` says whether a THP allocation succeeds.
    """

    def __init__(self, profile: KernelProfile) -> None:
        self.profile = profile
        self._next_pfn = FIRST_PFN
        self.pfn_map: dict[int, Folio] = {}
        self.swap = SwapDevice(profile.swap_pages) if profile.swap_pages else None
        self.hugetlb_free = profile.hugetlb_pages
        self._pids = itertools.count(1000)
        self.thp_oracle: Callable[[int], bool] | None = None
        self.processes: dict[int, object] = {}

    def new_pid(self) -> int:
        return next(self._pids)

    def alloc_pfn_range(self, nr: int) -> int:
        pfn = (self._next_pfn + nr - 1) // nr * nr  # naturally aligned
        self._next_pfn = pfn + nr
        return pfn

    def new_table_pfn(self) -> int:
        return self.alloc_pfn_range(1)

    def alloc_folio(self, nr: int = 1, *, anon: bool, file: EmuFile | None = None, index: int = 0,
                    hugetlb: bool = False) -> Folio:
        folio = Folio(self.alloc_pfn_range(nr), nr, anon=anon, file=file, index=index, hugetlb=hugetlb)
        pfn_map = self.pfn_map
        for i in range(nr):
            pfn_map[folio.pfn + i] = folio
        return folio

    def free_folio(self, folio: Folio) -> None:
        if folio.freed:
            return
        folio.freed = True
        for i in range(folio.nr):
            self.pfn_map.pop(folio.pfn + i, None)
        if folio.hugetlb:
            self.hugetlb_free += 1
        if folio.swap is not None and self.swap is not None:
            self.swap.cache.pop(folio.swap, None)
            if not self.swap.count.get(folio.swap):
                self.swap.data.pop(folio.swap, None)
            folio.swap = None

    def pm_of(self, raw: int) -> int:
        """The pagemap entry of a 4 KiB PTE (spec 1.2 steps 2-4; VM_SOFTDIRTY is OR-ed by the reader)."""
        if not raw & ~0x60:  # pte_none ignores A/D
            return 0
        if raw & 0x101:  # present or PROT_NONE
            pfn = (raw & PTE_PFN_MASK) >> 12
            v = PM_PRESENT | pfn
            if raw & _PAGE_SOFT_DIRTY:
                v |= PM_SOFT_DIRTY
            if raw & _PAGE_UFFD_WP:
                v |= PM_UFFD_WP
            if not raw & _PAGE_SPECIAL:
                f = self.pfn_map.get(pfn)
                if f is not None:
                    if not f.anon:
                        v |= PM_FILE
                    if f.mapcount[pfn - f.pfn] == 1:
                        v |= PM_EXCL
            return v
        t = raw >> 59
        off = swp_offset(raw)
        v = PM_SWAP | ((t | off << 5) & PM_PFRAME_MASK)
        if raw & _PAGE_SWP_SOFT_DIRTY:
            v |= PM_SOFT_DIRTY
        if raw & _PAGE_SWP_UFFD_WP:
            v |= PM_UFFD_WP
        if t == SWP_PTE_MARKER:
            if off & PTE_MARKER_UFFD_WP:
                v |= PM_UFFD_WP
            if off & PTE_MARKER_GUARD and self.profile.guard_bit:
                v |= PM_GUARD
        return v

    def thp_available(self, addr: int) -> bool:
        return True if self.thp_oracle is None else bool(self.thp_oracle(addr))
