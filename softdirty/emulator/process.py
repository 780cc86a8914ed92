"""An emulated process: an mm with VMAs and page tables, driven by syscalls.

Operations are named after the syscalls (``mmap``, ``munmap``, ``mremap``,
``mprotect``, ``madvise``, ``brk``, ``fork``) plus memory accesses (``read``,
``write``); failures raise ``OSError`` with the kernel's errno.  Faults follow
mm/memory.c: zero page on anon reads, COW, reuse, THP and the huge zero page,
swap-in, uffd-wp markers.  The kernel's side of the pagemap ABI
(:class:`softdirty.process.ProcessInterface`) is implemented at the end.
"""

from __future__ import annotations

import errno
from array import array
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from softdirty.answer import Answer
from softdirty.emulator import x86
from softdirty.emulator.constants import (
    MADV_COLD,
    MADV_DODUMP,
    MADV_DOFORK,
    MADV_DONTDUMP,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_DONTNEED_LOCKED,
    MADV_FREE,
    MADV_GUARD_INSTALL,
    MADV_GUARD_REMOVE,
    MADV_HUGEPAGE,
    MADV_KEEPONFORK,
    MADV_NOHUGEPAGE,
    MADV_NORMAL,
    MADV_PAGEOUT,
    MADV_POPULATE_READ,
    MADV_POPULATE_WRITE,
    MADV_RANDOM,
    MADV_REMOVE,
    MADV_SEQUENTIAL,
    MADV_WILLNEED,
    MADV_WIPEONFORK,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_GROWSDOWN,
    MAP_HUGETLB,
    MAP_KNOWN,
    MAP_NORESERVE,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    MAP_SHARED_VALIDATE,
    MAP_TYPE,
    MREMAP_DONTUNMAP,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PROT_EXEC,
    PROT_MASK,
    PROT_READ,
    PROT_WRITE,
    VM_ACCOUNT,
    VM_DONTCOPY,
    VM_DONTDUMP,
    VM_DONTEXPAND,
    VM_EXEC,
    VM_GROWSDOWN,
    VM_HUGEPAGE,
    VM_HUGETLB,
    VM_IO,
    VM_LOCKED,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_MIXEDMAP,
    VM_NOHUGEPAGE,
    VM_NORESERVE,
    VM_PFNMAP,
    VM_READ,
    VM_SHARED,
    VM_SOFTDIRTY,
    VM_UFFD_FLAGS,
    VM_WIPEONFORK,
    VM_WRITE,
)
from softdirty.emulator.memory import (
    HPAGE_NR,
    HUGE_ZERO_PFN,
    PM_EXCL,
    PM_FILE,
    PM_PRESENT,
    PM_SOFT_DIRTY,
    PM_UFFD_WP,
    ZERO_PFN,
    EmuFile,
    Folio,
    Machine,
)
from softdirty.emulator.pagetable import PMD_MASK, PMD_SIZE, PTRS, PageTables, PteTable, Table, is_leaf
from softdirty.emulator.profile import KernelProfile, get_profile
from softdirty.emulator.vma import AnonVma, EVma, UffdCtx, anon_mergeable, anon_vma_compatible, attrs_mergeable
from softdirty.emulator.x86 import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_PSE,
    _PAGE_RW,
    _PAGE_SOFT_DIRTY,
    _PAGE_SPECIAL,
    _PAGE_SWP_EXCLUSIVE,
    _PAGE_SWP_SOFT_DIRTY,
    _PAGE_SWP_UFFD_WP,
    _PAGE_UFFD_WP,
    _PAGE_USER,
    PTE_PFN_MASK,
    is_swap_pte,
    make_marker,
    marker_bits,
    mk_pte,
    pte_mkuffd_wp,
    pte_modify,
    pte_none,
    pte_present,
    swp_entry,
    swp_offset,
    swp_type,
)
from softdirty.errors import ProcessGone
from softdirty.maps import Vma
from softdirty.pagemap import (
    ENTRY_SIZE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PM_FLAGS_MASK,
    PTE_MARKER_GUARD,
    PTE_MARKER_POISONED,
    PTE_MARKER_UFFD_WP,
    SWP_PTE_MARKER,
)

if TYPE_CHECKING:
    from softdirty.emulator.uffd import EmulatedUffd

PAGE_MASK = ~(PAGE_SIZE - 1)
LLONG_MAX = (1 << 63) - 1
_REP_SD = int.from_bytes(PM_SOFT_DIRTY.to_bytes(8, "little") * PTRS, "little")
_REP_FLAGS = int.from_bytes(PM_FLAGS_MASK.to_bytes(8, "little") * PTRS, "little")
_FAULT_RETRIES = 8


class SegmentationFault(Exception):
    """The access would raise SIGSEGV (``code`` is SEGV_MAPERR 1 or SEGV_ACCERR 2)."""

    def __init__(self, addr: int, code: int, why: str) -> None:
        self.addr = addr
        self.code = code
        super().__init__(f"SIGSEGV at {addr:#x}: {why}")


class BusError(Exception):
    """The access would raise SIGBUS (beyond the end of the file, no hugetlb page)."""

    def __init__(self, addr: int, why: str) -> None:
        self.addr = addr
        super().__init__(f"SIGBUS at {addr:#x}: {why}")


class UffdBlocked(Exception):
    """The access would block in handle_userfault() (sync uffd-wp or MISSING mode)."""

    def __init__(self, addr: int, reason: str) -> None:
        self.addr = addr
        super().__init__(f"the access at {addr:#x} waits for a userfaultfd reader ({reason})")


def _err(code: int, why: str) -> OSError:
    return OSError(code, f"{errno.errorcode.get(code, code)}: {why}")


def _page_align_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & PAGE_MASK


