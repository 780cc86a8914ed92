"""PAGEMAP_SCAN on an emulated process (fs/proc/task_mmu.c ``do_pagemap_scan``, spec section 5).

The code follows the kernel's structure on purpose (test_walk, pmd_entry
with its two fast paths, thp_entry, hugetlb_entry, pte_hole, the bounce
buffer and ``walk_end`` bookkeeping), because the observable quirks live in
that structure: fast path A ignores the masks, THP and hugetlb entries are
handled before it, a partial hugetlb write-protect backs out and leaves
``walk_end`` at the huge page.
"""

from __future__ import annotations

import errno
from array import array
from typing import TYPE_CHECKING

from softdirty.emulator.memory import HUGE_ZERO_PFN, ZERO_PFN
from softdirty.emulator.pagetable import PMD_MASK, PMD_SIZE, PteTable, Table, is_leaf
from softdirty.emulator.x86 import (
    _PAGE_SOFT_DIRTY,
    _PAGE_SPECIAL,
    _PAGE_SWP_SOFT_DIRTY,
    _PAGE_SWP_UFFD_WP,
    _PAGE_UFFD_WP,
    PTE_PFN_MASK,
    make_marker,
    marker_bits,
    pte_mkuffd_wp,
    pte_none,
    pte_present,
    swp_type,
)
from softdirty.pagemap import (
    PAGE_SHIFT,
    PAGE_SIZE,
    PM_SCAN_CATEGORIES,
    PM_SCAN_CATEGORIES_6_7,
    PM_SCAN_FLAGS,
    PTE_MARKER_GUARD,
    PTE_MARKER_UFFD_WP,
    SWP_PTE_MARKER,
    PageCategory,
    ScanFlag,
)

if TYPE_CHECKING:
    from softdirty.emulator.process import EmulatedProcess
    from softdirty.emulator.vma import EVma

WPALLOWED = int(PageCategory.WPALLOWED)
WRITTEN = int(PageCategory.WRITTEN)
FILE = int(PageCategory.FILE)
PRESENT = int(PageCategory.PRESENT)
SWAPPED = int(PageCategory.SWAPPED)
PFNZERO = int(PageCategory.PFNZERO)
HUGE = int(PageCategory.HUGE)
SOFT_DIRTY = int(PageCategory.SOFT_DIRTY)
GUARD = int(PageCategory.GUARD)
WP_MATCHING = int(ScanFlag.WP_MATCHING)
CHECK_WPASYNC = int(ScanFlag.CHECK_WPASYNC)
U64 = (1 << 64) - 1
PAGEMAP_WALK_PAGES = 512  # PAGEMAP_WALK_SIZE >> PAGE_SHIFT
PAGE_REGION_SIZE = 24
ENOSPC = -errno.ENOSPC
ENOENT = -errno.ENOENT
EPERM = -errno.EPERM


def _err(code: int, why: str) -> OSError:
    return OSError(code, f"{errno.errorcode.get(code, code)}: {why}")


