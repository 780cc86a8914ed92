"""Kernel profiles: the version- and config-dependent behaviour (spec section 8)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

THP_MODES = ("always", "madvise", "never")


@dataclass(frozen=True)
class KernelProfile:
    """What the emulated kernel does where kernels differ.

    Build one with :func:`get_profile` (a preset plus overrides).
    """

    release: str = "6.18"
    # CONFIG_MEM_SOFT_DIRTY: bit 55, VM_SOFTDIRTY, clear_refs "4" doing anything.
    soft_dirty: bool = True
    # PAGEMAP_SCAN ioctl (6.7+) and which categories it accepts.
    pagemap_scan: bool = True
    scan_soft_dirty: bool = True  # PAGE_IS_SOFT_DIRTY (6.8+)
    scan_guard: bool = True  # PAGE_IS_GUARD (6.15+)
    # Jul-2026 fixes: pte_none inside a table is WRITTEN; a table hole in a
    # uffd-wp registered (non-hugetlb) VMA is WRITTEN.
    scan_none_is_written: bool = True
    scan_uffd_hole_is_written: bool = True
    # The huge zero page reports PAGE_IS_PFNZERO (2025 fix).
    huge_zero_pfnzero: bool = True
    # Guard regions: MADV_GUARD_INSTALL (6.13+), pagemap bit 58 (6.15+).
    guard_regions: bool = True
    guard_bit: bool = True
    # VM_SOFTDIRTY is OR-ed on VMA merges (6.19+, late 6.18.y).
    sticky_vm_softdirty_merge: bool = False
    # userfaultfd: WP_ASYNC (6.7+) and the feature mask UFFDIO_API reports.
    uffd_wp_async: bool = True
    uffd_features: int = 0x1FFFF
    # A write to the huge zero page allocates a THP (6.13+) instead of splitting.
    huge_zero_wp_alloc: bool = True
    # do_wp_page may reuse a PTE-mapped large anon folio held only by this mm (6.15+).
    large_anon_folio_reuse: bool = True
    # CONFIG_PT_RECLAIM (6.14+): MADV_DONTNEED frees PTE tables left empty.
    pt_reclaim: bool = True
    # mremap(MREMAP_FIXED) of a range spanning several VMAs (6.17+).
    mremap_multi_vma: bool = True
    # pagemap's PM_MMAP_EXCLUSIVE for a PMD-mapped THP comes from its first page for all
    # 512 entries (6.1, and again 6.15+: __folio_page_mapped_exclusively(folio, page)
    # without "+ idx"); 6.12 asks per subpage.
    thp_excl_from_head: bool = True
    # Splitting an anon THP maps its all-zero subpages to the shared zero page (6.12+).
    split_zero_remap: bool = True
    # mprotect() drops VM_ACCOUNT from an unfaulted anon VMA made read-only (6.2+).
    mprotect_unaccount: bool = True
    # How the new VMA of an MREMAP_DONTUNMAP move merges (observed in VMs, not in the spec):
    # "any" (6.16+), "not_source" (6.12: never into the kept source VMA), "none_near_source"
    # (6.1: no merge at all when the source VMA is a neighbour).
    dontunmap_merge: str = "any"
    # is_mergeable_anon_vma() tests the VMA that lends its anon_vma for fork-child chains
    # (6.16+); before, it tested the merge target's chain, so a VMA with an anon_vma never
    # merged with a neighbour that has none (observed on 6.1 and 6.12).
    anon_merge_fixed: bool = True
    # Splitting a dirty PMD-mapped THP makes dirty (hence soft-dirty) PTEs (6.2+); 6.1
    # only marks the page dirty, so the PTEs carry the PMD's soft-dirty bit and no more.
    split_pmd_mkdirty: bool = True
    # MADV_POPULATE_(READ|WRITE) before 6.10 is a per-VMA madvise behaviour: holes are
    # skipped and reported as ENOMEM only after the VMAs past them were populated; 6.10+
    # populates the range in one GUP walk that stops at the first hole.
    populate_skips_holes: bool = False
    # UFFDIO_UNREGISTER over a VMA no userfaultfd registered succeeds even where
    # vma_can_userfault() says no (a private file mapping, WP_ASYNC ctx).  Observed on
    # Debian 6.12.117 by the equivalence test; source not yet read, so only 6.12 says so.
    unregister_unregistered_ok: bool = False
    # A read fault that maps a writable PTE of a dirty folio marks it dirty (2025).
    dirty_folio_read_mkdirty: bool = True
    # Machine configuration (not version dependent; read it off the real host).
    pfn_visible: bool = True  # opener has CAP_SYS_ADMIN
    thp: str = "madvise"
    thp_use_zero_page: bool = True
    fault_around_pages: int = 16
    swap_pages: int = 0  # size of the (one) swap device in pages; 0 = no swap
    hugetlb_pages: int = 0  # 2 MiB pages in the hugetlb pool
    five_level: bool = False
    mmap_base: int = 0x7F0000000000
    # Swap types of non-device entries (config dependent); only the marker is modelled.
    max_swapfiles: int = 28

    def __post_init__(self) -> None:
        if self.thp not in THP_MODES:
            raise ValueError(f"thp must be one of {', '.join(THP_MODES)}, not {self.thp!r}")
        for name in ("fault_around_pages", "swap_pages", "hugetlb_pages"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.fault_around_pages < 1 or self.fault_around_pages & (self.fault_around_pages - 1):
            raise ValueError("fault_around_pages must be a power of two >= 1")
        if self.dontunmap_merge not in ("any", "not_source", "none_near_source"):
            raise ValueError("dontunmap_merge must be any, not_source or none_near_source, "
                             f"not {self.dontunmap_merge!r}")

    @property
    def task_size(self) -> int:
        """TASK_SIZE_MAX: the last page below 2^47 (2^56) is not usable."""
        return (1 << (56 if self.five_level else 47)) - 4096

    def replace(self, **changes: object) -> KernelProfile:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def describe(self) -> str:
        sd = "soft-dirty" if self.soft_dirty else "no soft-dirty"
        scan = "PAGEMAP_SCAN" if self.pagemap_scan else "no PAGEMAP_SCAN"
        return f"emulated Linux {self.release} ({sd}, {scan}, THP {self.thp})"


_PRESETS: dict[str, KernelProfile] = {
    "6.18": KernelProfile(),
    # Debian bookworm-security 6.12.y: no guard bit, no huge-zero PFNZERO fix,
    # write to the huge zero page splits, large folios are never reused.
    # Debian 6.12.117 carries the 2026 WRITTEN fixes and the huge-zero PFNZERO fix (stable
    # backports; observed in the VM).
    "6.12": KernelProfile(
        release="6.12",
        unregister_unregistered_ok=True,
        dontunmap_merge="not_source",
        anon_merge_fixed=False,
        scan_guard=False,
        guard_regions=False,
        guard_bit=False,
        huge_zero_wp_alloc=False,
        large_anon_folio_reuse=False,
        pt_reclaim=False,
        mremap_multi_vma=False,
        dirty_folio_read_mkdirty=False,
        thp_excl_from_head=False,
        max_swapfiles=27,
    ),
    # Debian 6.1: no PAGEMAP_SCAN, no WP_ASYNC (UFFD features up to WP_HUGETLBFS_SHMEM).
    "6.1": KernelProfile(
        release="6.1",
        dontunmap_merge="none_near_source",
        anon_merge_fixed=False,
        pagemap_scan=False,
        scan_soft_dirty=False,
        scan_guard=False,
        scan_none_is_written=False,
        scan_uffd_hole_is_written=False,
        huge_zero_pfnzero=False,
        guard_regions=False,
        guard_bit=False,
        uffd_wp_async=False,
        uffd_features=0x1FFF,
        mprotect_unaccount=False,
        populate_skips_holes=True,
        split_pmd_mkdirty=False,
        split_zero_remap=False,
        huge_zero_wp_alloc=False,
        large_anon_folio_reuse=False,
        pt_reclaim=False,
        mremap_multi_vma=False,
        dirty_folio_read_mkdirty=False,
        thp_excl_from_head=True,  # 6.1 tests the head page too (page_mapcount(page) == 1 once)
        max_swapfiles=27,
    ),
}
PRESETS = tuple(_PRESETS)


def get_profile(release: str = "6.18", **overrides: object) -> KernelProfile:
    """A preset ("6.1", "6.12", "6.18") with field overrides, e.g. ``soft_dirty=False``."""
    if release not in _PRESETS:
        raise ValueError(f"unknown kernel profile {release!r}; known: {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(KernelProfile)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown profile field(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return _PRESETS[release].replace(**overrides)