class EmulatedProcess:
    """One emulated process (and its mm).  Create with a profile or a machine."""

    def __init__(self, profile: KernelProfile | str | Machine | None = None, *, layout: str = "bare",
                 _parent: EmulatedProcess | None = None) -> None:
        if isinstance(profile, Machine):
            machine = profile
        elif isinstance(profile, KernelProfile):
            machine = Machine(profile)
        elif profile is None or isinstance(profile, str):
            machine = Machine(get_profile(profile or "6.18"))
        else:
            raise TypeError(f"a KernelProfile, preset name or Machine, not {type(profile).__name__}")
        if layout not in ("bare", "exec"):
            raise ValueError(f"layout must be 'bare' or 'exec', not {layout!r}")
        self.machine = machine
        self.profile = machine.profile
        self._pid = machine.new_pid()
        machine.processes[self._pid] = self
        self.alive = True
        self.vmas: list[EVma] = []
        self.pt = PageTables(machine.new_table_pfn, self, five_level=self.profile.five_level)
        self.start_brk = self.brk_addr = 0
        self.start_stack = 0
        self.parent = _parent
        self.children: list[EmulatedProcess] = []
        self.uffds: list[EmulatedUffd] = []
        self.hiwater_rss = 0
        self._last_vma: EVma | None = None
        # Without CONFIG_MEM_SOFT_DIRTY, _PAGE_SOFT_DIRTY is 0: pte_mkdirty() sets Dirty only.
        self._dirty_bits = _PAGE_DIRTY | (_PAGE_SOFT_DIRTY if self.profile.soft_dirty else 0)
        if layout == "exec" and _parent is None:
            self._exec_layout()

    def _mkdirty(self, raw: int) -> int:
        """pte_mkdirty()/pmd_mkdirty(): on x86 Dirty and soft-dirty together."""
        return raw | self._dirty_bits

    # ------------------------------------------------------------------ basics
    @property
    def pid(self) -> int:
        return self._pid

    @property
    def task_size(self) -> int:
        return self.profile.task_size

    @property
    def soft_dirty(self) -> bool:
        return self.profile.soft_dirty

    def _check_alive(self) -> None:
        if not self.alive:
            raise ProcessGone(self._pid, f"emulated process {self._pid} has exited")

    def _exec_layout(self) -> None:
        """What exec leaves: a heap (brk), a stack, [vvar] (PFNMAP) and [vdso]."""
        sd = VM_SOFTDIRTY if self.soft_dirty else 0
        self.start_brk = self.brk_addr = 0x555555559000
        top = 0x7FFFFFFDE000 if not self.profile.five_level else 0x7FFFFFFDE000
        stack = EVma(top - 0x21000, top, VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
                     | VM_GROWSDOWN | VM_ACCOUNT | sd)
        stack.pgoff = stack.start >> PAGE_SHIFT
        self.start_stack = top - 0x1000
        vvar = EVma(0x7FFFF7FC1000, 0x7FFFF7FC5000, VM_READ | VM_MAYREAD | VM_PFNMAP | VM_IO | VM_DONTEXPAND
                    | VM_DONTDUMP | sd, name="[vvar]")
        vdso_file = EmuFile("[vdso]", 2 * PAGE_SIZE, kind="regular")
        vdso = EVma(0x7FFFF7FC5000, 0x7FFFF7FC7000, VM_READ | VM_EXEC | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
                    | VM_DONTEXPAND | sd, name="[vdso]")
        self.vdso_file = vdso_file
        for v in (vvar, vdso, stack):
            self._insert_vma(v)
        # The vdso pages are kernel pages mapped by the special mapping.
        for k in range(2):
            f = self.machine.alloc_folio(anon=False, file=vdso_file, index=k)
            vdso_file.cache[k] = f
            self._mc(f, 0, 1)  # every other process maps the vdso too: never exclusive
            self._map_file_pte(vdso, vdso.start + k * PAGE_SIZE, f, write=False, prefault=False)

    # ------------------------------------------------------------------ VMA list
    def _vma_index(self, addr: int) -> int:
        """Index of the first VMA whose end is above ``addr``."""
        vmas = self.vmas
        lo, hi = 0, len(vmas)
        while lo < hi:
            mid = (lo + hi) // 2
            if vmas[mid].end <= addr:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def find_vma(self, addr: int) -> EVma | None:
        """The VMA containing ``addr``, or None."""
        v = self._last_vma
        if v is not None and v.start <= addr < v.end:
            return v
        i = self._vma_index(addr)
        if i < len(self.vmas) and self.vmas[i].start <= addr:
            self._last_vma = self.vmas[i]
            return self.vmas[i]
        return None

    def _vmas_in(self, start: int, end: int) -> list[EVma]:
        if end <= start:
            return []
        i = self._vma_index(start)
        out = []
        while i < len(self.vmas) and self.vmas[i].start < end:
            out.append(self.vmas[i])
            i += 1
        return out

    def _prev_next(self, start: int, end: int) -> tuple[EVma | None, EVma | None]:
        """The VMAs just below ``start`` and from ``end`` on (ignoring what lies in between)."""
        i = self._vma_index(start)
        prev = self.vmas[i - 1] if i > 0 else None
        if prev is not None and prev.end > start:
            prev = None
        j = self._vma_index(end)
        nxt = self.vmas[j] if j < len(self.vmas) else None
        if nxt is not None and nxt.start < end:
            nxt = self.vmas[j + 1] if j + 1 < len(self.vmas) else None
        return prev, nxt

    def _insert_vma(self, v: EVma) -> None:
        i = self._vma_index(v.start)
        self.vmas.insert(i, v)
        self._last_vma = None

    def _remove_vma(self, v: EVma) -> None:
        self.vmas.remove(v)
        self._last_vma = None

    def _neighbours(self, v: EVma) -> tuple[EVma | None, EVma | None]:
        i = self.vmas.index(v)
        prev = self.vmas[i - 1] if i > 0 and self.vmas[i - 1].end == v.start else None
        nxt = self.vmas[i + 1] if i + 1 < len(self.vmas) and self.vmas[i + 1].start == v.end else None
        return prev, nxt

    def _split_vma(self, v: EVma, addr: int) -> EVma:
        """__split_vma(): cut ``v`` at ``addr``; returns the upper part (``v`` keeps the lower)."""
        assert v.start < addr < v.end and not addr & ~PAGE_MASK
        if v.hugetlb and addr & (PMD_SIZE - 1):
            raise _err(errno.EINVAL, "hugetlb VMAs split only at huge page boundaries")
        # vma_adjust_trans_huge(): a THP straddling the cut is split first.
        if addr & (PMD_SIZE - 1) and not v.hugetlb:
            self._split_pmd_at(v, addr)
        hi = v.copy()
        hi.start = addr
        hi.pgoff = v.pgoff + ((addr - v.start) >> PAGE_SHIFT)
        v.end = addr
        self._insert_vma(hi)
        return hi

    def _isolate(self, v: EVma, start: int, end: int) -> EVma:
        """Split ``v`` so that one VMA covers exactly [max(start), min(end)) of it."""
        if start > v.start:
            v = self._split_vma(v, start)
        if end < v.end:
            self._split_vma(v, end)
        return v

    # -- merging ------------------------------------------------------------
    def _sd_merge(self, target_flags: int, *others: int) -> int:
        if self.profile.sticky_vm_softdirty_merge:
            for f in others:
                target_flags |= f & VM_SOFTDIRTY
        return target_flags

    def _modify(self, v: EVma, start: int, end: int, flags: int, uffd: UffdCtx | None,
                reset_flags: bool = True) -> EVma:
        """vma_modify(): give [start, end) of ``v`` new flags/uffd ctx, merging where the kernel does.

        ``reset_flags``: the caller resets the merged VMA's flags to ``flags``
        (mprotect, madvise); otherwise the merge target keeps its own VM_SOFTDIRTY.
        """
        prev, nxt = self._neighbours(v)
        anon = v.anon_vma
        pgoff_start = v.pgoff + ((start - v.start) >> PAGE_SHIFT)
        pgoff_end = v.pgoff + ((end - v.start) >> PAGE_SHIFT)
        merge_left = (
            prev is not None and start == v.start
            and attrs_mergeable(flags, v.file, uffd, v.name, prev)
            and prev.pgoff + prev.pages == pgoff_start
            and anon_mergeable(prev, anon, v, fixed=self.profile.anon_merge_fixed)
        )
        merge_right = (
            nxt is not None and end == v.end
            and attrs_mergeable(flags, v.file, uffd, v.name, nxt)
            and nxt.pgoff == pgoff_end
            and anon_mergeable(nxt, anon, v, fixed=self.profile.anon_merge_fixed)
        )
        if merge_left and merge_right:
            assert prev is not None and nxt is not None
            if not anon_mergeable(prev, nxt.anon_vma, nxt, fixed=self.profile.anon_merge_fixed, pair=True):
                merge_right = False
        if not merge_left and not merge_right:
            if start == v.start and end == v.end:
                v.flags = flags
                v.uffd = uffd
                return v
            mid = self._isolate(v, start, end)
            mid.flags = flags
            mid.uffd = uffd
            return mid
        old_flags = v.flags
        if merge_left and merge_right:
            assert prev is not None and nxt is not None
            if end < v.end:
                raise AssertionError("unreachable")
            prev.end = nxt.end
            prev.anon_vma = prev.anon_vma or anon or nxt.anon_vma
            self._remove_vma(v)
            self._remove_vma(nxt)
            prev_flags = prev.flags
            prev.flags = flags if reset_flags else prev_flags
            prev.flags = self._sd_merge(prev.flags, prev_flags, old_flags, nxt.flags)
            prev.uffd = uffd
            return prev
        if merge_left:
            assert prev is not None
            if end < v.end:
                self._split_pmd_at(v, end) if end & (PMD_SIZE - 1) else None
                v.pgoff += (end - v.start) >> PAGE_SHIFT
                v.start = end
            else:
                self._remove_vma(v)
            prev.end = end
            prev.anon_vma = prev.anon_vma or anon
            prev_flags = prev.flags
            prev.flags = flags if reset_flags else prev_flags
            prev.flags = self._sd_merge(prev.flags, prev_flags, old_flags)
            prev.uffd = uffd
            self._last_vma = None
            return prev
        assert nxt is not None
        if start > v.start:
            self._split_pmd_at(v, start) if start & (PMD_SIZE - 1) else None
            v.end = start
        else:
            self._remove_vma(v)
        nxt.start = start
        nxt.pgoff = pgoff_start
        nxt.anon_vma = nxt.anon_vma or anon
        nxt_flags = nxt.flags
        nxt.flags = flags if reset_flags else nxt_flags
        nxt.flags = self._sd_merge(nxt.flags, nxt_flags, old_flags)
        nxt.uffd = uffd
        self._last_vma = None
        return nxt

    def _anon_vma_prepare(self, v: EVma) -> None:
        """anon_vma_prepare(): reuse a compatible neighbour's anon_vma, else a new one."""
        if v.anon_vma is not None:
            return
        prev, nxt = self._neighbours(v)
        for other, lo, hi in ((nxt, v, nxt), (prev, prev, v)):
            if other is not None and lo is not None and hi is not None and other.anon_vma is not None \
                    and not other.avc_forked and anon_vma_compatible(lo, hi):
                v.anon_vma = other.anon_vma
                return
        v.anon_vma = AnonVma()

    # ------------------------------------------------------------------ PTE plumbing
    def _set(self, t: PteTable, i: int, raw: int) -> None:
        t.pte[i] = raw
        t.pm[i] = self.machine.pm_of(raw)

    def _mc(self, folio: Folio, idx: int, delta: int) -> None:
        old = folio.mapcount[idx]
        new = old + delta
        folio.mapcount[idx] = new
        folio.total += delta
        if (old == 1) != (new == 1):
            pm_of = self.machine.pm_of
            for t, i in folio.rmap[idx]:
                assert isinstance(t, PteTable)
                t.pm[i] = pm_of(t.pte[i])

    def _map_pte(self, t: PteTable, i: int, raw: int, folio: Folio, idx: int) -> None:
        folio.rmap[idx].append((t, i))
        t.pte[i] = raw
        self._mc(folio, idx, 1)
        t.pm[i] = self.machine.pm_of(raw)

    def _folio_of(self, raw: int) -> tuple[Folio | None, int]:
        if raw & _PAGE_SPECIAL:
            return None, 0
        pfn = (raw & PTE_PFN_MASK) >> PAGE_SHIFT
        f = self.machine.pfn_map.get(pfn)
        if f is None:
            return None, 0
        return f, pfn - f.pfn

    def _unmap_folio_pte(self, t: PteTable, i: int, raw: int) -> Folio | None:
        """Drop the rmap/mapcount of the page a present PTE maps (the PTE itself is left)."""
        f, idx = self._folio_of(raw)
        if f is None:
            return None
        try:
            f.rmap[idx].remove((t, i))
        except ValueError:
            pass
        self._mc(f, idx, -1)
        if raw & _PAGE_DIRTY and not f.anon:
            f.dirty = True
        self._maybe_free(f)
        return f

    def _maybe_free(self, f: Folio) -> None:
        if f.total == 0 and f.anon:
            self.machine.free_folio(f)

    def _swap_put(self, raw: int) -> None:
        """free_swap_and_cache() for a real swap entry being dropped."""
        if swp_type(raw) == SWP_PTE_MARKER or self.machine.swap is None:
            return
        slot = swp_offset(raw)
        swap = self.machine.swap
        swap.put(slot)
        if not swap.count.get(slot):
            f = swap.cache.pop(slot, None)
            if f is not None:
                f.swap = None
                if f.total == 0:
                    self.machine.free_folio(f)
            swap.data.pop(slot, None)

    def _vm_page_prot(self, v: EVma) -> int:
        prot = v.base_prot()
        if self._wants_writenotify(v):
            prot &= ~_PAGE_RW
        return prot

    def _wants_writenotify(self, v: EVma) -> bool:
        """vma_wants_writenotify()."""
        if (v.flags & (VM_WRITE | VM_SHARED)) != (VM_WRITE | VM_SHARED):
            return False
        if v.file is not None and v.file.has_page_mkwrite:
            return True
        if v.flags & VM_PFNMAP:
            return False
        if self._soft_dirty_tracking(v):
            return True
        if v.uffd_wp:
            return True
        return v.file is not None and v.file.kind == "regular"

    def _soft_dirty_tracking(self, v: EVma) -> bool:
        """vma_soft_dirty_enabled(): soft-dirty compiled in and VM_SOFTDIRTY clear."""
        return self.soft_dirty and not v.flags & VM_SOFTDIRTY

    # ------------------------------------------------------------------ memory access
    def read(self, addr: int, length: int = 1, *, fault_around: Iterable[int] | None = None) -> bytes:
        """Read bytes (faulting pages in as a load would)."""
        self._check_alive()
        out = bytearray()
        for page, off, n in self._chunks(addr, length):
            folio, idx = self._access(page, False, fault_around)
            out += self._page_bytes(folio, idx, off, n)
        return bytes(out)

    def write(self, addr: int, data: bytes | int = b"\x01") -> None:
        """Write bytes (an int is one byte)."""
        self._check_alive()
        if isinstance(data, int):
            data = bytes((data & 0xFF,))
        pos = 0
        for page, off, n in self._chunks(addr, len(data)):
            folio, idx = self._access(page, True, None)
            assert folio is not None
            d = folio.data[idx]
            if d is None:
                d = folio.data[idx] = {}
            for k in range(n):
                d[off + k] = data[pos + k]
            pos += n

    def touch(self, addr: int, length: int = PAGE_SIZE, write: bool = True) -> None:
        """Access every page of a range once without moving data (fast)."""
        self._check_alive()
        page = addr & PAGE_MASK
        end = addr + length
        while page < end:
            self._access(page, write, None)
            page += PAGE_SIZE

    @staticmethod
    def _chunks(addr: int, length: int) -> Iterator[tuple[int, int, int]]:
        if addr < 0 or length < 0:
            raise ValueError("negative address or length")
        while length > 0:
            page = addr & PAGE_MASK
            off = addr - page
            n = min(length, PAGE_SIZE - off)
            yield page, off, n
            addr += n
            length -= n

    def _page_bytes(self, folio: Folio | None, idx: int, off: int, n: int) -> bytes:
        if folio is None:
            return bytes(n)
        d = folio.data[idx]
        if not d:
            return bytes(n)
        return bytes(d.get(off + k, 0) for k in range(n))

    def _access(self, addr: int, write: bool, fault_around: Iterable[int] | None) -> tuple[Folio | None, int]:
        """One load/store to the page at ``addr``: the MMU's check, else the fault handler."""
        v = self.find_vma(addr)
        for _ in range(_FAULT_RETRIES):
            pmdt = self.pt.pmd_tables.get(addr >> 30)
            if pmdt is not None:
                pi = (addr >> 21) & 511
                t = pmdt.child[pi]
                if t is not None:
                    assert isinstance(t, PteTable)
                    i = (addr >> 12) & 511
                    raw = t.pte[i]
                    if raw & _PAGE_PRESENT and raw & _PAGE_USER and (not write or raw & _PAGE_RW):
                        new = raw | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
                        if new != raw:
                            t.pte[i] = new  # hardware A/D: invisible to pagemap
                        return self._folio_of(raw)
                else:
                    raw = pmdt.ents[pi]
                    if raw & _PAGE_PSE and raw & _PAGE_PRESENT and raw & _PAGE_USER and (not write or raw & _PAGE_RW):
                        pmdt.ents[pi] = raw | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
                        f, idx = self._folio_of(raw)
                        return f, idx + ((addr >> 12) & 511)
            v = self._fault_vma(v, addr, write)
            self._handle_mm_fault(v, addr, write, fault_around)
            fault_around = None
        raise RuntimeError(f"emulator bug: the fault at {addr:#x} did not resolve")

    def _fault_vma(self, v: EVma | None, addr: int, write: bool) -> EVma:
        """lock_mm_and_find_vma() + access_error(): the VMA, stack growth, or SIGSEGV."""
        if addr >= self.task_size:
            raise SegmentationFault(addr, 1, "above the user address space")
        if v is None or not v.start <= addr < v.end:
            v = self.find_vma(addr)
        if v is None:
            i = self._vma_index(addr)
            below = self.vmas[i] if i < len(self.vmas) else None
            if below is not None and below.flags & VM_GROWSDOWN:
                prev = self.vmas[i - 1] if i > 0 else None
                if prev is None or prev.end <= (addr & PAGE_MASK):
                    below.pgoff -= (below.start - (addr & PAGE_MASK)) >> PAGE_SHIFT
                    below.start = addr & PAGE_MASK
                    self._last_vma = None
                    v = below
            if v is None:
                raise SegmentationFault(addr, 1, "no mapping")
        if write:
            if not v.flags & VM_WRITE:
                raise SegmentationFault(addr, 2, "write to a mapping without PROT_WRITE")
        elif not v.flags & (VM_READ | VM_WRITE | VM_EXEC):
            raise SegmentationFault(addr, 2, "access to a PROT_NONE mapping")
        return v

    # ------------------------------------------------------------------ fault handling
    def _handle_mm_fault(self, v: EVma, addr: int, write: bool, fault_around: Iterable[int] | None) -> None:
        if v.flags & VM_PFNMAP:
            raise SegmentationFault(addr, 2, "emulated PFN mapping has no pages")
        if v.hugetlb:
            self._hugetlb_fault(v, addr, write)
            return
        pmdt = self.pt.pmd_table(addr, alloc=True)
        assert pmdt is not None
        pi = (addr >> 21) & 511
        if pmdt.child[pi] is None:
            raw = pmdt.ents[pi]
            if not raw:
                if self._thp_eligible(v, addr) and self._do_huge_pmd_anonymous_page(v, pmdt, pi, addr, write):
                    return
            elif is_leaf(raw):
                if write and not raw & _PAGE_RW:
                    if self._wp_huge_pmd(v, pmdt, pi, addr):
                        return
                    # fell back: the PMD is split now
                else:
                    return
        t = self.pt.pte_table(addr, alloc=True)
        assert t is not None
        i = (addr >> 12) & 511
        raw = t.pte[i]
        if pte_none(raw):
            self._do_pte_missing(v, t, i, addr, write, False, fault_around)
        elif not pte_present(raw):
            self._do_swap_page(v, t, i, addr, write, raw)
        elif write and not raw & _PAGE_RW:
            self._do_wp_page(v, t, i, addr, raw)
        elif not raw & _PAGE_PRESENT:
            raise SegmentationFault(addr, 2, "PROT_NONE page table entry")

    def _do_pte_missing(self, v: EVma, t: PteTable, i: int, addr: int, write: bool, uffd_wp: bool,
                        fault_around: Iterable[int] | None) -> None:
        if v.anonymous:
            self._do_anonymous_page(v, t, i, addr, write, uffd_wp)
        elif not write:
            self._do_read_fault(v, t, i, addr, uffd_wp, fault_around)
        elif not v.shared:
            self._do_cow_fault(v, t, i, addr, uffd_wp)
        else:
            self._do_shared_fault(v, t, i, addr, uffd_wp)

    def _do_anonymous_page(self, v: EVma, t: PteTable, i: int, addr: int, write: bool, uffd_wp: bool) -> None:
        if v.uffd_missing:
            raise UffdBlocked(addr, "MISSING fault")
        prot = self._vm_page_prot(v)
        if not write:
            raw = mk_pte(ZERO_PFN, prot) | _PAGE_SPECIAL
            if uffd_wp:
                raw = pte_mkuffd_wp(raw)
            self._set(t, i, raw)
            return
        self._anon_vma_prepare(v)
        f = self.machine.alloc_folio(anon=True)
        f.excl[0] = True
        raw = mk_pte(f.pfn, prot)
        if v.flags & VM_WRITE:
            raw = self._mkdirty(raw) | _PAGE_RW
        if uffd_wp:
            raw = pte_mkuffd_wp(raw)
        self._map_pte(t, i, raw, f, 0)
        self._rss_changed()

    # -- file faults ----------------------------------------------------------
    def _file_folio(self, v: EVma, addr: int) -> Folio:
        """filemap_fault()/shmem_fault(): the page-cache folio, read or allocated."""
        file = v.file
        assert file is not None
        pgoff = v.file_pgoff(addr)
        if pgoff >= file.pages:
            raise BusError(addr, f"page {pgoff} is beyond the end of {file.name}")
        f = file.cache.get(pgoff)
        if f is not None:
            return f
        f = self.machine.alloc_folio(anon=False, file=file, index=pgoff)
        slot = file.swapped.pop(pgoff, None)
        if slot is not None and self.machine.swap is not None:
            f.data[0] = (self.machine.swap.data.get(slot) or [None])[0]
            self.machine.swap.put(slot)
            self.machine.swap.data.pop(slot, None)
        else:
            disk = file.disk.get(pgoff)
            f.data[0] = dict(disk) if disk else None
        file.cache[pgoff] = f
        return f

    def _map_file_pte(self, v: EVma, addr: int, f: Folio, *, write: bool, prefault: bool,
                      uffd_wp: bool = False, t: PteTable | None = None, i: int = 0) -> None:
        """set_pte_range() for one page of a file folio."""
        if t is None:
            t = self.pt.pte_table(addr, alloc=True)
            assert t is not None
            i = (addr >> 12) & 511
        raw = mk_pte(f.pfn, self._vm_page_prot(v))
        if prefault:
            raw &= ~_PAGE_ACCESSED
        if write:
            raw = self._mkdirty(raw)
            if v.flags & VM_WRITE:
                raw |= _PAGE_RW
            f.dirty = True
        elif raw & _PAGE_RW and f.dirty and self.profile.dirty_folio_read_mkdirty:
            raw = self._mkdirty(raw)
        if uffd_wp:
            raw = pte_mkuffd_wp(raw)
        self._map_pte(t, i, raw, f, 0)

    def _fault_around_pages(self, v: EVma, t: PteTable, addr: int) -> list[int]:
        """do_fault_around(): the window of PTEs filemap_map_pages() may fill."""
        nr = self.profile.fault_around_pages
        pte_off = (addr >> 12) & 511
        vma_off = (addr - v.start) >> PAGE_SHIFT
        from_pte = max(pte_off & ~(nr - 1), pte_off - min(pte_off, vma_off))
        to_pte = min(from_pte + nr, PTRS, pte_off + v.pages - vma_off) - 1
        base = addr & PMD_MASK
        return [base + k * PAGE_SIZE for k in range(from_pte, to_pte + 1)]

    def _do_read_fault(self, v: EVma, t: PteTable, i: int, addr: int, uffd_wp: bool,
                       fault_around: Iterable[int] | None) -> None:
        file = v.file
        assert file is not None
        if self.profile.fault_around_pages > 1 and not v.uffd_disable_fault_around():
            window = self._fault_around_pages(v, t, addr)
            # A driver may say which pages the real kernel mapped (its page cache
            # and readahead decide); those are read in if we lack them.
            allowed = None if fault_around is None else {a & PAGE_MASK for a in fault_around}
            for a in window:
                if allowed is not None and a not in allowed:
                    continue
                k = (a >> 12) & 511
                if not pte_none(t.pte[k]):
                    continue
                pgoff = v.file_pgoff(a)
                if pgoff >= file.pages:
                    continue
                cached = file.cache.get(pgoff)
                if cached is None:
                    if allowed is None:
                        continue
                    cached = self._file_folio(v, a)
                self._map_file_pte(v, a, cached, write=False, prefault=a != addr, t=t, i=k)
            if not pte_none(t.pte[i]):
                return
        f = self._file_folio(v, addr)
        self._map_file_pte(v, addr, f, write=False, prefault=False, uffd_wp=uffd_wp, t=t, i=i)

    def _do_cow_fault(self, v: EVma, t: PteTable, i: int, addr: int, uffd_wp: bool) -> None:
        self._anon_vma_prepare(v)
        src = self._file_folio(v, addr)
        f = self.machine.alloc_folio(anon=True)
        f.excl[0] = True
        d = src.data[0]
        f.data[0] = dict(d) if d else None
        raw = self._mkdirty(mk_pte(f.pfn, self._vm_page_prot(v)))
        if v.flags & VM_WRITE:
            raw |= _PAGE_RW
        if uffd_wp:
            raw = pte_mkuffd_wp(raw)
        self._map_pte(t, i, raw, f, 0)

    def _do_shared_fault(self, v: EVma, t: PteTable, i: int, addr: int, uffd_wp: bool) -> None:
        f = self._file_folio(v, addr)
        self._map_file_pte(v, addr, f, write=True, prefault=False, uffd_wp=uffd_wp, t=t, i=i)

    # -- write-protect faults --------------------------------------------------
    def _do_wp_page(self, v: EVma, t: PteTable, i: int, addr: int, raw: int) -> None:
        if raw & _PAGE_UFFD_WP and v.uffd_wp:
            if not v.uffd_wp_async():
                raise UffdBlocked(addr, "write to a uffd-wp page in sync mode")
            raw &= ~_PAGE_UFFD_WP
            self._set(t, i, raw)
        f, idx = self._folio_of(raw)
        if (v.flags & (VM_WRITE | VM_SHARED)) == (VM_WRITE | VM_SHARED) and f is not None:
            # wp_page_shared(): page_mkwrite (regular files), then reuse.
            f.dirty = True
            self._wp_reuse(t, i, raw, v)
            return
        if f is not None and f.anon:
            if f.excl[idx] or self._can_reuse_anon(f, idx):
                f.excl[idx] = True
                self._wp_reuse(t, i, raw, v)
                return
        self._wp_page_copy(v, t, i, addr, raw, f, idx)

    def _can_reuse_anon(self, f: Folio, idx: int) -> bool:
        """wp_can_reuse_anon_folio(): only we hold the folio (after freeing its swap slot)."""
        if f.large:
            if not self.profile.large_anon_folio_reuse:
                return False
            # All mappings of the folio are ours (same mm) and it is not in the swap cache.
            if f.swap is not None or f.pmd_rmap:
                return False
            return all(t.owner is self for rm in f.rmap for t, _ in rm)  # type: ignore[attr-defined]
        if f.total != 1:
            return False
        if f.swap is not None:
            swap = self.machine.swap
            if swap is not None and swap.count.get(f.swap):
                return False  # another swap PTE still references the slot
            self._free_swapcache(f)
        return True

    def _free_swapcache(self, f: Folio) -> None:
        swap = self.machine.swap
        if f.swap is None or swap is None:
            return
        swap.cache.pop(f.swap, None)
        if not swap.count.get(f.swap):
            swap.data.pop(f.swap, None)
        f.swap = None

    def _wp_reuse(self, t: PteTable, i: int, raw: int, v: EVma) -> None:
        raw = self._mkdirty(raw | _PAGE_ACCESSED)
        if v.flags & VM_WRITE:
            raw |= _PAGE_RW
        self._set(t, i, raw)

    def _wp_page_copy(self, v: EVma, t: PteTable, i: int, addr: int, raw: int, old: Folio | None,
                      idx: int) -> None:
        self._anon_vma_prepare(v)
        f = self.machine.alloc_folio(anon=True)
        f.excl[0] = True
        if old is not None:
            d = old.data[idx]
            f.data[0] = dict(d) if d else None
        new = mk_pte(f.pfn, self._vm_page_prot(v)) | _PAGE_ACCESSED
        new = self._mkdirty(new)
        if v.flags & VM_WRITE:
            new |= _PAGE_RW
        if old is not None:
            self._unmap_folio_pte(t, i, raw)
        self._map_pte(t, i, new, f, 0)
        self._rss_changed()

    # -- swap-in and markers ----------------------------------------------------
    def _do_swap_page(self, v: EVma, t: PteTable, i: int, addr: int, write: bool, raw: int) -> None:
        if swp_type(raw) == SWP_PTE_MARKER:
            bits = marker_bits(raw)
            if bits & PTE_MARKER_POISONED:
                raise BusError(addr, "poisoned page")
            if bits & PTE_MARKER_GUARD:
                raise SegmentationFault(addr, 2, "guard region")
            if bits & PTE_MARKER_UFFD_WP:
                if not v.uffd_wp:
                    self._set(t, i, 0)  # leftover marker: just clear it
                    return
                self._do_pte_missing(v, t, i, addr, write, True, None)
                return
            self._set(t, i, 0)
            return
        self._swap_in(v, t, i, addr, write, raw)

    def _swap_in(self, v: EVma, t: PteTable, i: int, addr: int, write: bool, raw: int) -> None:
        swap = self.machine.swap
        if swap is None:
            raise RuntimeError("emulator bug: a swap entry without a swap device")
        slot = swp_offset(raw)
        f = swap.cache.get(slot)
        exclusive = bool(raw & _PAGE_SWP_EXCLUSIVE)
        if f is None:
            f = self.machine.alloc_folio(anon=True)
            data = swap.data.get(slot)
            f.data[0] = dict(data[0]) if data and data[0] else None
            if swap.count.get(slot, 0) == 1:
                # SWP_SYNCHRONOUS_IO (zram): bypass the swap cache; the folio is ours.
                exclusive = True
            else:
                f.swap = slot
                swap.cache[slot] = f
        new = mk_pte(f.pfn, self._vm_page_prot(v))
        if raw & _PAGE_SWP_SOFT_DIRTY:
            new |= _PAGE_SOFT_DIRTY
        uffd_wp = bool(raw & _PAGE_SWP_UFFD_WP)
        if uffd_wp:
            new = pte_mkuffd_wp(new)
        swap.put(slot)
        if f.swap is not None and not swap.count.get(slot) and write and f.total == 0:
            self._free_swapcache(f)  # should_try_to_free_swap()
        if exclusive or f.total == 0:
            if (v.flags & VM_WRITE and not (uffd_wp and v.uffd_wp)
                    and not (self._soft_dirty_tracking(v) and not new & _PAGE_SOFT_DIRTY)):
                new |= _PAGE_RW
                if write:
                    new = self._mkdirty(new)
                    write = False
            f.excl[0] = True
        self._map_pte(t, i, new, f, 0)
        if f.swap is not None and not swap.count.get(f.swap) and f.excl[0] and write:
            self._free_swapcache(f)
        self._rss_changed()
        if write:
            self._do_wp_page(v, t, i, addr, t.pte[i])

    # -- THP ------------------------------------------------------------------------
    def _thp_eligible(self, v: EVma, addr: int) -> bool:
        p = self.profile
        if p.thp == "never" or v.flags & VM_NOHUGEPAGE or not v.anonymous:
            return False
        if p.thp == "madvise" and not v.flags & VM_HUGEPAGE:
            return False
        h = addr & PMD_MASK
        return h >= v.start and h + PMD_SIZE <= v.end

    def _huge_prot(self, v: EVma) -> int:
        return self._vm_page_prot(v) | _PAGE_PSE

    def _do_huge_pmd_anonymous_page(self, v: EVma, pmdt: Table, pi: int, addr: int, write: bool) -> bool:
        if v.uffd_missing:
            raise UffdBlocked(addr, "MISSING fault")
        self._anon_vma_prepare(v)
        if not write and self.profile.thp_use_zero_page:
            pmdt.ents[pi] = mk_pte(HUGE_ZERO_PFN, self._huge_prot(v))
            return True
        if not self.machine.thp_available(addr & PMD_MASK):
            return False
        f = self.machine.alloc_folio(HPAGE_NR, anon=True)
        raw = self._mkdirty(mk_pte(f.pfn, self._huge_prot(v)))
        if v.flags & VM_WRITE:
            raw |= _PAGE_RW
        f.excl = [True] * HPAGE_NR
        self._map_pmd(pmdt, pi, raw, f)
        self._rss_changed()
        return True

    def _map_pmd(self, pmdt: Table, pi: int, raw: int, f: Folio) -> None:
        f.pmd_rmap.append((pmdt, pi))
        pmdt.ents[pi] = raw
        pmdt.child[pi] = None
        for k in range(f.nr):
            self._mc(f, k, 1)

    def _move_pmd_leaf(self, pmdt: Table, pi: int, npmdt: Table, npi: int, raw: int, f: Folio) -> None:
        """A PMD leaf changes place (mremap): same folio, same mapcount."""
        pmdt.ents[pi] = 0
        try:
            f.pmd_rmap.remove((pmdt, pi))
        except ValueError:
            pass
        f.pmd_rmap.append((npmdt, npi))
        npmdt.ents[npi] = raw
        npmdt.child[npi] = None

    def _unmap_pmd(self, pmdt: Table, pi: int) -> Folio | None:
        raw = pmdt.ents[pi]
        pmdt.ents[pi] = 0
        f, _ = self._folio_of(raw)
        if f is None:
            return None
        try:
            f.pmd_rmap.remove((pmdt, pi))
        except ValueError:
            pass
        for k in range(f.nr):
            self._mc(f, k, -1)
        if f.hugetlb:
            if f.total == 0 and (f.file is None or f.file.kind != "hugetlbfs"):
                self.machine.free_folio(f)
        else:
            self._maybe_free(f)
        return f

    def _wp_huge_pmd(self, v: EVma, pmdt: Table, pi: int, addr: int) -> bool:
        """Write fault on a read-only PMD leaf; False when it fell back to PTEs (split)."""
        raw = pmdt.ents[pi]
        if raw & _PAGE_UFFD_WP and v.uffd_wp:
            if not v.uffd_wp_async():
                raise UffdBlocked(addr, "write to a uffd-wp THP in sync mode")
            self._split_pmd(v, pmdt, pi)
            return False
        pfn = (raw & PTE_PFN_MASK) >> PAGE_SHIFT
        if pfn == HUGE_ZERO_PFN:
            if self.profile.huge_zero_wp_alloc and self.machine.thp_available(addr & PMD_MASK):
                self._anon_vma_prepare(v)
                f = self.machine.alloc_folio(HPAGE_NR, anon=True)
                f.excl = [True] * HPAGE_NR
                new = self._mkdirty(mk_pte(f.pfn, self._huge_prot(v)))
                if v.flags & VM_WRITE:
                    new |= _PAGE_RW
                self._map_pmd(pmdt, pi, new, f)
                self._rss_changed()
                return True
            self._split_pmd(v, pmdt, pi)
            return False
        folio, _ = self._folio_of(raw)
        if folio is not None and folio.anon:
            if folio.excl[0] or (folio.total == HPAGE_NR and len(folio.pmd_rmap) == 1 and folio.swap is None):
                folio.excl = [True] * HPAGE_NR
                new = self._mkdirty(raw | _PAGE_ACCESSED)
                if v.flags & VM_WRITE:
                    new |= _PAGE_RW
                pmdt.ents[pi] = new
                return True
        self._split_pmd(v, pmdt, pi)
        return False

    def _split_pmd_at(self, v: EVma, addr: int) -> None:
        pmdt = self.pt.pmd_table(addr)
        if pmdt is None:
            return
        pi = (addr >> 21) & 511
        if pmdt.child[pi] is None and is_leaf(pmdt.ents[pi]) and not v.hugetlb:
            self._split_pmd(v, pmdt, pi)

    def _split_pmd(self, v: EVma, pmdt: Table, pi: int) -> None:
        """__split_huge_pmd_locked(): one PMD leaf becomes 512 PTEs."""
        old = pmdt.ents[pi]
        base = pmdt.base + (pi << 21)
        t = self.pt.new_pte_table(base)
        pfn = (old & PTE_PFN_MASK) >> PAGE_SHIFT
        prot = self._vm_page_prot(v) if old & _PAGE_PRESENT else x86.PAGE_NONE
        if pfn == HUGE_ZERO_PFN:
            pmdt.ents[pi] = 0
            for k in range(PTRS):
                raw = mk_pte(ZERO_PFN, prot) | _PAGE_SPECIAL
                if old & _PAGE_UFFD_WP:
                    raw = pte_mkuffd_wp(raw)
                t.pte[k] = raw
                t.pm[k] = self.machine.pm_of(raw)
            self.pt.install_pte_table(pmdt, pi, t)
            return
        f, _ = self._folio_of(old)
        assert f is not None
        try:
            f.pmd_rmap.remove((pmdt, pi))
        except ValueError:
            pass
        write = old & _PAGE_RW
        young = old & _PAGE_ACCESSED
        dirty = old & _PAGE_DIRTY
        sd = old & _PAGE_SOFT_DIRTY
        uffd = old & _PAGE_UFFD_WP
        head_excl = f.excl[0]
        self.pt.install_pte_table(pmdt, pi, t)
        pte_dirty = dirty and self.profile.split_pmd_mkdirty
        if dirty and not pte_dirty:
            f.dirty = True  # SetPageDirty(): the PTEs stay clean (and keep only the PMD's soft-dirty)
        for k in range(PTRS):
            raw = mk_pte(f.pfn + k, prot)
            if write:
                raw |= _PAGE_RW
            if not young:
                raw &= ~_PAGE_ACCESSED
            if pte_dirty:
                raw = self._mkdirty(raw)
            if sd:
                raw |= _PAGE_SOFT_DIRTY
            if uffd:
                raw = pte_mkuffd_wp(raw)
            f.excl[k] = head_excl
            f.rmap[k].append((t, k))
            t.pte[k] = raw
        for k in range(PTRS):
            t.pm[k] = self.machine.pm_of(t.pte[k])

    def khugepaged_collapse(self, addr: int) -> None:
        """collapse_huge_page(): what khugepaged (or MADV_COLLAPSE) does to one 2 MiB block.

        Called when a driver saw the real kernel collapse the block; the
        eligibility checks are khugepaged's business, not replayed here.
        """
        h = addr & PMD_MASK
        v = self.find_vma(h)
        if v is None or not v.anonymous or h + PMD_SIZE > v.end:
            raise ValueError(f"no anonymous VMA covers the 2 MiB block at {h:#x}")
        pmdt = self.pt.pmd_table(h, alloc=True)
        assert pmdt is not None
        pi = (h >> 21) & 511
        t = pmdt.child[pi]
        new = self.machine.alloc_folio(HPAGE_NR, anon=True)
        new.excl = [True] * HPAGE_NR
        if isinstance(t, PteTable):
            for i in range(PTRS):
                raw = t.pte[i]
                if pte_present(raw):
                    f, idx = self._folio_of(raw)
                    if f is not None:
                        d = f.data[idx]
                        new.data[i] = dict(d) if d else None
                        self._unmap_folio_pte(t, i, raw)
                elif is_swap_pte(raw) and swp_type(raw) != SWP_PTE_MARKER:
                    self._swap_put(raw)
                self._set(t, i, 0)
            self.pt.free_pte_table(pmdt, pi)
        elif pmdt.ents[pi]:
            self._unmap_pmd(pmdt, pi)
        self._anon_vma_prepare(v)
        raw = self._mkdirty(mk_pte(new.pfn, self._huge_prot(v)))
        if v.flags & VM_WRITE:
            raw |= _PAGE_RW
        self._map_pmd(pmdt, pi, raw, new)

    # -- hugetlb ---------------------------------------------------------------------
    def _hugetlb_fault(self, v: EVma, addr: int, write: bool) -> None:
        h = addr & PMD_MASK
        pmdt = self.pt.pmd_table(h, alloc=True)
        assert pmdt is not None
        pi = (h >> 21) & 511
        raw = pmdt.ents[pi]
        prot = self._huge_prot(v)
        if raw and not pte_present(raw):
            bits = marker_bits(raw)
            if bits & PTE_MARKER_UFFD_WP and v.uffd_wp:
                self._hugetlb_new_page(v, pmdt, pi, h, write, prot, uffd_wp=True)
                return
            pmdt.ents[pi] = 0
            raw = 0
        if not raw:
            self._hugetlb_new_page(v, pmdt, pi, h, write, prot, uffd_wp=False)
            return
        if write and not raw & _PAGE_RW:
            if raw & _PAGE_UFFD_WP and v.uffd_wp:
                if not v.uffd_wp_async():
                    raise UffdBlocked(addr, "write to a uffd-wp hugetlb page in sync mode")
                raw &= ~_PAGE_UFFD_WP
            f, _ = self._folio_of(raw)
            if v.shared or (f is not None and f.anon and f.total == 1):
                raw = self._mkdirty(raw | _PAGE_ACCESSED)
                if v.flags & VM_WRITE:
                    raw |= _PAGE_RW
                pmdt.ents[pi] = raw
                return
            # COW of a private hugetlb page
            new = self._hugetlb_alloc(h, anon=True)
            if f is not None:
                new.data = list(f.data)
            self._unmap_pmd(pmdt, pi)
            nraw = self._mkdirty(mk_pte(new.pfn, prot))
            if v.flags & VM_WRITE:
                nraw |= _PAGE_RW
            self._map_pmd(pmdt, pi, nraw, new)

    def _hugetlb_alloc(self, addr: int, *, anon: bool, file: EmuFile | None = None, index: int = 0) -> Folio:
        if self.machine.hugetlb_free <= 0:
            raise BusError(addr, "no free hugetlb page")
        self.machine.hugetlb_free -= 1
        f = self.machine.alloc_folio(HPAGE_NR, anon=anon, file=file, index=index, hugetlb=True)
        return f

    def _hugetlb_new_page(self, v: EVma, pmdt: Table, pi: int, h: int, write: bool, prot: int,
                          uffd_wp: bool) -> None:
        if v.file is not None and v.shared:
            pgoff = v.file_pgoff(h)
            f = v.file.cache.get(pgoff)
            if f is None:
                f = self._hugetlb_alloc(h, anon=False, file=v.file, index=pgoff)
                v.file.cache[pgoff] = f
        else:
            self._anon_vma_prepare(v)
            f = self._hugetlb_alloc(h, anon=True)
        raw = mk_pte(f.pfn, prot)
        if write or (v.shared and v.flags & VM_WRITE and not self._wants_writenotify(v)):
            raw = self._mkdirty(raw)
        if write and v.flags & VM_WRITE:
            raw |= _PAGE_RW
        if uffd_wp:
            raw = pte_mkuffd_wp(raw)
        self._map_pmd(pmdt, pi, raw, f)
        self._rss_changed()

    # ------------------------------------------------------------------ zapping
    def _zap_range(self, v: EVma, start: int, end: int, *, keep_uffd_markers: bool, drop_guards: bool,
                   even_cows: bool = True, only_file_folios: bool = False) -> None:
        """zap_page_range(): present pages and swap entries in [start, end) of ``v`` go.

        ``keep_uffd_markers``: file-backed uffd-wp VMAs leave a marker where a
        write-protected page was (zap_install_uffd_wp_if_needed).
        """
        if v.hugetlb:
            self._zap_hugetlb(v, start, end, keep_uffd_markers, drop_guards)
            return
        wp_markers = keep_uffd_markers and v.uffd_wp and not v.anonymous
        addr = start
        while addr < end:
            nxt = min((addr & PMD_MASK) + PMD_SIZE, end)
            pmdt = self.pt.pmd_table(addr)
            if pmdt is None:
                addr = ((addr >> 30) + 1) << 30
                continue
            pi = (addr >> 21) & 511
            t = pmdt.child[pi]
            if t is None:
                raw = pmdt.ents[pi]
                if raw and is_leaf(raw):
                    if addr & ~PMD_MASK or nxt - addr < PMD_SIZE:
                        self._split_pmd(v, pmdt, pi)
                        continue
                    uffd = raw & _PAGE_UFFD_WP
                    pfn = (raw & PTE_PFN_MASK) >> PAGE_SHIFT
                    if only_file_folios:
                        addr = nxt
                        continue
                    if pfn != HUGE_ZERO_PFN:
                        self._unmap_pmd(pmdt, pi)
                        self._rss_changed()
                    pmdt.ents[pi] = 0
                    if uffd and wp_markers:
                        t2 = self.pt.pte_table(addr, alloc=True)
                        assert t2 is not None
                        for k in range(PTRS):
                            self._set(t2, k, make_marker(PTE_MARKER_UFFD_WP))
                addr = nxt
                continue
            assert isinstance(t, PteTable)
            i0 = (addr >> 12) & 511
            i1 = i0 + ((nxt - addr) >> 12)
            for i in range(i0, i1):
                raw = t.pte[i]
                if pte_none(raw):
                    continue
                if pte_present(raw):
                    f, _ = self._folio_of(raw)
                    if only_file_folios and (f is None or f.anon):
                        continue
                    self._unmap_folio_pte(t, i, raw)
                    new = 0
                    if wp_markers and raw & _PAGE_UFFD_WP:
                        new = make_marker(PTE_MARKER_UFFD_WP)
                    self._set(t, i, new)
                    continue
                if only_file_folios:
                    continue
                if swp_type(raw) == SWP_PTE_MARKER:
                    bits = marker_bits(raw)
                    if bits & PTE_MARKER_GUARD and not drop_guards:
                        continue
                    if bits & PTE_MARKER_UFFD_WP and not bits & PTE_MARKER_GUARD and not v.anonymous \
                            and keep_uffd_markers:
                        continue
                    self._set(t, i, 0)
                    continue
                self._swap_put(raw)
                new = 0
                if wp_markers and raw & _PAGE_SWP_UFFD_WP:
                    new = make_marker(PTE_MARKER_UFFD_WP)
                self._set(t, i, new)
            self._rss_changed()
            addr = nxt

    def _zap_hugetlb(self, v: EVma, start: int, end: int, keep_uffd_markers: bool, drop_guards: bool) -> None:
        del drop_guards
        for h in range(start & PMD_MASK, end, PMD_SIZE):
            pmdt = self.pt.pmd_table(h)
            if pmdt is None:
                continue
            pi = (h >> 21) & 511
            raw = pmdt.ents[pi]
            if not raw:
                continue
            if pte_present(raw):
                self._unmap_pmd(pmdt, pi)
                if keep_uffd_markers and raw & _PAGE_UFFD_WP and v.uffd_wp:
                    pmdt.ents[pi] = make_marker(PTE_MARKER_UFFD_WP)
            elif not keep_uffd_markers or not marker_bits(raw) & PTE_MARKER_UFFD_WP:
                pmdt.ents[pi] = 0

    # ------------------------------------------------------------------ mmap & co
    def _get_unmapped_area(self, length: int, hint: int, align: int = PAGE_SIZE) -> int:
        top = min(self.profile.mmap_base, self.task_size)
        if hint:
            hint = _page_align_up(hint)
            if hint + length <= self.task_size and not self._vmas_in(hint, hint + length):
                return hint
        # Top-down: the highest gap below mmap_base.
        end = top
        for v in reversed(self.vmas):
            if v.start >= top:
                continue
            cand = (min(end, top) - length) & ~(align - 1)
            if cand >= v.end:
                return cand
            end = min(end, v.start)
        cand = (end - length) & ~(align - 1)
        if cand >= 0x10000:
            return cand
        raise _err(errno.ENOMEM, "no room for the mapping")

    def mmap(self, addr: int, length: int, prot: int, flags: int, file: EmuFile | None = None,
             offset: int = 0, *, fault_around: Iterable[int] | None = None) -> int:
        """mmap(2).  ``file`` stands for the fd (None with MAP_ANONYMOUS).

        ``fault_around``: for MAP_POPULATE, see :meth:`read`.
        """
        self._check_alive()
        if length <= 0:
            raise _err(errno.EINVAL, "length 0")
        typ = flags & MAP_TYPE
        if typ not in (MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE):
            raise _err(errno.EINVAL, "neither MAP_SHARED nor MAP_PRIVATE")
        if typ == MAP_SHARED_VALIDATE and flags & ~MAP_KNOWN:
            raise _err(errno.EOPNOTSUPP, "unknown flag with MAP_SHARED_VALIDATE")
        if prot & ~PROT_MASK:
            raise _err(errno.EINVAL, "unknown PROT bits")
        if offset & ~PAGE_MASK:
            raise _err(errno.EINVAL, "offset not page aligned")
        anonymous = bool(flags & MAP_ANONYMOUS)
        hugetlb = bool(flags & MAP_HUGETLB)
        if not anonymous and file is None:
            raise _err(errno.EBADF, "no file and no MAP_ANONYMOUS")
        if not anonymous and file is not None and file.kind == "hugetlbfs":
            hugetlb = True
        page_size = PMD_SIZE if hugetlb else PAGE_SIZE
        length = (length + page_size - 1) & ~(page_size - 1)
        fixed = bool(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE))
        if fixed:
            if addr & (page_size - 1):
                raise _err(errno.EINVAL, "MAP_FIXED address not aligned")
            if addr + length > self.task_size or addr + length < addr:
                raise _err(errno.ENOMEM, "mapping beyond TASK_SIZE")
            if flags & MAP_FIXED_NOREPLACE and not flags & MAP_FIXED and self._vmas_in(addr, addr + length):
                raise _err(errno.EEXIST, "MAP_FIXED_NOREPLACE over an existing mapping")
        else:
            addr = self._get_unmapped_area(length, addr, PMD_SIZE if hugetlb else (
                PMD_SIZE if anonymous and length % PMD_SIZE == 0 and self.profile.thp != "never" else PAGE_SIZE))
        vm = VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
        if prot & PROT_READ:
            vm |= VM_READ
        if prot & PROT_WRITE:
            vm |= VM_WRITE
        if prot & PROT_EXEC:
            vm |= VM_EXEC
        if flags & MAP_GROWSDOWN:
            vm |= VM_GROWSDOWN
        if flags & MAP_NORESERVE:
            vm |= VM_NORESERVE
        if typ != MAP_PRIVATE:
            vm |= VM_SHARED | VM_MAYSHARE
        pgoff = offset >> PAGE_SHIFT
        backing: EmuFile | None = None
        if hugetlb:
            vm |= VM_HUGETLB | VM_DONTEXPAND
            need = length // PMD_SIZE
            if typ != MAP_PRIVATE or file is not None:
                backing = file or EmuFile("/anon_hugepage", length, kind="hugetlbfs")
            if self.machine.hugetlb_free < need and not flags & MAP_NORESERVE:
                raise _err(errno.ENOMEM, "not enough hugetlb pages reserved")
        elif anonymous:
            if typ != MAP_PRIVATE:
                backing = EmuFile("/dev/zero", length, kind="shmem")
                pgoff = 0
            else:
                pgoff = addr >> PAGE_SHIFT
        else:
            backing = file
        if (vm & (VM_NORESERVE | VM_SHARED | VM_WRITE)) == VM_WRITE and not hugetlb:
            vm |= VM_ACCOUNT
        if self.soft_dirty:
            vm |= VM_SOFTDIRTY
        # MAP_FIXED: whatever was there goes first (munmap semantics).
        self._do_munmap(addr, addr + length)
        self._mmap_region(addr, length, vm, backing, pgoff)
        if flags & MAP_POPULATE and not flags & MAP_NORESERVE:
            self._populate(addr, addr + length, write=(vm & (VM_WRITE | VM_SHARED)) == VM_WRITE,
                           ignore_errors=True, fault_around=fault_around)
        return addr

    def _mmap_region(self, addr: int, length: int, vm: int, file: EmuFile | None, pgoff: int) -> EVma:
        end = addr + length
        prev, nxt = self._prev_next(addr, end)
        left = prev is not None and prev.end == addr and attrs_mergeable(vm, file, None, "", prev) \
            and prev.pgoff + prev.pages == pgoff \
            and anon_mergeable(prev, None, None, fixed=self.profile.anon_merge_fixed)
        right = nxt is not None and nxt.start == end and attrs_mergeable(vm, file, None, "", nxt) \
            and nxt.pgoff == pgoff + (length >> PAGE_SHIFT) \
            and anon_mergeable(nxt, None, None, fixed=self.profile.anon_merge_fixed)
        if left and right:
            assert prev is not None and nxt is not None
            if not anon_mergeable(prev, nxt.anon_vma, nxt, fixed=self.profile.anon_merge_fixed, pair=True):
                right = False
        if left and right:
            assert prev is not None and nxt is not None
            prev.end = nxt.end
            prev.anon_vma = prev.anon_vma or nxt.anon_vma
            prev.flags = self._sd_merge(prev.flags, nxt.flags)
            self._remove_vma(nxt)
            v = prev
        elif left:
            assert prev is not None
            prev.end = end
            v = prev
        elif right:
            assert nxt is not None
            nxt.start = addr
            nxt.pgoff = pgoff
            self._last_vma = None
            v = nxt
        else:
            v = EVma(addr, end, vm, file=file, pgoff=pgoff)
            self._insert_vma(v)
        if self.soft_dirty:
            v.flags |= VM_SOFTDIRTY  # __mmap_complete()
        return v

    def _do_munmap(self, start: int, end: int) -> None:
        """Unmap [start, end): split, zap, drop VMAs, free page tables."""
        vmas = self._vmas_in(start, end)
        if not vmas:
            return
        for v in vmas:
            if v.hugetlb and ((start > v.start and start & (PMD_SIZE - 1)) or (end < v.end and end & (PMD_SIZE - 1))):
                raise _err(errno.EINVAL, "hugetlb range not huge-page aligned")
        if vmas[0].start < start:
            self._split_vma(vmas[0], start)
        vmas = self._vmas_in(start, end)
        if vmas[-1].end > end:
            self._split_vma(vmas[-1], end)
        vmas = self._vmas_in(start, end)
        for v in vmas:
            if v.uffd is not None:
                pass  # unmapping needs no uffd event without EVENT_UNMAP
            self._zap_range(v, v.start, v.end, keep_uffd_markers=False, drop_guards=True)
        first, last = vmas[0].start, vmas[-1].end
        for v in vmas:
            self._remove_vma(v)
        prev, nxt = self._prev_next(first, last)
        floor = prev.end if prev is not None else 0
        ceiling = nxt.start if nxt is not None else 1 << 64
        for v in vmas:
            self.pt.free_range(v.start, v.end, floor, ceiling)
        self._rss_changed()

    def munmap(self, addr: int, length: int) -> None:
        self._check_alive()
        if addr & ~PAGE_MASK or length <= 0:
            raise _err(errno.EINVAL, "munmap needs an aligned address and a nonzero length")
        length = _page_align_up(length)
        if addr + length > self.task_size:
            raise _err(errno.EINVAL, "range beyond TASK_SIZE")
        self._do_munmap(addr, addr + length)

    # -- mprotect -------------------------------------------------------------------
    def mprotect(self, addr: int, length: int, prot: int) -> None:
        self._check_alive()
        if addr & ~PAGE_MASK:
            raise _err(errno.EINVAL, "address not aligned")
        if prot & ~(PROT_MASK | 0x01000000 | 0x02000000):
            raise _err(errno.EINVAL, "unknown PROT bits")
        length = _page_align_up(length)
        end = addr + length
        if end < addr:
            raise _err(errno.ENOMEM, "range wraps")
        if end == addr:
            return
        vmas = self._vmas_in(addr, end)
        if not vmas or vmas[0].start > addr:
            raise _err(errno.ENOMEM, "range not mapped")
        nstart = addr
        for v in vmas:
            if v.start > nstart:
                raise _err(errno.ENOMEM, "hole in the range")
            newflags = v.flags & ~(VM_READ | VM_WRITE | VM_EXEC)
            if prot & PROT_READ:
                newflags |= VM_READ
            if prot & PROT_WRITE:
                newflags |= VM_WRITE
            if prot & PROT_EXEC:
                newflags |= VM_EXEC
            if (newflags & ~(newflags >> 4)) & (VM_READ | VM_WRITE | VM_EXEC):
                raise _err(errno.EACCES, "protection not allowed by the mapping")
            if newflags & VM_WRITE and not v.flags & (VM_ACCOUNT | VM_WRITE | VM_HUGETLB | VM_SHARED | VM_NORESERVE):
                newflags |= VM_ACCOUNT
            elif (not newflags & VM_WRITE and v.flags & VM_ACCOUNT and v.anonymous and v.anon_vma is None
                  and self.profile.mprotect_unaccount):
                newflags &= ~VM_ACCOUNT  # an unfaulted anon VMA made read-only is uncharged (6.2+)
            tend = min(v.end, end)
            self._mprotect_fixup(v, max(v.start, nstart), tend, newflags)
            nstart = tend
            if nstart >= end:
                break
        if nstart < end:
            raise _err(errno.ENOMEM, "range not fully mapped")

    def _mprotect_fixup(self, v: EVma, start: int, end: int, newflags: int) -> None:
        if newflags == v.flags:
            return
        old_flags = v.flags
        if v.hugetlb and (start & (PMD_SIZE - 1) or end & (PMD_SIZE - 1)):
            raise _err(errno.EINVAL, "hugetlb range not huge-page aligned")
        v = self._modify(v, start, end, newflags, v.uffd)
        try_writable = bool(newflags & VM_WRITE) and (
            self._wants_writenotify(v) if newflags & VM_SHARED else True)
        del old_flags
        self._change_protection(v, start, end, try_writable=try_writable)

    def _change_protection(self, v: EVma, start: int, end: int, *, try_writable: bool = False,
                           uffd_wp: bool = False, uffd_resolve: bool = False) -> None:
        """change_protection(): new prot on present PTEs; uffd-wp arm/resolve on everything."""
        prot = self._vm_page_prot(v)
        if v.hugetlb:
            self._hugetlb_change_protection(v, start, end, prot, uffd_wp, uffd_resolve)
            return
        markers = uffd_wp and v.uffd_wp_use_markers()
        addr = start
        while addr < end:
            nxt = min((addr & PMD_MASK) + PMD_SIZE, end)
            pmdt = self.pt.pmd_table(addr, alloc=markers)
            if pmdt is None:
                addr = nxt
                continue
            pi = (addr >> 21) & 511
            t = pmdt.child[pi]
            if t is None:
                raw = pmdt.ents[pi]
                if raw and is_leaf(raw):
                    if addr & ~PMD_MASK or nxt - addr < PMD_SIZE:
                        self._split_pmd(v, pmdt, pi)
                        continue
                    new = x86.pte_modify(raw, prot | _PAGE_PSE) if pte_present(raw) else raw
                    if not prot & _PAGE_PRESENT:
                        new &= ~_PAGE_PRESENT
                    if uffd_wp:
                        new = pte_mkuffd_wp(new)
                    elif uffd_resolve:
                        new &= ~_PAGE_UFFD_WP
                    if try_writable and not new & _PAGE_RW and self._can_change_pmd_writable(v, new):
                        new |= _PAGE_RW
                    pmdt.ents[pi] = new
                    addr = nxt
                    continue
                if not markers:
                    addr = nxt
                    continue
                t = self.pt.pte_table(addr, alloc=True)
            assert isinstance(t, PteTable)
            i0 = (addr >> 12) & 511
            i1 = i0 + ((nxt - addr) >> 12)
            for i in range(i0, i1):
                raw = t.pte[i]
                if pte_present(raw):
                    new = pte_modify(raw, prot)
                    if uffd_wp:
                        new = pte_mkuffd_wp(new)
                    elif uffd_resolve:
                        new &= ~_PAGE_UFFD_WP
                    if try_writable and not new & _PAGE_RW and self._can_change_pte_writable(v, new):
                        new |= _PAGE_RW
                    if new != raw:
                        self._set(t, i, new)
                elif pte_none(raw):
                    if markers:
                        self._set(t, i, make_marker(PTE_MARKER_UFFD_WP))
                else:
                    bits = marker_bits(raw)
                    if bits:
                        if uffd_resolve and bits == PTE_MARKER_UFFD_WP:
                            self._set(t, i, 0)
                        elif uffd_wp and not bits & PTE_MARKER_UFFD_WP and not raw & _PAGE_SWP_UFFD_WP:
                            # change_pte_range leaves other markers (guard) alone.
                            pass
                        continue
                    if uffd_wp:
                        self._set(t, i, raw | _PAGE_SWP_UFFD_WP)
                    elif uffd_resolve:
                        self._set(t, i, raw & ~_PAGE_SWP_UFFD_WP)
            addr = nxt

    def _can_change_pte_writable(self, v: EVma, raw: int) -> bool:
        if not v.flags & VM_WRITE or not raw & _PAGE_PRESENT:
            return False
        if self._soft_dirty_tracking(v) and not raw & _PAGE_SOFT_DIRTY:
            return False
        if v.uffd_wp and raw & _PAGE_UFFD_WP:
            return False
        if not v.shared:
            f, idx = self._folio_of(raw)
            return f is not None and f.anon and f.excl[idx]
        return bool(raw & _PAGE_DIRTY)

    def _can_change_pmd_writable(self, v: EVma, raw: int) -> bool:
        if not v.flags & VM_WRITE or not raw & _PAGE_PRESENT:
            return False
        if self._soft_dirty_tracking(v) and not raw & _PAGE_SOFT_DIRTY:
            return False
        if v.uffd_wp and raw & _PAGE_UFFD_WP:
            return False
        f, _ = self._folio_of(raw)
        if not v.shared:
            return f is not None and f.anon and f.excl[0]
        return bool(raw & _PAGE_DIRTY)

    def _hugetlb_change_protection(self, v: EVma, start: int, end: int, prot: int, uffd_wp: bool,
                                   uffd_resolve: bool) -> None:
        for h in range(start, end, PMD_SIZE):
            pmdt = self.pt.pmd_table(h, alloc=uffd_wp)
            if pmdt is None:
                continue
            pi = (h >> 21) & 511
            raw = pmdt.ents[pi]
            if pte_present(raw):
                new = pte_modify(raw, prot | _PAGE_PSE)
                if uffd_wp:
                    new = pte_mkuffd_wp(new)
                elif uffd_resolve:
                    new &= ~_PAGE_UFFD_WP
                pmdt.ents[pi] = new
            elif not raw:
                if uffd_wp and v.uffd_wp_use_markers():
                    pmdt.ents[pi] = make_marker(PTE_MARKER_UFFD_WP)
            elif uffd_resolve and marker_bits(raw) == PTE_MARKER_UFFD_WP:
                pmdt.ents[pi] = 0

    # -- madvise --------------------------------------------------------------------
    def madvise(self, addr: int, length: int, advice: int, *, reclaim: Iterable[int] | None = None,
                fault_around: Iterable[int] | None = None) -> None:
        """madvise(2).

        ``reclaim``: for MADV_PAGEOUT, the pages the real kernel managed to
        reclaim (LRU isolation may fail there); default: every eligible page.
        ``fault_around``: for MADV_POPULATE_READ, see :meth:`read`.
        """
        self._check_alive()
        if addr & ~PAGE_MASK:
            raise _err(errno.EINVAL, "address not aligned")
        known = {
            MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_DONTNEED, MADV_FREE, MADV_REMOVE,
            MADV_DONTFORK, MADV_DOFORK, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_DONTDUMP, MADV_DODUMP,
            MADV_WIPEONFORK, MADV_KEEPONFORK, MADV_COLD, MADV_PAGEOUT, MADV_POPULATE_READ, MADV_POPULATE_WRITE,
            MADV_DONTNEED_LOCKED,
        }
        if self.profile.guard_regions:
            known |= {MADV_GUARD_INSTALL, MADV_GUARD_REMOVE}
        if advice not in known:
            raise _err(errno.EINVAL, f"unknown advice {advice}")
        length = _page_align_up(length)
        end = addr + length
        if end < addr:
            raise _err(errno.EINVAL, "range wraps")
        if end == addr:
            return
        if advice in (MADV_POPULATE_READ, MADV_POPULATE_WRITE):
            self._madvise_populate(addr, end, advice == MADV_POPULATE_WRITE, fault_around)
            return
        unmapped = False
        cur = addr
        while cur < end:
            v = self.find_vma(cur)
            if v is None:
                unmapped = True
                nxt = self._next_vma_start(cur, end)
                if nxt is None:
                    break
                cur = nxt
                continue
            s, e = cur, min(v.end, end)
            cur = e
            self._madvise_vma(v, s, e, advice, reclaim)
        if unmapped:
            raise _err(errno.ENOMEM, "part of the range is not mapped")

    def _madvise_vma(self, v: EVma, s: int, e: int, advice: int, reclaim: Iterable[int] | None) -> None:
        if advice in (MADV_DONTNEED, MADV_DONTNEED_LOCKED):
            if v.flags & (VM_PFNMAP | (VM_LOCKED if advice == MADV_DONTNEED else 0)):
                raise _err(errno.EINVAL, "MADV_DONTNEED on a locked or PFN mapping")
            if v.hugetlb:
                if s & (PMD_SIZE - 1):
                    raise _err(errno.EINVAL, "hugetlb start not aligned")
                e = e & PMD_MASK
                if e <= s:
                    return
            self._zap_range(v, s, e, keep_uffd_markers=True, drop_guards=False)
            if self.profile.pt_reclaim and not v.hugetlb:
                self._reclaim_pt(s, e)
        elif advice == MADV_FREE:
            if not v.anonymous or v.flags & VM_LOCKED:
                raise _err(errno.EINVAL, "MADV_FREE needs a private anonymous mapping")
            self._madvise_walk(v, s, e, "free")
        elif advice == MADV_REMOVE:
            if v.flags & VM_LOCKED:
                raise _err(errno.EINVAL, "MADV_REMOVE on a locked mapping")
            if v.file is None:
                raise _err(errno.EINVAL, "MADV_REMOVE needs a file or shmem mapping")
            if not (v.flags & VM_SHARED and v.flags & VM_MAYWRITE):
                raise _err(errno.EACCES, "MADV_REMOVE needs a shared writable mapping")
            self._punch_hole(v.file, v.file_pgoff(s), v.file_pgoff(e))
        elif advice in (MADV_HUGEPAGE, MADV_NOHUGEPAGE):
            if v.flags & (VM_SPECIAL_MASK := (VM_IO | VM_PFNMAP | VM_MIXEDMAP | VM_DONTEXPAND)) and False:
                del VM_SPECIAL_MASK
            new = v.flags
            if advice == MADV_HUGEPAGE:
                new = (new & ~VM_NOHUGEPAGE) | VM_HUGEPAGE
            else:
                new = (new & ~VM_HUGEPAGE) | VM_NOHUGEPAGE
            if new != v.flags:
                self._modify(v, s, e, new, v.uffd)
        elif advice in (MADV_DONTFORK, MADV_DOFORK, MADV_WIPEONFORK, MADV_KEEPONFORK, MADV_DONTDUMP, MADV_DODUMP):
            bit = {MADV_DONTFORK: VM_DONTCOPY, MADV_DOFORK: VM_DONTCOPY, MADV_WIPEONFORK: VM_WIPEONFORK,
                   MADV_KEEPONFORK: VM_WIPEONFORK, MADV_DONTDUMP: VM_DONTDUMP, MADV_DODUMP: VM_DONTDUMP}[advice]
            if advice == MADV_WIPEONFORK and (v.file is not None or v.shared):
                raise _err(errno.EINVAL, "MADV_WIPEONFORK needs private anonymous memory")
            new = v.flags | bit if advice in (MADV_DONTFORK, MADV_WIPEONFORK, MADV_DONTDUMP) else v.flags & ~bit
            if new != v.flags:
                self._modify(v, s, e, new, v.uffd)
        elif advice in (MADV_PAGEOUT, MADV_COLD):
            if v.flags & (VM_LOCKED | VM_PFNMAP) or v.hugetlb:
                raise _err(errno.EINVAL, "MADV_PAGEOUT/COLD on a locked, PFN or hugetlb mapping")
            if advice == MADV_COLD:
                self._madvise_walk(v, s, e, "cold")
            else:
                self._madvise_walk(v, s, e, "pageout",
                                   None if reclaim is None else {a & PAGE_MASK for a in reclaim})
        elif advice == MADV_GUARD_INSTALL:
            if v.flags & (VM_PFNMAP | VM_IO | VM_MIXEDMAP | VM_HUGETLB | VM_LOCKED):
                raise _err(errno.EINVAL, "guard regions need an ordinary mapping")
            if v.file is not None and not self.profile.guard_bit:
                raise _err(errno.EINVAL, "file-backed guard regions need Linux 6.15+")
            self._guard_install(v, s, e)
        elif advice == MADV_GUARD_REMOVE:
            if v.flags & (VM_PFNMAP | VM_IO | VM_MIXEDMAP | VM_HUGETLB | VM_LOCKED):
                raise _err(errno.EINVAL, "guard regions need an ordinary mapping")
            self._guard_remove(v, s, e)
        # NORMAL/RANDOM/SEQUENTIAL/WILLNEED: nothing visible in pagemap.

    def _reclaim_pt(self, start: int, end: int) -> None:
        """CONFIG_PT_RECLAIM: a PTE table that MADV_DONTNEED zapped whole and left all-none is freed."""
        first = (start + PMD_SIZE - 1) & PMD_MASK
        for base in range(first, end - PMD_SIZE + 1, PMD_SIZE):
            pmdt = self.pt.pmd_table(base)
            if pmdt is None:
                continue
            pi = (base >> 21) & 511
            t = pmdt.child[pi]
            if isinstance(t, PteTable) and t.empty():
                self.pt.free_pte_table(pmdt, pi)

    def _maybe_mapped_shared(self, f: Folio) -> bool:
        """folio_maybe_mapped_shared(): some page of it is mapped more than once."""
        if not f.large:
            return f.mapcount[0] > 1
        return any(c > 1 for c in f.mapcount)

    def _pte_batch(self, t: PteTable, i: int, end_i: int, f: Folio, idx: int) -> int:
        """madvise_folio_pte_batch(): consecutive PTEs mapping consecutive pages of ``f``."""
        n = 0
        while i + n < end_i and idx + n < f.nr:
            raw = t.pte[i + n]
            if not raw & 0x101 or raw & _PAGE_SPECIAL or (raw & PTE_PFN_MASK) >> PAGE_SHIFT != f.pfn + idx + n:
                break
            n += 1
        return n

    def _madvise_walk(self, v: EVma, s: int, e: int, mode: str, only: set[int] | None = None) -> None:
        """madvise_free_pte_range() / madvise_cold_or_pageout_pte_range().

        ``mode``: "free", "cold" or "pageout".  A THP covered only in part is
        split (split_folio(): PMD and folio), as the kernel does.
        """
        addr = s
        while addr < e:
            nxt = min((addr & PMD_MASK) + PMD_SIZE, e)
            pmdt = self.pt.pmd_table(addr)
            if pmdt is None:
                addr = nxt
                continue
            pi = (addr >> 21) & 511
            t = pmdt.child[pi]
            if t is None:
                raw = pmdt.ents[pi]
                if raw and is_leaf(raw):
                    f, _ = self._folio_of(raw)
                    if f is None or not f.anon or self._maybe_mapped_shared(f):
                        addr = nxt
                        continue  # the huge zero page, or mapped by someone else too
                    if addr & ~PMD_MASK or nxt - addr < PMD_SIZE:
                        self._split_folio(f)
                        continue  # handle the pieces at PTE level
                    if mode == "free":
                        pmdt.ents[pi] = raw & ~(_PAGE_DIRTY | _PAGE_ACCESSED)
                        f.lazyfree = True
                        f.dirty = False
                    elif mode == "pageout":
                        self._pageout_pmd(v, pmdt, pi, raw, f, only)
                        continue
                addr = nxt
                continue
            assert isinstance(t, PteTable)
            i = (addr >> 12) & 511
            end_i = i + ((nxt - addr) >> 12)
            while i < end_i:
                raw = t.pte[i]
                step = 1
                if pte_present(raw):
                    f, idx = self._folio_of(raw)
                    if f is not None and f.large:
                        n = self._pte_batch(t, i, end_i, f, idx)
                        if n < f.nr:
                            if self._maybe_mapped_shared(f) or (mode == "free" and not f.anon):
                                i += max(n, 1)
                                continue
                            self._split_folio(f)
                            continue  # this PTE again, now mapping a small folio
                        step = n
                    if f is not None:
                        for k in range(step):
                            self._madvise_page(v, t, i + k, f if not f.large else f, idx + k, mode, only)
                elif mode == "free" and is_swap_pte(raw) and swp_type(raw) != SWP_PTE_MARKER:
                    self._swap_put(raw)
                    self._set(t, i, 0)
                i += step
            addr = nxt

    def _madvise_page(self, v: EVma, t: PteTable, i: int, f: Folio, idx: int, mode: str,
                      only: set[int] | None) -> None:
        raw = t.pte[i]
        if mode == "free":
            if not f.anon or self._maybe_mapped_shared(f):
                return
            if f.swap is not None:
                self._free_swapcache(f)
            f.lazyfree = True
            f.dirty = False
            self._set(t, i, raw & ~(_PAGE_DIRTY | _PAGE_ACCESSED))
        elif mode == "pageout":
            if only is not None and t.base + i * PAGE_SIZE not in only:
                return
            if f.mapcount[idx] != 1 or (f.large and self._maybe_mapped_shared(f)):
                return
            self._reclaim_page(v, t, i, raw, f, idx)

    def _split_folio(self, f: Folio) -> None:
        """split_folio(): every PMD mapping becomes PTEs, the folio becomes small folios, and
        (6.12+) an anonymous subpage that only holds zeros is remapped to the shared zero page."""
        # The kernel splits a PMD mapping here in its "freeze" form: migration entries whose
        # soft-dirty is the PMD's own bit (not the mkdirty of a plain split).  A subpage remapped
        # to the zero page takes its soft-dirty from that entry (try_to_map_unused_to_zeropage);
        # the others come back dirty, hence soft-dirty, as the plain split leaves them.
        pmd_soft_dirty: dict[tuple[int, int], int] = {}
        for pmdt, pi in list(f.pmd_rmap):
            assert isinstance(pmdt, Table)
            owner = pmdt.owner
            assert isinstance(owner, EmulatedProcess)
            vv = owner.find_vma(pmdt.base + (pi << 21))
            assert vv is not None
            pmd_soft_dirty[(id(owner), pmdt.base + (pi << 21))] = pmdt.ents[pi] & _PAGE_SOFT_DIRTY
            owner._split_pmd(vv, pmdt, pi)
        machine = self.machine
        pieces = []
        for k in range(f.nr):
            nf = Folio(f.pfn + k, 1, anon=f.anon, file=f.file, index=f.index + k)
            nf.mapcount[0] = f.mapcount[k]
            nf.total = f.mapcount[k]
            nf.rmap[0] = f.rmap[k]
            nf.excl[0] = f.excl[k]
            nf.data[0] = f.data[k]
            nf.lazyfree, nf.dirty = f.lazyfree, f.dirty
            machine.pfn_map[f.pfn + k] = nf
            pieces.append(nf)
        f.freed = True
        for nf in pieces:
            if nf.total == 0:
                machine.free_folio(nf)
        if not f.anon or not self.profile.split_zero_remap:
            return
        for nf in pieces:
            d = nf.data[0]
            if nf.freed or (d and any(d.values())):
                continue
            for t, i in list(nf.rmap[0]):
                assert isinstance(t, PteTable)
                owner = t.owner
                assert isinstance(owner, EmulatedProcess)
                vv = owner.find_vma(t.base + i * PAGE_SIZE)
                if vv is None or vv.flags & VM_LOCKED:
                    continue
                old = t.pte[i]
                new = mk_pte(ZERO_PFN, owner._vm_page_prot(vv)) | _PAGE_SPECIAL
                new |= old & _PAGE_UFFD_WP
                new |= pmd_soft_dirty.get((id(owner), t.base), old & _PAGE_SOFT_DIRTY)
                if new & _PAGE_UFFD_WP:
                    new &= ~_PAGE_RW
                owner._unmap_folio_pte(t, i, old)
                owner._set(t, i, new)

    def _punch_hole(self, file: EmuFile, pg_start: int, pg_end: int) -> None:
        """fallocate(PUNCH_HOLE): unmap the file pages from every mapping, drop them."""
        for pgoff in range(pg_start, pg_end):
            f = file.cache.pop(pgoff, None)
            file.disk.pop(pgoff, None)
            slot = file.swapped.pop(pgoff, None)
            if slot is not None and self.machine.swap is not None:
                self.machine.swap.put(slot)
            if f is None:
                continue
            for t, i in list(f.rmap[0]):
                assert isinstance(t, PteTable)
                owner = t.owner
                assert isinstance(owner, EmulatedProcess)
                a = t.base + i * PAGE_SIZE
                vv = owner.find_vma(a)
                raw = t.pte[i]
                owner._unmap_folio_pte(t, i, raw)
                new = 0
                if vv is not None and vv.uffd_wp and raw & _PAGE_UFFD_WP:
                    new = make_marker(PTE_MARKER_UFFD_WP)
                owner._set(t, i, new)
            self.machine.free_folio(f)

    def _guard_install(self, v: EVma, s: int, e: int) -> None:
        self._anon_vma_prepare(v)
        self._zap_range(v, s, e, keep_uffd_markers=False, drop_guards=False)
        for a in range(s, e, PAGE_SIZE):
            t = self.pt.pte_table(a, alloc=True)
            assert t is not None
            i = (a >> 12) & 511
            raw = t.pte[i]
            if pte_none(raw) or (is_swap_pte(raw) and marker_bits(raw) & PTE_MARKER_UFFD_WP
                                 and not marker_bits(raw) & PTE_MARKER_GUARD):
                self._set(t, i, make_marker(PTE_MARKER_GUARD))

    def _guard_remove(self, v: EVma, s: int, e: int) -> None:
        del v
        for a in range(s, e, PAGE_SIZE):
            t = self.pt.pte_table(a)
            if t is None:
                continue
            i = (a >> 12) & 511
            raw = t.pte[i]
            if is_swap_pte(raw) and marker_bits(raw) & PTE_MARKER_GUARD:
                self._set(t, i, 0)

    def _next_vma_start(self, addr: int, end: int) -> int | None:
        """madvise_walk_vmas() at a hole: where the next VMA before ``end`` starts (None: none)."""
        i = self._vma_index(addr)
        if i >= len(self.vmas) or self.vmas[i].start >= end:
            return None
        return self.vmas[i].start

    def _madvise_populate(self, start: int, end: int, write: bool, fault_around: Iterable[int] | None) -> None:
        cur = start
        unmapped = False
        while cur < end:
            v = self.find_vma(cur)
            if v is None:
                if not self.profile.populate_skips_holes:
                    raise _err(errno.ENOMEM, "range not mapped")
                # < 6.10: madvise_walk_vmas() skips the hole and reports it at the end.
                unmapped = True
                nxt = self._next_vma_start(cur, end)
                if nxt is None:
                    break
                cur = nxt
                continue
            # check_vma_flags() failing means "incompatible mapping": EINVAL.
            if v.flags & (VM_PFNMAP | VM_IO):
                raise _err(errno.EINVAL, "MADV_POPULATE on a PFN mapping")
            if write and not v.flags & VM_WRITE or not write and not v.flags & VM_READ:
                raise _err(errno.EINVAL, "MADV_POPULATE without the access permission")
            e = min(v.end, end)
            try:
                self._populate(cur, e, write, fault_around=fault_around)
            except SegmentationFault:
                raise _err(errno.EFAULT, "MADV_POPULATE hit a guard region") from None
            except BusError:
                raise _err(errno.EFAULT, "MADV_POPULATE hit SIGBUS") from None
            cur = e
        if unmapped:
            raise _err(errno.ENOMEM, "part of the range is not mapped")

    def _populate(self, start: int, end: int, write: bool, ignore_errors: bool = False,
                  fault_around: Iterable[int] | None = None) -> None:
        """GUP-style faulting: a present page that permits the access is left alone."""
        hint = None if fault_around is None else set(fault_around)
        for a in range(start, end, PAGE_SIZE):
            try:
                self._access_gup(a, write, hint)
            except (SegmentationFault, BusError):
                if not ignore_errors:
                    raise

    def _mapped_for(self, addr: int, write: bool) -> bool:
        """Whether a present entry (PTE or PMD leaf) already allows this access."""
        t = self.pt.pte_table(addr)
        if t is not None:
            raw = t.pte[(addr >> 12) & 511]
            return bool(raw & _PAGE_PRESENT and (not write or raw & _PAGE_RW))
        pmdt = self.pt.pmd_table(addr)
        if pmdt is None:
            return False
        raw = pmdt.ents[(addr >> 21) & 511]
        return bool(is_leaf(raw) and raw & _PAGE_PRESENT and (not write or raw & _PAGE_RW))

    def _access_gup(self, addr: int, write: bool, fault_around: Iterable[int] | None = None) -> None:
        # GUP faults like an access but never sets the hardware A/D bits by itself.
        if self._mapped_for(addr, write):
            return
        v = self._fault_vma(None, addr, write)
        for _ in range(_FAULT_RETRIES):
            self._handle_mm_fault(v, addr, write, fault_around)
            if self._mapped_for(addr, write):
                return
        raise RuntimeError(f"emulator bug: populate at {addr:#x} did not resolve")

    # -- reclaim (MADV_PAGEOUT) --------------------------------------------------------
    def _pageout_pmd(self, v: EVma, pmdt: Table, pi: int, raw: int, f: Folio, only: set[int] | None) -> None:
        """Reclaim of a whole PMD-mapped THP: a clean lazyfree one is discarded, else it is
        split and swapped page by page (nothing happens without swap)."""
        base = pmdt.base + (pi << 21)
        pages = set(range(base, base + PMD_SIZE, PAGE_SIZE))
        wanted = pages if only is None else pages & only
        if not wanted:
            return
        if wanted == pages and f.lazyfree and not raw & _PAGE_DIRTY and not f.dirty:
            self._unmap_pmd(pmdt, pi)
            self._rss_changed()
            return
        if self.machine.swap is None:
            return
        self._split_folio(f)

    def _reclaim_page(self, v: EVma, t: PteTable, i: int, raw: int, f: Folio, idx: int) -> None:
        swap = self.machine.swap
        if f.anon:
            if f.lazyfree and not raw & _PAGE_DIRTY and not f.dirty and not f.large:
                self._unmap_folio_pte(t, i, raw)
                self._set(t, i, 0)
                self._rss_changed()
                return
            if swap is None:
                return
            slot = f.swap if f.swap is not None and not f.large else swap.alloc()
            swap.data[slot] = [f.data[idx]]
            swap.count[slot] = swap.count.get(slot, 0) + 1
            new = swp_entry(0, slot)
            if f.excl[idx]:
                new |= _PAGE_SWP_EXCLUSIVE
            if raw & _PAGE_SOFT_DIRTY:
                new |= _PAGE_SWP_SOFT_DIRTY
            if raw & _PAGE_UFFD_WP:
                new |= _PAGE_SWP_UFFD_WP
            if f.swap is not None:
                swap.cache.pop(f.swap, None)
                f.swap = None
            self._unmap_folio_pte(t, i, raw)
            self._set(t, i, new)
            self._rss_changed()
            return
        # Page cache: try_to_unmap() comes first, whatever happens to the folio next.
        file = f.file
        assert file is not None
        new = make_marker(PTE_MARKER_UFFD_WP) if v.uffd_wp and raw & _PAGE_UFFD_WP else 0
        self._unmap_folio_pte(t, i, raw)
        self._set(t, i, new)
        self._rss_changed()
        if f.total:
            return
        if file.shmem:
            if not f.dirty:
                file.cache.pop(f.index, None)  # never written since it was a hole: dropped
                self.machine.free_folio(f)
            elif swap is not None:
                file.cache.pop(f.index, None)
                slot = swap.alloc()
                swap.data[slot] = [f.data[0]]
                swap.count[slot] = 1
                file.swapped[f.index] = slot
                self.machine.free_folio(f)
            # else: no swap; the dirty page stays in the page cache, unmapped
            return
        if f.dirty:
            # Writeback starts; the folio stays cached (clean) until a later reclaim.
            if f.data[0]:
                file.disk[f.index] = dict(f.data[0])
            f.dirty = False
            return
        file.cache.pop(f.index, None)
        self.machine.free_folio(f)

    # -- brk ------------------------------------------------------------------------------
    def brk(self, new: int) -> int:
        """brk(2): returns the new break (the old one on failure, like the syscall)."""
        self._check_alive()
        if not self.start_brk:
            raise _err(errno.ENOMEM, "this emulated process has no heap (use layout='exec')")
        if new < self.start_brk:
            return self.brk_addr
        old_end = _page_align_up(self.brk_addr)
        new_end = _page_align_up(new)
        if new_end < old_end:
            self._do_munmap(new_end, old_end)
        elif new_end > old_end:
            if self._vmas_in(old_end, new_end + PAGE_SIZE):
                return self.brk_addr
            flags = VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC | VM_ACCOUNT
            heap = self.find_vma(old_end - PAGE_SIZE) if old_end > self.start_brk else None
            if heap is not None and heap.end == old_end and not ((heap.flags ^ flags) & ~VM_SOFTDIRTY) \
                    and heap.file is None and heap.uffd is None:
                heap.end = new_end
                self._last_vma = None
            else:
                heap = EVma(old_end, new_end, flags, pgoff=old_end >> PAGE_SHIFT)
                self._insert_vma(heap)
            if self.soft_dirty:
                heap.flags |= VM_SOFTDIRTY
        self.brk_addr = new
        return new

    # -- mremap -------------------------------------------------------------------------------
    def mremap(self, old: int, old_len: int, new_len: int, flags: int = 0, new_addr: int = 0) -> int:
        """mremap(2): shrink, grow in place, or move (MREMAP_MAYMOVE/FIXED/DONTUNMAP)."""
        self._check_alive()
        if flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP):
            raise _err(errno.EINVAL, "unknown mremap flags")
        if old & ~PAGE_MASK:
            raise _err(errno.EINVAL, "old address not aligned")
        old_len = _page_align_up(old_len)
        new_len = _page_align_up(new_len)
        if new_len == 0 or new_len > self.task_size:
            raise _err(errno.EINVAL, "bad new length")
        moving = bool(flags & (MREMAP_FIXED | MREMAP_DONTUNMAP))
        new_flow = self.profile.mremap_multi_vma  # the 6.16/6.17 rework checks the target first
        if moving and not flags & MREMAP_MAYMOVE:
            raise _err(errno.EINVAL, "MREMAP_FIXED/DONTUNMAP without MREMAP_MAYMOVE")
        if flags & MREMAP_DONTUNMAP and old_len != new_len:
            raise _err(errno.EINVAL, "MREMAP_DONTUNMAP cannot resize")
        if moving and new_flow:
            self._check_new_addr(old, old_len, new_len, new_addr, flags)
        if new_flow and flags & MREMAP_FIXED and old_len == new_len:
            return self._remap_move(old, old_len, new_addr, flags)
        v = self.find_vma(old)
        if v is None:
            raise _err(errno.EFAULT, "old address not mapped")
        if moving and not new_flow:
            self._check_new_addr(old, old_len, new_len, new_addr, flags)
        if v.hugetlb:
            old_len = (old_len + PMD_SIZE - 1) & PMD_MASK
            new_len = (new_len + PMD_SIZE - 1) & PMD_MASK
            if old & (PMD_SIZE - 1) or (moving and new_addr & (PMD_SIZE - 1)) or new_len > old_len:
                raise _err(errno.EINVAL, "hugetlb mremap must be aligned and cannot grow")
        if old_len == 0 and not v.flags & (VM_SHARED | VM_MAYSHARE):
            raise _err(errno.EINVAL, "old length 0 duplicates only shared mappings")
        if old_len == 0:
            raise _err(errno.EINVAL, "duplicating shared mappings (old length 0) is not emulated")
        if self.profile.mremap_multi_vma:
            self._check_prep_vma(v, old, old_len, new_len, flags)
        if moving:
            return self._mremap_to(v, old, old_len, new_len, flags, new_addr)
        if new_len <= old_len:
            if new_len < old_len:
                self._do_munmap(old + new_len, old + old_len)
            return old
        if not self.profile.mremap_multi_vma:
            self._check_prep_vma(v, old, old_len, new_len, flags)
        if old + old_len == v.end and self._vma_expandable(v, new_len - old_len):
            self._expand_in_place(v, old + new_len)
            return old
        if not flags & MREMAP_MAYMOVE:
            raise _err(errno.ENOMEM, "cannot grow in place")
        dst = self._get_unmapped_area(new_len, 0)
        return self._move_vma(v, old, old_len, new_len, dst, flags)

    def _check_new_addr(self, old: int, old_len: int, new_len: int, new_addr: int, flags: int) -> None:
        if new_addr & ~PAGE_MASK or new_addr > self.task_size - new_len:
            raise _err(errno.EINVAL, "bad new address")
        if old + old_len > new_addr and new_addr + new_len > old:
            raise _err(errno.EINVAL, "old and new ranges overlap")

    def _check_prep_vma(self, v: EVma, old: int, old_len: int, new_len: int, flags: int) -> None:
        """check_prep_vma() / vma_to_resize(): the checks of an operation that maps anew."""
        moving = bool(flags & (MREMAP_FIXED | MREMAP_DONTUNMAP))
        if new_len <= old_len and not moving:
            return
        if flags & MREMAP_DONTUNMAP and v.flags & (VM_DONTEXPAND | VM_PFNMAP):
            raise _err(errno.EINVAL, "MREMAP_DONTUNMAP on a special mapping")
        if new_len < old_len:
            old_len = new_len
        if old_len > v.end - old:
            raise _err(errno.EFAULT, "old range spans more than one VMA")
        if new_len == old_len:
            return
        if v.flags & (VM_DONTEXPAND | VM_PFNMAP):
            raise _err(errno.EFAULT, "mapping may not grow")

    def _mremap_to(self, v: EVma, old: int, old_len: int, new_len: int, flags: int, new_addr: int) -> int:
        if flags & MREMAP_FIXED:
            self._do_munmap(new_addr, new_addr + new_len)
            v2 = self.find_vma(old)
            if v2 is None:
                raise _err(errno.EFAULT, "old mapping vanished")
            v = v2
        if old_len > new_len:
            self._do_munmap(old + new_len, old + old_len)
            old_len = new_len
            v2 = self.find_vma(old)
            if v2 is None:
                raise _err(errno.EFAULT, "old mapping vanished")
            v = v2
        if not self.profile.mremap_multi_vma:
            self._check_prep_vma(v, old, old_len, new_len, flags)
        if not flags & MREMAP_FIXED:
            new_addr = self._get_unmapped_area(new_len, 0)
        return self._move_vma(v, old, old_len, new_len, new_addr, flags)

    def _remap_move(self, old: int, length: int, new_addr: int, flags: int) -> int:
        """remap_move() (6.17+): a same-size MREMAP_FIXED move of every VMA in the range, gaps kept."""
        source_end = old + length
        res_err = _err(errno.EFAULT, "old address not mapped")
        target = new_addr
        last_end = 0
        seen = False
        result = None
        cur = old
        for _ in range(len(self.vmas) + 2):
            vmas = self._vmas_in(cur, source_end) if cur < source_end else []
            if not vmas:
                break
            v = vmas[0]
            addr = max(v.start, old)
            ln = min(source_end, v.end) - addr
            if not seen and old < v.start:
                raise res_err
            offset = v.start - last_end if seen else 0
            last_end = v.end
            dst = target + offset
            multi = not v.uffd_armed
            if not multi and (seen or v.end < source_end):
                raise res_err
            if v.hugetlb and (addr & (PMD_SIZE - 1) or dst & (PMD_SIZE - 1) or ln & (PMD_SIZE - 1)):
                raise _err(errno.EINVAL, "hugetlb mremap must be aligned")
            self._check_prep_vma(v, addr, ln, ln, flags)
            got = self._mremap_to(v, addr, ln, ln, flags, dst)
            if not seen:
                result = got
            seen = True
            target = got + ln
            cur = addr + ln
        else:
            raise RuntimeError(f"emulator bug: remap_move of {old:#x}+{length:#x} does not progress")
        if result is None:
            raise res_err
        return result

    def _vma_expandable(self, v: EVma, delta: int) -> bool:
        end = v.end + delta
        if end > self.task_size or v.flags & VM_DONTEXPAND:
            return False
        return not self._vmas_in(v.end, end)

    def _expand_in_place(self, v: EVma, end: int) -> None:
        _, nxt = self._neighbours(v)
        v.end = end
        self._last_vma = None
        if v.file is not None and v.file.kind == "shmem":
            pass  # the shmem object keeps its size: accesses beyond it raise SIGBUS
        if nxt is not None and nxt.start == end and attrs_mergeable(v.flags, v.file, v.uffd, v.name, nxt) \
                and nxt.pgoff == v.pgoff + v.pages \
                and anon_mergeable(nxt, v.anon_vma, v, fixed=self.profile.anon_merge_fixed):
            v.end = nxt.end
            v.anon_vma = v.anon_vma or nxt.anon_vma
            v.flags = self._sd_merge(v.flags, nxt.flags)
            self._remove_vma(nxt)

    def _move_vma(self, v: EVma, old: int, old_len: int, new_len: int, new_addr: int, flags: int) -> int:
        """move_vma(): copy_vma at the destination, move the page tables, unmap the source.

        With MREMAP_DONTUNMAP the source VMA is neither split nor unmapped.  Otherwise the
        source VMA is split only by the final unmap: copy_vma() sees it whole, so an
        anonymous VMA that was never faulted (no anon_vma: the copy's pgoff is reset to the
        destination address) can merge with the copy (copy_vma()'s "merge with self"),
        and mremap_userfaultfd_prep() then drops the uffd context of all of it.
        """
        dontunmap = bool(flags & MREMAP_DONTUNMAP)
        src = v
        src_start = src.start
        need_clear_uffd = src.uffd_without_event_remap()
        pgoff = src.pgoff + ((old - src.start) >> PAGE_SHIFT)
        anon = src.anon_vma
        if src.anonymous and anon is None:
            pgoff = new_addr >> PAGE_SHIFT
        uffd = src.uffd
        dst = self._copy_vma(src, new_addr, new_len, src.flags, pgoff, anon, uffd, dontunmap=dontunmap)
        if dst.start <= src_start < dst.end:
            src = dst  # copy_vma(): "Source vma may have been merged into new_vma"
        self._move_page_tables(src, old, dst, new_addr, old_len, need_clear_uffd)
        if uffd is not None and not uffd.event_remap and dst.uffd is not None:
            # mremap_userfaultfd_prep(): without EVENT_REMAP the new VMA loses its context, and
            # when copy_vma() merged it with registered neighbours (or with the source VMA
            # itself), so do they (no re-merge).
            dst.flags &= ~VM_UFFD_FLAGS
            dst.uffd = None
        if dontunmap:
            if src is not dst and src.start == old and src.end == old + old_len and src.anonymous:
                src.anon_vma = None
                src.avc_forked = False
            src.flags &= ~VM_LOCKED
        else:
            self._do_munmap(old, old + old_len)
        return new_addr

    def _copy_vma(self, src: EVma, addr: int, length: int, flags: int, pgoff: int, anon: AnonVma | None,
                  uffd: UffdCtx | None, *, dontunmap: bool = False) -> EVma:
        end = addr + length
        prev, nxt = self._prev_next(addr, end)
        left = prev is not None and prev.end == addr and attrs_mergeable(flags, src.file, uffd, src.name, prev) \
            and prev.pgoff + prev.pages == pgoff \
            and anon_mergeable(prev, anon, src, fixed=self.profile.anon_merge_fixed)
        right = nxt is not None and nxt.start == end and attrs_mergeable(flags, src.file, uffd, src.name, nxt) \
            and nxt.pgoff == pgoff + (length >> PAGE_SHIFT) \
            and anon_mergeable(nxt, anon, src, fixed=self.profile.anon_merge_fixed)
        policy = self.profile.dontunmap_merge
        if dontunmap and policy != "any":
            # Observed: before the 6.16 rework the kept source VMA is no merge partner
            # (6.12), and on 6.1 its mere candidacy prevents any merge.
            if policy == "not_source":
                left = left and prev is not src
                right = right and nxt is not src
            elif (left and prev is src) or (right and nxt is src):
                left = right = False
        if left and right:
            assert prev is not None and nxt is not None
            if not anon_mergeable(prev, nxt.anon_vma, nxt, fixed=self.profile.anon_merge_fixed, pair=True):
                right = False
        if left and right:
            assert prev is not None and nxt is not None
            prev.end = nxt.end
            prev.anon_vma = prev.anon_vma or anon or nxt.anon_vma
            prev.flags = self._sd_merge(prev.flags, flags, nxt.flags)
            self._remove_vma(nxt)
            return prev
        if left:
            assert prev is not None
            prev.end = end
            prev.anon_vma = prev.anon_vma or anon
            prev.flags = self._sd_merge(prev.flags, flags)
            self._last_vma = None
            return prev
        if right:
            assert nxt is not None
            nxt.start = addr
            nxt.pgoff = pgoff
            nxt.anon_vma = nxt.anon_vma or anon
            nxt.flags = self._sd_merge(nxt.flags, flags)
            self._last_vma = None
            return nxt
        d = EVma(addr, end, flags, file=src.file, pgoff=pgoff, name=src.name)
        d.anon_vma = anon
        d.avc_forked = src.avc_forked
        d.uffd = uffd
        self._insert_vma(d)
        return d

    def _move_page_tables(self, src: EVma, old: int, dst: EVma, new: int, length: int, clear_uffd: bool) -> None:
        old_end = old + length
        sd = self.soft_dirty
        while old < old_end:
            extent = min(((old >> 21) + 1 << 21) - old, old_end - old, ((new >> 21) + 1 << 21) - new)
            pmdt = self.pt.pmd_table(old)
            pi = (old >> 21) & 511
            if pmdt is None or (pmdt.child[pi] is None and not pmdt.ents[pi]):
                old += extent
                new += extent
                continue
            if src.hugetlb:
                raw = pmdt.ents[pi]
                npmdt = self.pt.pmd_table(new, alloc=True)
                assert npmdt is not None
                npi = (new >> 21) & 511
                f, _ = self._folio_of(raw) if pte_present(raw) else (None, 0)
                if f is not None:
                    if clear_uffd:
                        raw &= ~_PAGE_UFFD_WP
                    self._move_pmd_leaf(pmdt, pi, npmdt, npi, raw, f)
                else:
                    pmdt.ents[pi] = 0
                    if not (clear_uffd and marker_bits(raw) & PTE_MARKER_UFFD_WP):
                        npmdt.ents[npi] = raw
                old += extent
                new += extent
                continue
            npmdt = self.pt.pmd_table(new, alloc=True)
            assert npmdt is not None
            npi = (new >> 21) & 511
            if pmdt.child[pi] is None:  # a huge leaf
                if extent == PMD_SIZE and not npmdt.ents[npi] and npmdt.child[npi] is None:
                    raw = pmdt.ents[pi]
                    pfn = (raw & PTE_PFN_MASK) >> PAGE_SHIFT
                    if sd:
                        raw |= _PAGE_SOFT_DIRTY
                    if clear_uffd:
                        raw &= ~_PAGE_UFFD_WP
                    if pfn == HUGE_ZERO_PFN:
                        pmdt.ents[pi] = 0
                        npmdt.ents[npi] = raw
                    else:
                        f, _ = self._folio_of(raw)
                        assert f is not None
                        self._move_pmd_leaf(pmdt, pi, npmdt, npi, raw, f)
                    old += extent
                    new += extent
                    continue
                self._split_pmd(src, pmdt, pi)
            elif extent == PMD_SIZE and not clear_uffd and npmdt.child[npi] is None and not npmdt.ents[npi]:
                # move_normal_pmd(): the PTE table moves as it is (no soft-dirty marking).
                t = pmdt.child[pi]
                assert isinstance(t, PteTable)
                self.pt.free_pte_table(pmdt, pi)
                t.base = new & PMD_MASK
                self.pt.install_pte_table(npmdt, npi, t)
                old += extent
                new += extent
                continue
            t = pmdt.child[pi]
            assert isinstance(t, PteTable)
            nt = self.pt.pte_table(new, alloc=True)
            assert nt is not None
            for k in range(extent >> 12):
                i = ((old >> 12) & 511) + k
                j = ((new >> 12) & 511) + k
                raw = t.pte[i]
                if pte_none(raw):
                    continue
                f, idx = self._folio_of(raw) if pte_present(raw) else (None, 0)
                t.pte[i] = 0
                t.pm[i] = 0
                if sd:
                    raw |= _PAGE_SOFT_DIRTY if pte_present(raw) else _PAGE_SWP_SOFT_DIRTY
                if clear_uffd:
                    if is_swap_pte(raw) and marker_bits(raw) == PTE_MARKER_UFFD_WP:
                        continue
                    raw &= ~(_PAGE_UFFD_WP if pte_present(raw) else _PAGE_SWP_UFFD_WP)
                if f is not None:
                    rm = f.rmap[idx]
                    try:
                        rm.remove((t, i))
                    except ValueError:
                        pass
                    rm.append((nt, j))
                self._set(nt, j, raw)
            old += extent
            new += extent

    # ------------------------------------------------------------------ fork / exit
    def fork(self) -> EmulatedProcess:
        """fork(2): a child with copies of the VMAs and (where the kernel copies them) page tables."""
        self._check_alive()
        child = EmulatedProcess(self.machine, _parent=self)
        child.start_brk, child.brk_addr, child.start_stack = self.start_brk, self.brk_addr, self.start_stack
        self.children.append(child)
        for v in self.vmas:
            if v.flags & VM_DONTCOPY:
                continue
            c = v.copy()
            if v.uffd is not None and not v.uffd.event_fork:
                c.uffd = None
                c.flags &= ~VM_UFFD_FLAGS
            if v.anon_vma is not None:
                c.anon_vma = AnonVma()
                c.avc_forked = True
            if v.flags & VM_WIPEONFORK:
                c.anon_vma = None
                c.avc_forked = False
            child.vmas.append(c)
            if v.flags & VM_WIPEONFORK:
                continue
            if c.uffd_wp or v.flags & (VM_PFNMAP | VM_MIXEDMAP) or v.anon_vma is not None:
                self._copy_page_range(child, v, c)
        self._rss_changed()
        child._rss_changed()
        return child

    def _copy_page_range(self, child: EmulatedProcess, v: EVma, c: EVma) -> None:
        cow = not v.shared and bool(v.flags & VM_MAYWRITE)
        keep_uffd = c.uffd_wp
        for key, pmdt in list(self.pt.pmd_tables_in(v.start, v.end)):
            del key
            for pi in range(PTRS):
                base = pmdt.base + (pi << 21)
                if base + PMD_SIZE <= v.start or base >= v.end:
                    continue
                t = pmdt.child[pi]
                raw = pmdt.ents[pi]
                if t is None and not raw:
                    continue
                if t is None:
                    cpmdt = child.pt.pmd_table(base, alloc=True)
                    assert cpmdt is not None
                    if pte_present(raw):
                        pfn = (raw & PTE_PFN_MASK) >> PAGE_SHIFT
                        if v.hugetlb:
                            f, _ = self._folio_of(raw)
                            if cow and raw & _PAGE_RW and f is not None and f.anon:
                                raw &= ~_PAGE_RW
                                pmdt.ents[pi] = raw
                            craw = raw if keep_uffd else raw & ~_PAGE_UFFD_WP
                            if f is not None:
                                child._map_pmd(cpmdt, pi, craw, f)
                            continue
                        if cow:
                            raw &= ~_PAGE_RW
                            pmdt.ents[pi] = raw
                        craw = raw & ~_PAGE_ACCESSED
                        if not keep_uffd:
                            craw &= ~_PAGE_UFFD_WP
                        if pfn == HUGE_ZERO_PFN:
                            cpmdt.ents[pi] = craw
                            continue
                        f, _ = self._folio_of(raw)
                        assert f is not None
                        if f.anon:
                            f.excl = [False] * f.nr
                        child._map_pmd(cpmdt, pi, craw, f)
                    else:
                        craw = raw
                        if marker_bits(raw) and not keep_uffd:
                            continue
                        cpmdt.ents[pi] = craw
                    continue
                assert isinstance(t, PteTable)
                ct = child.pt.pte_table(base, alloc=True)
                assert ct is not None
                i0 = max(0, (v.start - base) >> 12)
                i1 = min(PTRS, (v.end - base) >> 12)
                for i in range(i0, i1):
                    raw = t.pte[i]
                    if pte_none(raw):
                        continue
                    if pte_present(raw):
                        f, idx = self._folio_of(raw)
                        if cow and raw & _PAGE_RW:
                            raw &= ~_PAGE_RW
                            self._set(t, i, raw)
                        craw = raw
                        if v.shared:
                            craw &= ~_PAGE_DIRTY
                        craw &= ~_PAGE_ACCESSED
                        if not keep_uffd:
                            craw &= ~_PAGE_UFFD_WP
                        if f is None:
                            child._set(ct, i, craw)
                            continue
                        if f.anon:
                            f.excl[idx] = False
                        child._map_pte(ct, i, craw, f, idx)
                        continue
                    bits = marker_bits(raw)
                    if swp_type(raw) == SWP_PTE_MARKER:
                        keep = bits & (PTE_MARKER_POISONED | PTE_MARKER_GUARD)
                        if bits & PTE_MARKER_UFFD_WP and keep_uffd:
                            keep |= PTE_MARKER_UFFD_WP
                        if keep:
                            craw = make_marker(keep) | (raw & (_PAGE_SWP_SOFT_DIRTY | _PAGE_SWP_UFFD_WP if keep_uffd
                                                               else _PAGE_SWP_SOFT_DIRTY))
                            child._set(ct, i, craw)
                        continue
                    # a real swap entry: both now share the slot
                    swap = self.machine.swap
                    if swap is not None:
                        slot = swp_offset(raw)
                        swap.count[slot] = swap.count.get(slot, 0) + 1
                    if cow and raw & _PAGE_SWP_EXCLUSIVE:
                        raw &= ~_PAGE_SWP_EXCLUSIVE
                        self._set(t, i, raw)
                    craw = raw if keep_uffd else raw & ~_PAGE_SWP_UFFD_WP
                    child._set(ct, i, craw)

    def exit(self) -> None:
        """exit(2): the whole mm goes (the PID is reaped at once)."""
        if not self.alive:
            return
        for u in list(self.uffds):
            u.close()
        for v in list(self.vmas):
            self._zap_range(v, v.start, v.end, keep_uffd_markers=False, drop_guards=True)
        self.vmas.clear()
        self.pt = PageTables(self.machine.new_table_pfn, self, five_level=self.profile.five_level)
        self.alive = False
        for c in self.children:
            c.parent = None
        if self.parent is not None and self in self.parent.children:
            self.parent.children.remove(self)

    # ------------------------------------------------------------------ accounting
    def rss_pages(self) -> int:
        n = 0
        for _, pmdt in self.pt.pmd_tables.items():
            for pi in range(PTRS):
                t = pmdt.child[pi]
                if t is None:
                    raw = pmdt.ents[pi]
                    if is_leaf(raw) and (raw & PTE_PFN_MASK) >> PAGE_SHIFT != HUGE_ZERO_PFN:
                        n += PTRS
                    continue
                assert isinstance(t, PteTable)
                for raw in t.pte:
                    if raw & 0x101 and not raw & _PAGE_SPECIAL:
                        n += 1
        return n

    def _rss_changed(self) -> None:
        # VmHWM is tracked lazily: exact values only matter for clear_refs "5".
        pass

    # ------------------------------------------------------------------ pagemap
    def pagemap_entries(self, start: int, end: int) -> array[int]:
        """The pagemap entries for [start, end) as the kernel computes them (PFNs visible)."""
        data = self._pagemap_bytes(start >> PAGE_SHIFT, (end - start) >> PAGE_SHIFT)
        out = array("Q")
        out.frombytes(data)
        return out

    def _pagemap_bytes(self, first_page: int, n: int) -> bytes:
        addr = first_page << PAGE_SHIFT
        end = addr + (n << PAGE_SHIFT)
        out = bytearray()
        for v in self._vmas_in(addr, end):
            if v.start > addr:
                out += bytes(((v.start - addr) >> PAGE_SHIFT) * 8)
                addr = v.start
            vend = min(v.end, end)
            sd = bool(v.flags & VM_SOFTDIRTY) and self.soft_dirty
            if v.flags & VM_PFNMAP:
                out += self._hole(vend - addr, sd)
            elif v.hugetlb:
                out += self._pagemap_hugetlb(v, addr, vend, sd)
            else:
                while addr < vend:
                    nxt = min((addr & PMD_MASK) + PMD_SIZE, vend)
                    cnt = (nxt - addr) >> PAGE_SHIFT
                    pmdt = self.pt.pmd_tables.get(addr >> 30)
                    pi = (addr >> 21) & 511
                    t = None if pmdt is None else pmdt.child[pi]
                    if t is not None:
                        assert isinstance(t, PteTable)
                        i0 = (addr >> 12) & 511
                        chunk = t.pm[i0:i0 + cnt].tobytes()
                        if sd:
                            chunk = (int.from_bytes(chunk, "little") | (_REP_SD & ((1 << (64 * cnt)) - 1))) \
                                .to_bytes(8 * cnt, "little")
                        out += chunk
                    elif pmdt is not None and pmdt.ents[pi]:
                        out += self._pagemap_thp(pmdt.ents[pi], addr, nxt, sd)
                    else:
                        out += self._hole(nxt - addr, sd)
                    addr = nxt
            addr = vend
        if addr < end:
            out += bytes(((end - addr) >> PAGE_SHIFT) * 8)
        return bytes(out)

    @staticmethod
    def _hole(length: int, sd: bool) -> bytes:
        cnt = length >> PAGE_SHIFT
        if not sd:
            return bytes(cnt * 8)
        return PM_SOFT_DIRTY.to_bytes(8, "little") * cnt

    def _pagemap_thp(self, raw: int, addr: int, end: int, sd: bool) -> bytes:
        idx = (addr >> 12) & 511
        cnt = (end - addr) >> 12
        flags = PM_SOFT_DIRTY if sd else 0
        if not pte_present(raw):
            return flags.to_bytes(8, "little") * cnt if flags else bytes(8 * cnt)
        flags |= PM_PRESENT
        if raw & _PAGE_SOFT_DIRTY:
            flags |= PM_SOFT_DIRTY
        if raw & _PAGE_UFFD_WP:
            flags |= PM_UFFD_WP
        pfn = (raw & PTE_PFN_MASK) >> PAGE_SHIFT
        f = self.machine.pfn_map.get(pfn)
        if pfn == HUGE_ZERO_PFN or (f is not None and not f.anon):
            flags |= PM_FILE
        vals = array("Q")
        head_only = self.profile.thp_excl_from_head
        for k in range(idx, idx + cnt):
            v = flags | (pfn + k)
            # 6.15+ asks about the PMD's first page for every subpage (page, not page + idx).
            if f is not None and f.mapcount[0 if head_only else k] == 1:
                v |= PM_EXCL
            vals.append(v)
        return vals.tobytes()

    def _pagemap_hugetlb(self, v: EVma, addr: int, end: int, sd: bool) -> bytes:
        out = bytearray()
        while addr < end:
            h = addr & PMD_MASK
            nxt = min(h + PMD_SIZE, end)
            cnt = (nxt - addr) >> 12
            pmdt = self.pt.pmd_tables.get(addr >> 30)
            raw = 0 if pmdt is None else pmdt.ents[(addr >> 21) & 511]
            flags = PM_SOFT_DIRTY if sd else 0
            if pte_present(raw):
                pfn = (raw & PTE_PFN_MASK) >> PAGE_SHIFT
                f = self.machine.pfn_map.get(pfn)
                flags |= PM_PRESENT
                if f is not None and not f.anon:
                    flags |= PM_FILE
                if f is not None and f.total <= HPAGE_NR:
                    flags |= PM_EXCL
                if raw & _PAGE_UFFD_WP:
                    flags |= PM_UFFD_WP
                first = pfn + ((addr >> 12) & 511)
                vals = array("Q", (flags | (first + k) for k in range(cnt)))
                out += vals.tobytes()
            else:
                if raw and (raw & _PAGE_SWP_UFFD_WP or marker_bits(raw) & PTE_MARKER_UFFD_WP):
                    flags |= PM_UFFD_WP
                out += flags.to_bytes(8, "little") * cnt
            addr = nxt
        return bytes(out)

    # ------------------------------------------------------------------ clear_refs
    def _clear_refs(self, value: int) -> None:
        if value == 5:
            self.hiwater_rss = self.rss_pages()
            return
        if value == 4 and self.soft_dirty:
            for v in self.vmas:
                if v.flags & VM_SOFTDIRTY:
                    v.flags &= ~VM_SOFTDIRTY
        for v in self.vmas:
            if v.flags & VM_PFNMAP:
                continue
            if value == 2 and v.file is not None:
                continue
            if value == 3 and v.file is None:
                continue
            if v.hugetlb:
                continue  # no hugetlb_entry in clear_refs_walk_ops
            if value == 4 and not self.soft_dirty:
                continue
            self._clear_refs_vma(v, value)

    def _clear_refs_vma(self, v: EVma, value: int) -> None:
        for _, pmdt in list(self.pt.pmd_tables_in(v.start, v.end)):
            for pi in range(PTRS):
                base = pmdt.base + (pi << 21)
                if base + PMD_SIZE <= v.start or base >= v.end:
                    continue
                t = pmdt.child[pi]
                if t is None:
                    raw = pmdt.ents[pi]
                    if not raw or not is_leaf(raw):
                        continue
                    if value == 4:
                        raw = (raw & ~_PAGE_RW) & ~_PAGE_SOFT_DIRTY
                    else:
                        raw &= ~_PAGE_ACCESSED
                    pmdt.ents[pi] = raw
                    continue
                assert isinstance(t, PteTable)
                i0 = max(0, (v.start - base) >> 12)
                i1 = min(PTRS, (v.end - base) >> 12)
                for i in range(i0, i1):
                    raw = t.pte[i]
                    if pte_none(raw):
                        continue
                    if value == 4:
                        if pte_present(raw):
                            new = raw & ~(_PAGE_RW | _PAGE_SOFT_DIRTY)
                        else:
                            new = raw & ~_PAGE_SWP_SOFT_DIRTY
                        if new != raw:
                            self._set(t, i, new)
                    elif pte_present(raw) and not raw & _PAGE_SPECIAL:
                        t.pte[i] = raw & ~_PAGE_ACCESSED

    # ------------------------------------------------------------------ maps
    def maps(self) -> list[Vma]:
        out = []
        for v in self.vmas:
            m = v.to_vma()
            if not v.name and v.file is None:
                if self.start_brk and v.start <= self.brk_addr and v.end >= self.start_brk:
                    m = Vma(m.start, m.end, m.perms, 0, "00:00", 0, "[heap]")
                elif self.start_stack and v.start <= self.start_stack < v.end:
                    m = Vma(m.start, m.end, m.perms, 0, "00:00", 0, "[stack]")
            out.append(m)
        return out

    def maps_text(self) -> str:
        """/proc/PID/maps as the kernel prints it."""
        return "".join(m.format() + "\n" for m in self.maps())

    def __repr__(self) -> str:
        state = "" if self.alive else " exited"
        return f"<EmulatedProcess pid={self._pid} {self.profile.describe()} {len(self.vmas)} VMAs{state}>"

    # ------------------------------------------------------------------ ProcessInterface
    def read_maps(self) -> list[Vma]:
        self.ensure_alive()
        return self.maps()

    def read_pagemap(self, offset: int, count: int) -> bytes:
        """pread() of /proc/PID/pagemap (spec 1.5)."""
        if offset < 0 or count < 0 or offset % ENTRY_SIZE or count % ENTRY_SIZE:
            raise _err(errno.EINVAL, f"pagemap reads are 8-byte aligned (offset={offset}, count={count})")
        if offset + count > LLONG_MAX:
            raise _err(errno.EINVAL, "offset + count beyond LLONG_MAX")
        if count == 0 or not self.alive:
            return b""
        first = offset // ENTRY_SIZE
        limit = self.task_size >> PAGE_SHIFT
        if first >= limit:
            return b""
        n = min(count // ENTRY_SIZE, limit - first)
        data = self._pagemap_bytes(first, n)
        if not self.profile.pfn_visible:
            data = (int.from_bytes(data, "little") & (_REP_FLAGS if n <= PTRS else
                    int.from_bytes(PM_FLAGS_MASK.to_bytes(8, "little") * n, "little"))).to_bytes(len(data), "little")
        return data

    def pagemap_fileno(self) -> None:
        return None

    def write_clear_refs(self, value: bytes) -> int:
        """write() to /proc/PID/clear_refs (spec 2.1 parsing and errno)."""
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"clear_refs takes bytes, not {type(value).__name__}")
        raw = bytes(value)
        count = min(len(raw), 12)
        buf = raw[:count]
        text = buf.split(b"\0", 1)[0].strip(b" \t\n\v\f\r")
        num = _kstrtoint(text)
        if not 1 <= num <= 5:
            raise _err(errno.EINVAL, f"clear_refs value {num} is not 1-5")
        if not self.alive:
            raise _err(errno.ESRCH, "the process has exited")
        self._clear_refs(num)
        return count

    def pagemap_scan_ioctl(
        self,
        start: int,
        end: int,
        *,
        flags: int = 0,
        category_inverted: int = 0,
        category_mask: int = 0,
        category_anyof_mask: int = 0,
        return_mask: int = 0,
        max_pages: int = 0,
        vec_len: int = 512,
    ) -> tuple[array[int], int]:
        from softdirty.emulator.scan import pagemap_scan

        return pagemap_scan(self, start, end, flags=flags, category_inverted=category_inverted,
                            category_mask=category_mask, category_anyof_mask=category_anyof_mask,
                            return_mask=return_mask, max_pages=max_pages, vec_len=vec_len)

    def ensure_alive(self) -> None:
        self._check_alive()

    def mm_gone_error(self) -> ProcessGone:
        return ProcessGone(self._pid, f"emulated process {self._pid} has exited")

    def feature(self, name: str) -> Answer:
        p = self.profile
        where = p.describe()
        if name == "soft_dirty":
            return Answer(p.soft_dirty, f"{where}: CONFIG_MEM_SOFT_DIRTY {'on' if p.soft_dirty else 'off'}")
        if name == "pagemap_scan":
            return Answer(p.pagemap_scan, f"{where}: PAGEMAP_SCAN {'present' if p.pagemap_scan else 'absent (6.7+)'}")
        if name == "scan_soft_dirty":
            ok = p.pagemap_scan and p.scan_soft_dirty and p.soft_dirty
            return Answer(ok, f"{where}: PAGE_IS_SOFT_DIRTY {'usable' if ok else 'unusable'}")
        if name == "scan_guard":
            ok = p.pagemap_scan and p.scan_guard
            return Answer(ok, f"{where}: PAGE_IS_GUARD {'accepted' if ok else 'rejected (6.15+)'}")
        if name == "uffd_wp_async":
            ok = p.uffd_wp_async and p.pagemap_scan
            return Answer(ok, f"{where}: uffd-wp async {'available' if ok else 'unavailable (6.7+)'}")
        if name == "pfn_visible":
            return Answer(p.pfn_visible, f"{where}: PFNs {'shown' if p.pfn_visible else 'hidden'}")
        raise ValueError(f"unknown feature {name!r}")

    def open_uffd(self, features: int) -> EmulatedUffd:
        from softdirty.emulator.uffd import EmulatedUffd

        self._check_alive()
        u = EmulatedUffd(self)
        try:
            u.api(features)
        except BaseException:
            u.close()
            raise
        return u

    def close(self) -> None:
        """ProcessInterface.close(): nothing to release for an emulated process."""

    def __enter__(self) -> EmulatedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kstrtoint(text: bytes) -> int:
    """kstrtoint(s, 10): optional sign, decimal digits only; EINVAL / ERANGE."""
    s = text
    neg = False
    if s[:1] in (b"+", b"-"):
        neg = s[:1] == b"-"
        s = s[1:]
    if not s or not s.isdigit():
        raise _err(errno.EINVAL, f"clear_refs value {text!r} is not a decimal integer")
    n = int(s)
    n = -n if neg else n
    if not -(1 << 31) <= n < (1 << 31):
        raise _err(errno.ERANGE, f"clear_refs value {text!r} overflows an int")
    return n
