"""Emulated VMAs, their flags, and the kernel's mergeability rules."""

from __future__ import annotations

from softdirty.emulator.constants import (
    VM_ACCESS_FLAGS,
    VM_EXEC,
    VM_HUGETLB,
    VM_MAYSHARE,
    VM_PFNMAP,
    VM_READ,
    VM_SHARED,
    VM_SOFTDIRTY,
    VM_SPECIAL,
    VM_UFFD_FLAGS,
    VM_UFFD_MINOR,
    VM_UFFD_MISSING,
    VM_UFFD_WP,
    VM_WRITE,
)
from softdirty.emulator.memory import EmuFile
from softdirty.emulator.x86 import (
    PAGE_NONE,
    PAGE_READONLY,
    PAGE_READONLY_EXEC,
    PAGE_SHARED,
    PAGE_SHARED_EXEC,
)
from softdirty.maps import Vma
from softdirty.pagemap import PAGE_SHIFT
from softdirty.uffd_abi import UFFD_FEATURE_EVENT_FORK, UFFD_FEATURE_EVENT_REMAP, UFFD_FEATURE_WP_ASYNC

UFFD_FEATURE_WP_UNPOPULATED = 1 << 13


class AnonVma:
    """Identity object for ``struct anon_vma`` (only identity matters for merging)."""

    __slots__ = ("id",)
    _n = 0

    def __init__(self) -> None:
        AnonVma._n += 1
        self.id = AnonVma._n

    def __repr__(self) -> str:
        return f"<anon_vma {self.id}>"


class UffdCtx:
    """A userfaultfd context: the features enabled by UFFDIO_API."""

    __slots__ = ("features", "released", "id")
    _n = 0

    def __init__(self, features: int) -> None:
        UffdCtx._n += 1
        self.id = UffdCtx._n
        self.features = features
        self.released = False

    @property
    def wp_async(self) -> bool:
        return bool(self.features & UFFD_FEATURE_WP_ASYNC)

    @property
    def event_fork(self) -> bool:
        return bool(self.features & UFFD_FEATURE_EVENT_FORK)

    @property
    def event_remap(self) -> bool:
        return bool(self.features & UFFD_FEATURE_EVENT_REMAP)

    def __repr__(self) -> str:
        return f"<uffd ctx {self.id} features={self.features:#x}>"


class EVma:
    """One ``vm_area_struct``: range, flags, backing, anon_vma and uffd context."""

    __slots__ = ("start", "end", "flags", "file", "pgoff", "anon_vma", "avc_forked", "uffd", "name", "prot_cache")

    def __init__(self, start: int, end: int, flags: int, *, file: EmuFile | None = None, pgoff: int = 0,
                 name: str = "") -> None:
        self.start = start
        self.end = end
        self.flags = flags
        self.file = file
        self.pgoff = pgoff
        self.anon_vma: AnonVma | None = None
        self.avc_forked = False  # anon_vma_chain not singular (a forked child's VMA)
        self.uffd: UffdCtx | None = None
        self.name = name  # [heap], [stack], [vdso], [vvar]
        self.prot_cache = -1

    def copy(self) -> EVma:
        v = EVma(self.start, self.end, self.flags, file=self.file, pgoff=self.pgoff, name=self.name)
        v.anon_vma = self.anon_vma
        v.avc_forked = self.avc_forked
        v.uffd = self.uffd
        return v

    # -- kinds -----------------------------------------------------------------
    @property
    def anonymous(self) -> bool:
        """vma_is_anonymous(): no vm_ops (private anon, heap, stack)."""
        return self.file is None and not self.flags & (VM_PFNMAP | VM_HUGETLB) and not self.name.startswith("[v")

    @property
    def shared(self) -> bool:
        return bool(self.flags & VM_SHARED)

    @property
    def hugetlb(self) -> bool:
        return bool(self.flags & VM_HUGETLB)

    @property
    def pages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    def file_pgoff(self, addr: int) -> int:
        return self.pgoff + ((addr - self.start) >> PAGE_SHIFT)

    # -- userfaultfd -----------------------------------------------------------
    @property
    def uffd_wp(self) -> bool:
        return bool(self.flags & VM_UFFD_WP)

    @property
    def uffd_missing(self) -> bool:
        return bool(self.flags & VM_UFFD_MISSING)

    @property
    def uffd_armed(self) -> bool:
        return bool(self.flags & VM_UFFD_FLAGS)

    def uffd_wp_async(self) -> bool:
        return self.uffd_wp and self.uffd is not None and self.uffd.wp_async

    def uffd_wp_use_markers(self) -> bool:
        """userfaultfd_wp_use_markers(): file-backed, or anon with WP_UNPOPULATED."""
        if not self.uffd_wp:
            return False
        if not self.anonymous:
            return True
        return self.uffd is not None and bool(self.uffd.features & UFFD_FEATURE_WP_UNPOPULATED)

    def uffd_without_event_remap(self) -> bool:
        return self.uffd_wp and self.uffd is not None and not self.uffd.event_remap

    def uffd_disable_fault_around(self) -> bool:
        return bool(self.flags & (VM_UFFD_WP | VM_UFFD_MINOR))

    # -- protections ---------------------------------------------------------------
    def base_prot(self, flags: int | None = None) -> int:
        """vm_get_page_prot(): the x86 protection_map entry for the flags."""
        f = self.flags if flags is None else flags
        r, w, x = f & VM_READ, f & VM_WRITE, f & VM_EXEC
        if not (r or w or x):
            return PAGE_NONE
        if f & VM_SHARED and w:
            return PAGE_SHARED_EXEC if x else PAGE_SHARED
        return PAGE_READONLY_EXEC if x else PAGE_READONLY

    def to_vma(self) -> Vma:
        f = self.flags
        perms = ("r" if f & VM_READ else "-") + ("w" if f & VM_WRITE else "-") + ("x" if f & VM_EXEC else "-")
        perms += "s" if f & VM_MAYSHARE else "p"
        if self.file is not None:
            if self.file.kind == "shmem":
                path, deleted = self.file.name, True
            else:
                path, deleted = self.file.name, False
            return Vma(self.start, self.end, perms, self.pgoff << PAGE_SHIFT, self.file.dev, self.file.inode,
                       path, deleted)
        return Vma(self.start, self.end, perms, 0, "00:00", 0, self.name)

    def __repr__(self) -> str:
        return f"<EVma {self.start:#x}-{self.end:#x} flags={self.flags:#x} {self.to_vma().name}>"


