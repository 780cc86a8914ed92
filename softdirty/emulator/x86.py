"""x86-64 page-table entry bits and encodings (spec section 4).

Bit numbers are the kernel's (arch/x86/include/asm/pgtable_types.h,
pgtable_64.h).  Entries are plain ints holding the 64-bit raw value that a
real page table would hold; helpers here build and take them apart.
"""

from __future__ import annotations

from softdirty.pagemap import PAGE_SHIFT, SWP_PTE_MARKER

U64 = (1 << 64) - 1

# -- present entries -----------------------------------------------------------
_PAGE_PRESENT = 1 << 0
_PAGE_RW = 1 << 1
_PAGE_USER = 1 << 2
_PAGE_PWT = 1 << 3
_PAGE_PCD = 1 << 4
_PAGE_ACCESSED = 1 << 5
_PAGE_DIRTY = 1 << 6
_PAGE_PSE = 1 << 7  # PMD/PUD leaf (on a 4 KiB PTE this bit is PAT)
_PAGE_GLOBAL = 1 << 8
_PAGE_PROTNONE = _PAGE_GLOBAL  # when P=0: PROT_NONE / NUMA hinting, still "present"
_PAGE_SPECIAL = 1 << 9  # SOFTW1: zero page, PFN maps
_PAGE_UFFD_WP = 1 << 10  # SOFTW2
_PAGE_SOFT_DIRTY = 1 << 11  # SOFTW3
_PAGE_SAVED_DIRTY = 1 << 58  # SOFTW5, only with user shadow stacks
_PAGE_NX = 1 << 63
PTE_PFN_SHIFT = PAGE_SHIFT
PTE_PFN_MASK = ((1 << 52) - 1) & ~((1 << PAGE_SHIFT) - 1)  # bits 12-51
# pte_none() ignores A and D (Knights Landing erratum mask).
_PAGE_KNL_ERRATUM_MASK = _PAGE_DIRTY | _PAGE_ACCESSED
# Bits pte_modify() keeps (_PAGE_CHG_MASK): PFN, caching, special, A, D, SD, uffd-wp, PSE.
_PAGE_CHG_MASK = (
    PTE_PFN_MASK | _PAGE_PCD | _PAGE_PWT | _PAGE_SPECIAL | _PAGE_ACCESSED | _PAGE_DIRTY
    | _PAGE_SAVED_DIRTY | _PAGE_SOFT_DIRTY | _PAGE_UFFD_WP | _PAGE_PSE
)
# A pointer to a lower-level table (_PAGE_TABLE).
_PAGE_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY

# User protections (x86 protection_map): PROT_NONE keeps A and PROTNONE.
PAGE_NONE = _PAGE_PROTNONE | _PAGE_ACCESSED
PAGE_READONLY = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED | _PAGE_NX  # = PAGE_COPY
PAGE_READONLY_EXEC = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED
PAGE_SHARED = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_NX
PAGE_SHARED_EXEC = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED

# -- swap-format entries (P=0) --------------------------------------------------
_PAGE_SWP_SOFT_DIRTY = 1 << 1  # = _PAGE_RW
_PAGE_SWP_UFFD_WP = 1 << 2  # = _PAGE_USER
_PAGE_SWP_EXCLUSIVE = 1 << 3  # = _PAGE_PWT
SWP_TYPE_BITS = 5
SWP_OFFSET_FIRST_BIT = 9  # _PAGE_BIT_PROTNONE + 1
SWP_OFFSET_SHIFT = SWP_OFFSET_FIRST_BIT + SWP_TYPE_BITS
SWP_OFFSET_BITS = 64 - SWP_OFFSET_SHIFT  # 50
_SWP_FLAG_BITS = _PAGE_SWP_SOFT_DIRTY | _PAGE_SWP_UFFD_WP | _PAGE_SWP_EXCLUSIVE


def pte_present(raw: int) -> bool:
    return bool(raw & (_PAGE_PRESENT | _PAGE_PROTNONE))


def pte_none(raw: int) -> bool:
    return not raw & ~_PAGE_KNL_ERRATUM_MASK


def is_swap_pte(raw: int) -> bool:
    return not pte_none(raw) and not pte_present(raw)


def pte_pfn(raw: int) -> int:
    return (raw & PTE_PFN_MASK) >> PTE_PFN_SHIFT


def mk_pte(pfn: int, prot: int) -> int:
    return (pfn << PTE_PFN_SHIFT) | prot


def pte_modify(raw: int, prot: int) -> int:
    """mprotect's new entry: the kept bits of ``raw`` plus the new protection."""
    return (raw & _PAGE_CHG_MASK) | (prot & ~_PAGE_CHG_MASK)


def pte_mkdirty(raw: int) -> int:
    # x86: marking dirty also marks soft-dirty (spec 3, "key x86 fact").
    return raw | _PAGE_DIRTY | _PAGE_SOFT_DIRTY


def pte_mkuffd_wp(raw: int) -> int:
    # Arming uffd-wp also removes write permission.
    return (raw | _PAGE_UFFD_WP) & ~_PAGE_RW


def swp_entry(swp_type: int, offset: int) -> int:
    """__swp_entry(): the offset is stored bit-inverted in bits 9-58 (L1TF)."""
    return (((~offset << SWP_OFFSET_SHIFT) & U64) >> SWP_TYPE_BITS) | (swp_type << (64 - SWP_TYPE_BITS))


def swp_type(raw: int) -> int:
    return raw >> (64 - SWP_TYPE_BITS)


def swp_offset(raw: int) -> int:
    return ((~raw << SWP_TYPE_BITS) & U64) >> SWP_OFFSET_SHIFT


def make_marker(bits: int) -> int:
    return swp_entry(SWP_PTE_MARKER, bits)


def marker_bits(raw: int) -> int:
    """PTE marker bits of a non-present entry, 0 if it is no marker."""
    if swp_type(raw) != SWP_PTE_MARKER:
        return 0
    return swp_offset(raw)


def table_entry(table_pfn: int) -> int:
    """A present entry that points to a lower-level table."""
    return mk_pte(table_pfn, _PAGE_TABLE)