class _Scan:
    """struct pagemap_scan_private plus the arguments."""

    def __init__(self, proc: EmulatedProcess, start: int, end: int, flags: int, inverted: int, mask: int,
                 anyof: int, ret_mask: int, max_pages: int, vec_len: int) -> None:
        self.proc = proc
        self.profile = proc.profile
        self.start, self.end = start, end
        self.flags = flags
        self.inverted, self.mask, self.anyof, self.ret_mask = inverted, mask, anyof, ret_mask
        self.max_pages = max_pages
        self.vec_len = vec_len
        self.walk_end = 0
        self.masks_of_interest = mask | anyof | ret_mask
        self.found_pages = 0
        self.cur_vma_category = 0
        self.out = array("Q")
        if vec_len:
            self.vec_buf_len = min(PAGEMAP_WALK_PAGES, vec_len)
            self.buf: list[list[int]] | None = [[0, 0, 0]]
        else:
            self.vec_buf_len = 0
            self.buf = None
        self.idx = 0

    # -- matching and output ---------------------------------------------------------
    def interesting(self, c: int) -> bool:
        c ^= self.inverted
        if c & self.mask != self.mask:
            return False
        return not (self.anyof and not c & self.anyof)

    def interesting_vma(self, c: int) -> bool:
        required = self.mask & WPALLOWED
        return (c ^ self.inverted) & required == required

    def push_range(self, cat: int, addr: int, end: int) -> bool:
        assert self.buf is not None
        cur = self.buf[self.idx]
        if addr == cur[1] and cat == cur[2]:
            cur[1] = end
            return True
        if cur[1]:
            if self.idx >= self.vec_buf_len - 1:
                return False
            self.idx += 1
            if self.idx == len(self.buf):
                self.buf.append([0, 0, 0])
            cur = self.buf[self.idx]
        cur[0], cur[1], cur[2] = addr, end, cat
        return True

    def output(self, cat: int, addr: int, end: int) -> tuple[int, int]:
        """pagemap_scan_output(): returns (ret, possibly shortened end)."""
        if self.buf is None:
            return 0, end
        cat &= self.ret_mask
        n_pages = (end - addr) // PAGE_SIZE
        ret = 0
        total = self.found_pages + n_pages
        if total > self.max_pages:
            too_much = total - self.max_pages
            end -= too_much * PAGE_SIZE
            n_pages -= too_much
            ret = ENOSPC
        if not self.push_range(cat, addr, end):
            end = addr
            n_pages = 0
            ret = ENOSPC
        self.found_pages += n_pages
        if ret:
            self.walk_end = end
        return ret, end

    def backout(self, addr: int, end: int) -> None:
        if self.buf is None:
            return  # no output vector: nothing was recorded (the kernel checks this too)
        cur = self.buf[self.idx]
        if cur[0] != addr:
            cur[1] = addr
        else:
            cur[0] = cur[1] = 0
        self.found_pages -= (end - addr) // PAGE_SIZE

    def flush(self) -> int:
        if self.buf is None:
            return 0
        n = self.idx
        if self.buf[n][1] != self.buf[n][0]:
            n += 1
        if not n:
            return 0
        for k in range(n):
            self.out.extend(self.buf[k])
        self.vec_len -= n
        self.idx = 0
        self.vec_buf_len = min(self.vec_buf_len, self.vec_len)
        self.buf[0][0] = self.buf[0][1] = 0
        return n

    # -- categories -------------------------------------------------------------------
    def page_category(self, raw: int) -> int:
        c = 0
        if pte_present(raw):
            c |= PRESENT
            if not raw & _PAGE_UFFD_WP:
                c |= WRITTEN
            pfn = (raw & PTE_PFN_MASK) >> PAGE_SHIFT
            if self.masks_of_interest & FILE and not raw & _PAGE_SPECIAL:
                f = self.proc.machine.pfn_map.get(pfn)
                if f is not None and not f.anon:
                    c |= FILE
            if pfn == ZERO_PFN:
                c |= PFNZERO
            if raw & _PAGE_SOFT_DIRTY:
                c |= SOFT_DIRTY
        elif not pte_none(raw):
            c |= SWAPPED
            if not _swp_uffd_wp_any(raw):
                c |= WRITTEN
            if self.profile.scan_guard and marker_bits(raw) & PTE_MARKER_GUARD:
                c |= GUARD
            if raw & _PAGE_SWP_SOFT_DIRTY:
                c |= SOFT_DIRTY
        elif self.profile.scan_none_is_written:
            c |= WRITTEN
        return c

    def thp_category(self, raw: int) -> int:
        c = HUGE
        if pte_present(raw):
            c |= PRESENT
            if not raw & _PAGE_UFFD_WP:
                c |= WRITTEN
            pfn = (raw & PTE_PFN_MASK) >> PAGE_SHIFT
            if self.masks_of_interest & FILE and pfn != HUGE_ZERO_PFN:
                f = self.proc.machine.pfn_map.get(pfn)
                if f is not None and not f.anon:
                    c |= FILE
            if pfn == HUGE_ZERO_PFN and self.profile.huge_zero_pfnzero:
                c |= PFNZERO
            if raw & _PAGE_SOFT_DIRTY:
                c |= SOFT_DIRTY
        return c

    def hugetlb_category(self, raw: int) -> int:
        c = HUGE
        if pte_present(raw):
            c |= PRESENT
            if not raw & _PAGE_UFFD_WP:
                c |= WRITTEN
            f = self.proc.machine.pfn_map.get((raw & PTE_PFN_MASK) >> PAGE_SHIFT)
            if f is not None and not f.anon:
                c |= FILE
            if raw & _PAGE_SOFT_DIRTY:
                c |= SOFT_DIRTY
        elif not pte_none(raw):
            c |= SWAPPED
            if not _swp_uffd_wp_any(raw):
                c |= WRITTEN
            if raw & _PAGE_SWP_SOFT_DIRTY:
                c |= SOFT_DIRTY
        return c

    # -- the walk ---------------------------------------------------------------------
    def test_walk(self, v: EVma) -> int:
        wp_allowed = v.uffd_wp_async() and v.uffd_wp_use_markers()
        if not wp_allowed:
            if self.flags & CHECK_WPASYNC:
                return EPERM
            if self.flags & WP_MATCHING:
                return 1
        if v.flags & 0x400:  # VM_PFNMAP
            return 1
        c = 0
        if wp_allowed:
            c |= WPALLOWED
        if v.flags & 0x8000000 and self.proc.soft_dirty:  # VM_SOFTDIRTY
            c |= SOFT_DIRTY
        if not self.interesting_vma(c):
            return 1
        self.cur_vma_category = c
        return 0

    def walk(self, start: int, end: int) -> int:
        """walk_page_range() over [start, end)."""
        proc = self.proc
        for v in proc._vmas_in(start, end):
            r = self.test_walk(v)
            if r < 0:
                return r
            if r == 1:
                continue
            s, e = max(start, v.start), min(end, v.end)
            r = self.walk_hugetlb(v, s, e) if v.hugetlb else self.walk_vma(v, s, e)
            if r:
                return r
        return 0

    def walk_vma(self, v: EVma, start: int, end: int) -> int:
        pt = self.proc.pt
        addr = start
        while addr < end:
            nxt = min((addr & PMD_MASK) + PMD_SIZE, end)
            pmdt = pt.pmd_tables.get(addr >> 30)
            if pmdt is None:
                nxt = min(((addr >> 30) + 1) << 30, end)
                r = self.pte_hole(v, addr, nxt)
            else:
                pi = (addr >> 21) & 511
                if pmdt.child[pi] is None and not pmdt.ents[pi]:
                    r = self.pte_hole(v, addr, nxt)
                else:
                    r = self.pmd_entry(v, pmdt, pi, addr, nxt)
            if r:
                return r
            addr = nxt
        return 0

    def pte_hole(self, v: EVma, addr: int, end: int) -> int:
        c = self.cur_vma_category
        if self.profile.scan_uffd_hole_is_written and v.uffd_wp and not v.hugetlb:
            c |= WRITTEN
        if not self.interesting(c):
            return 0
        ret, end = self.output(c, addr, end)
        if addr == end:
            return ret
        if not self.flags & WP_MATCHING:
            return ret
        self.proc._change_protection(v, addr, end, uffd_wp=True)
        return ret

    def thp_entry(self, v: EVma, pmdt: Table, pi: int, start: int, end: int) -> int:
        raw = pmdt.ents[pi]
        if pmdt.child[pi] is not None or not is_leaf(raw):
            return ENOENT
        c = self.cur_vma_category | self.thp_category(raw)
        if not self.interesting(c):
            return 0
        ret, end = self.output(c, start, end)
        if start == end:
            return ret
        if not self.flags & WP_MATCHING or not c & WRITTEN:
            return ret
        if end != start + PMD_SIZE:
            self.proc._split_pmd(v, pmdt, pi)
            self.backout(start, end)
            return ENOENT
        pmdt.ents[pi] = pte_mkuffd_wp(raw)
        return ret

    def pmd_entry(self, v: EVma, pmdt: Table, pi: int, start: int, end: int) -> int:
        ret = self.thp_entry(v, pmdt, pi, start, end)
        if ret != ENOENT:
            return ret
        ret = 0
        t = pmdt.child[pi]
        assert isinstance(t, PteTable)
        proc = self.proc
        i0 = (start >> 12) & 511
        n = (end - start) >> 12
        if self.flags & WP_MATCHING and self.buf is None:
            # Fast path A: write-protect every entry not yet protected, whatever the masks.
            for i in range(i0, i0 + n):
                raw = t.pte[i]
                if _uffd_wp_any(raw):
                    continue
                proc._set(t, i, _make_uffd_wp(raw))
            return 0
        if not self.anyof and not self.inverted and self.mask == WRITTEN and self.ret_mask == WRITTEN:
            # Fast path B: everything without uffd-wp (none entries included) is WRITTEN.
            for i in range(i0, i0 + n):
                raw = t.pte[i]
                if _uffd_wp_any(raw):
                    continue
                addr = start + ((i - i0) << 12)
                ret, nxt = self.output(self.cur_vma_category | WRITTEN, addr, addr + PAGE_SIZE)
                if nxt == addr:
                    break
                if not self.flags & WP_MATCHING:
                    continue
                proc._set(t, i, _make_uffd_wp(raw))
            return ret
        for i in range(i0, i0 + n):
            raw = t.pte[i]
            c = self.cur_vma_category | self.page_category(raw)
            if not self.interesting(c):
                continue
            addr = start + ((i - i0) << 12)
            ret, nxt = self.output(c, addr, addr + PAGE_SIZE)
            if nxt == addr:
                break
            if not self.flags & WP_MATCHING or not c & WRITTEN:
                continue
            proc._set(t, i, _make_uffd_wp(raw))
        return ret

    def walk_hugetlb(self, v: EVma, start: int, end: int) -> int:
        pt = self.proc.pt
        addr = start
        while addr < end:
            nxt = min((addr & PMD_MASK) + PMD_SIZE, end)
            pmdt = pt.pmd_tables.get(addr >> 30)
            if pmdt is None:
                r = self.pte_hole(v, addr, nxt)
            else:
                r = self.hugetlb_entry(v, pmdt, (addr >> 21) & 511, addr, nxt)
            if r:
                return r
            addr = nxt
        return 0

    def hugetlb_entry(self, v: EVma, pmdt: Table, pi: int, start: int, end: int) -> int:
        raw = pmdt.ents[pi]
        c = self.cur_vma_category | self.hugetlb_category(raw)
        if not self.interesting(c):
            return 0
        ret, end = self.output(c, start, end)
        if not self.flags & WP_MATCHING:
            return ret
        if start == end or not c & WRITTEN:
            return ret
        if end != start + PMD_SIZE:
            self.backout(start, end)
            self.walk_end = start
            return 0
        if pte_present(raw):
            pmdt.ents[pi] = pte_mkuffd_wp(raw)
        elif pte_none(raw):
            pmdt.ents[pi] = make_marker(PTE_MARKER_UFFD_WP)
        return ret