def anon_vma_compatible(a: EVma, b: EVma) -> bool:
    """anon_vma_compatible(a, b) for a immediately below b (find_mergeable_anon_vma)."""
    return (
        a.end == b.start
        and a.file is b.file
        and not ((a.flags ^ b.flags) & ~(VM_ACCESS_FLAGS | VM_SOFTDIRTY))
        and b.pgoff == a.pgoff + ((b.start - a.start) >> PAGE_SHIFT)
    )


def attrs_mergeable(a_flags: int, a_file: EmuFile | None, a_uffd: UffdCtx | None, a_name: str, b: EVma) -> bool:
    """The attribute half of is_mergeable_vma(): flags (VM_SOFTDIRTY aside), file, uffd ctx, name."""
    if (a_flags | b.flags) & VM_SPECIAL:
        return False
    if (a_flags ^ b.flags) & ~VM_SOFTDIRTY:
        return False
    return a_file is b.file and a_uffd is b.uffd and a_name == b.name


def had_uncowed_parents(v: EVma | None) -> bool:
    return v is not None and v.anon_vma is not None and v.avc_forked


def anon_mergeable(tgt: EVma, src_anon: AnonVma | None, src: EVma | None, *, fixed: bool = True,
                   pair: bool = False) -> bool:
    """is_mergeable_anon_vma(): may ``src_anon`` (of ``src``) merge with the neighbour ``tgt``?

    ``fixed`` (6.16+, "fix incorrectly disallowed anonymous VMA merges"): the
    fork-child test applies to whichever VMA lends its anon_vma.  Before it
    (``fixed=False``) the kernel tested list_is_singular() on the *target*'s
    anon_vma_chain, which is empty when the target has no anon_vma: a VMA with
    an anon_vma then never merged with an unfaulted neighbour (observed on 6.1
    and 6.12).  ``pair``: the prev/next compatibility check of a three-way merge
    (are_anon_vmas_compatible(), no chain test at all before the fix).
    """
    tgt_anon = tgt.anon_vma
    if not fixed:
        if src_anon is None or tgt_anon is None:
            if pair or (tgt_anon is not None and not tgt.avc_forked):
                return True
        return src_anon is tgt_anon
    if tgt_anon is None and src_anon is not None:
        return not had_uncowed_parents(src)
    if tgt_anon is not None and src_anon is None:
        return not had_uncowed_parents(tgt)
    return src_anon is tgt_anon