def _swp_uffd_wp_any(raw: int) -> bool:
    """pte_swp_uffd_wp_any() on a non-present, non-none entry."""
    if raw & _PAGE_SWP_UFFD_WP:
        return True
    return swp_type(raw) == SWP_PTE_MARKER and bool(marker_bits(raw) & PTE_MARKER_UFFD_WP)


def _uffd_wp_any(raw: int) -> bool:
    if pte_present(raw):
        return bool(raw & _PAGE_UFFD_WP)
    if pte_none(raw):
        return False
    return _swp_uffd_wp_any(raw)


def _make_uffd_wp(raw: int) -> int:
    """make_uffd_wp_pte(): uffd-wp bit on present/swap entries, a marker on none."""
    if pte_present(raw):
        return pte_mkuffd_wp(raw)
    if not pte_none(raw):
        return raw | _PAGE_SWP_UFFD_WP
    return make_marker(PTE_MARKER_UFFD_WP)


def _u64(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= U64:
        raise ValueError(f"{name} must fit in a u64, got {value}")
    return value


def pagemap_scan(proc: EmulatedProcess, start: int, end: int, *, flags: int = 0, category_inverted: int = 0,
                 category_mask: int = 0, category_anyof_mask: int = 0, return_mask: int = 0, max_pages: int = 0,
                 vec_len: int = 512) -> tuple[array[int], int]:
    """One PAGEMAP_SCAN ioctl: flat (start, end, categories) triples and walk_end."""
    for name, value in (("start", start), ("end", end), ("flags", flags), ("category_inverted", category_inverted),
                        ("category_mask", category_mask), ("category_anyof_mask", category_anyof_mask),
                        ("return_mask", return_mask), ("max_pages", max_pages), ("vec_len", vec_len)):
        _u64(name, value)
    profile = proc.profile
    if not profile.pagemap_scan:
        raise _err(errno.ENOTTY, f"no PAGEMAP_SCAN on Linux {profile.release} (6.7+)")
    if not proc.alive:
        raise _err(errno.ESRCH, "the process has exited")
    if flags & ~PM_SCAN_FLAGS:
        raise _err(errno.EINVAL, f"unknown PAGEMAP_SCAN flags {flags:#x}")
    known = PM_SCAN_CATEGORIES_6_7
    if profile.scan_soft_dirty:
        known |= SOFT_DIRTY
    if profile.scan_guard:
        known |= GUARD
    known &= PM_SCAN_CATEGORIES
    if (category_inverted | category_mask | category_anyof_mask | return_mask) & ~known:
        raise _err(errno.EINVAL, "unknown PAGEMAP_SCAN category")
    if start % PAGE_SIZE:
        raise _err(errno.EINVAL, "start is not page aligned")
    task_size = proc.task_size
    if end < start or end > task_size:
        raise _err(errno.EFAULT, "the range is not in the user address space")
    if vec_len * PAGE_REGION_SIZE > task_size:
        raise _err(errno.EFAULT, "the output vector does not fit in the user address space")
    end = (end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    if not max_pages:
        max_pages = U64
    p = _Scan(proc, start, end, flags, category_inverted, category_mask, category_anyof_mask, return_mask,
              max_pages, vec_len)
    ret = 0
    walk_start = start
    while walk_start < end:
        ret = p.walk(walk_start, end)
        p.flush()
        if ret != ENOSPC:
            break
        if p.vec_len == 0 or p.found_pages == p.max_pages:
            break
        walk_start = p.walk_end
    if ret and ret != ENOSPC:
        walk_end = p.walk_end or end
        code = -ret
        exc = _err(code, "PAGEMAP_SCAN: a VMA without uffd-wp async (PM_SCAN_CHECK_WPASYNC)"
                   if code == errno.EPERM else "PAGEMAP_SCAN failed")
        exc.walk_end = walk_end  # type: ignore[attr-defined]
        exc.regions = p.out  # type: ignore[attr-defined]
        raise exc
    return p.out, p.walk_end or end
