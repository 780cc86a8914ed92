"""The pagemap ABI in one place.

Everything that knows a bit number of a ``/proc/PID/pagemap`` entry, a
``PAGEMAP_SCAN`` category, flag or struct layout takes it from here: the C
scanner (through the generated ``csrc/pagemap_abi.h``, see
:func:`c_header`), the pure-Python fallback, the back ends and the emulator.

Facts: ``Documentation/admin-guide/mm/pagemap.rst`` and
``include/uapi/linux/fs.h``; our ``shared/spec/kernel-semantics.md`` sections 1
and 5.  Unlike the Rust ``procfs`` crate we keep bits 57 (uffd-wp) and 58
(guard region).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
ENTRY_SIZE = 8  # one little-endian u64 per virtual page

# -- pagemap entry bits ------------------------------------------------------
PM_PFRAME_BITS = 55
PM_PFRAME_MASK = (1 << PM_PFRAME_BITS) - 1  # bits 0-54: PFN or swap type/offset
PM_SWAP_TYPE_BITS = 5  # MAX_SWAPFILES_SHIFT: bits 0-4 swap type
PM_SWAP_TYPE_MASK = (1 << PM_SWAP_TYPE_BITS) - 1
PM_SWAP_OFFSET_MASK = PM_PFRAME_MASK >> PM_SWAP_TYPE_BITS  # bits 5-54
PM_SOFT_DIRTY_BIT = 55
PM_MMAP_EXCLUSIVE_BIT = 56
PM_UFFD_WP_BIT = 57
PM_GUARD_REGION_BIT = 58
PM_FILE_BIT = 61
PM_SWAP_BIT = 62
PM_PRESENT_BIT = 63


class PM(enum.IntFlag):
    """Flag bits of a pagemap entry (everything above the frame field)."""

    SOFT_DIRTY = 1 << PM_SOFT_DIRTY_BIT
    MMAP_EXCLUSIVE = 1 << PM_MMAP_EXCLUSIVE_BIT
    UFFD_WP = 1 << PM_UFFD_WP_BIT
    GUARD_REGION = 1 << PM_GUARD_REGION_BIT
    FILE = 1 << PM_FILE_BIT
    SWAP = 1 << PM_SWAP_BIT
    PRESENT = 1 << PM_PRESENT_BIT


PM_FLAGS_MASK = int(
    PM.SOFT_DIRTY | PM.MMAP_EXCLUSIVE | PM.UFFD_WP | PM.GUARD_REGION | PM.FILE | PM.SWAP | PM.PRESENT
)
# Bits 59-60 are always zero on every kernel we know; Entry keeps them anyway
# (``reserved``) so that decode/encode round-trips every u64.
PM_RESERVED_MASK = (1 << 59) | (1 << 60)
U64_MASK = (1 << 64) - 1

# Swap "types" that are not swap devices (include/linux/swapops.h).
SWP_PTE_MARKER = 31  # always the top 5-bit type
PTE_MARKER_UFFD_WP = 1 << 0
PTE_MARKER_POISONED = 1 << 1
PTE_MARKER_GUARD = 1 << 2


@dataclass(frozen=True, slots=True)
class Entry:
    """One pagemap entry as a typed, immutable value.

    ``frame`` is bits 0-54 verbatim: the PFN of a present page, or
    ``type | offset << 5`` for a swap-format entry.  It reads as 0 when the
    opener lacks CAP_SYS_ADMIN (the flags are still exact).
    """

    frame: int = 0
    soft_dirty: bool = False
    exclusive: bool = False
    uffd_wp: bool = False
    guard: bool = False
    file: bool = False
    swapped: bool = False
    present: bool = False
    reserved: int = 0  # bits 59-60, kept so that any u64 round-trips

    def __post_init__(self) -> None:
        if not 0 <= self.frame <= PM_PFRAME_MASK:
            raise ValueError(f"frame {self.frame:#x} does not fit in bits 0-54")
        if self.reserved & ~PM_RESERVED_MASK:
            raise ValueError(f"reserved bits {self.reserved:#x} are outside bits 59-60")

    @classmethod
    def decode(cls, value: int) -> Entry:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"a pagemap entry is an int, not {type(value).__name__}")
        if not 0 <= value <= U64_MASK:
            raise ValueError(f"{value:#x} is not a 64-bit unsigned value")
        return cls(
            frame=value & PM_PFRAME_MASK,
            soft_dirty=bool(value >> PM_SOFT_DIRTY_BIT & 1),
            exclusive=bool(value >> PM_MMAP_EXCLUSIVE_BIT & 1),
            uffd_wp=bool(value >> PM_UFFD_WP_BIT & 1),
            guard=bool(value >> PM_GUARD_REGION_BIT & 1),
            file=bool(value >> PM_FILE_BIT & 1),
            swapped=bool(value >> PM_SWAP_BIT & 1),
            present=bool(value >> PM_PRESENT_BIT & 1),
            reserved=value & PM_RESERVED_MASK,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        if len(data) != ENTRY_SIZE:
            raise ValueError(f"a pagemap entry is {ENTRY_SIZE} bytes, got {len(data)}")
        return cls.decode(int.from_bytes(data, "little"))

    def encode(self) -> int:
        return (
            self.frame
            | self.soft_dirty << PM_SOFT_DIRTY_BIT
            | self.exclusive << PM_MMAP_EXCLUSIVE_BIT
            | self.uffd_wp << PM_UFFD_WP_BIT
            | self.guard << PM_GUARD_REGION_BIT
            | self.file << PM_FILE_BIT
            | self.swapped << PM_SWAP_BIT
            | self.present << PM_PRESENT_BIT
            | self.reserved
        )

    def to_bytes(self) -> bytes:
        return self.encode().to_bytes(ENTRY_SIZE, "little")

    @property
    def flags(self) -> PM:
        return PM(self.encode() & PM_FLAGS_MASK)

    @property
    def pfn(self) -> int | None:
        """The page frame number of a present page (0 if hidden), else None."""
        return self.frame if self.present else None

    @property
    def swap_type(self) -> int | None:
        return self.frame & PM_SWAP_TYPE_MASK if self.swapped else None

    @property
    def swap_offset(self) -> int | None:
        return self.frame >> PM_SWAP_TYPE_BITS if self.swapped else None

    @property
    def is_marker(self) -> bool:
        """A PTE marker (uffd-wp, guard, poison); only visible with PFNs shown."""
        return self.swapped and self.swap_type == SWP_PTE_MARKER

    @classmethod
    def swap(cls, swap_type: int, offset: int, **flags: bool) -> Entry:
        """A swap-format entry as pagemap reports it: ``type | offset << 5``."""
        if not 0 <= swap_type <= PM_SWAP_TYPE_MASK:
            raise ValueError(f"swap type {swap_type} does not fit in 5 bits")
        if not 0 <= offset <= PM_SWAP_OFFSET_MASK:
            raise ValueError(f"swap offset {offset:#x} does not fit in 50 bits")
        return cls(frame=swap_type | offset << PM_SWAP_TYPE_BITS, swapped=True, **flags)


# -- PAGEMAP_SCAN (include/uapi/linux/fs.h, since 6.7) ------------------------


class PageCategory(enum.IntFlag):
    """``PAGE_IS_*`` categories of PAGEMAP_SCAN."""

    WPALLOWED = 1 << 0
    WRITTEN = 1 << 1
    FILE = 1 << 2
    PRESENT = 1 << 3
    SWAPPED = 1 << 4
    PFNZERO = 1 << 5
    HUGE = 1 << 6
    SOFT_DIRTY = 1 << 7  # accepted since 6.8 (6.7 rejects it with EINVAL)
    GUARD = 1 << 8  # accepted since 6.15


PM_SCAN_CATEGORIES_6_7 = int(PageCategory(0x7F))  # WPALLOWED..HUGE
PM_SCAN_CATEGORIES = int(PageCategory(0x1FF))  # every category we know


class ScanFlag(enum.IntFlag):
    WP_MATCHING = 1 << 0
    CHECK_WPASYNC = 1 << 1


PM_SCAN_FLAGS = int(ScanFlag.WP_MATCHING | ScanFlag.CHECK_WPASYNC)

# struct pm_scan_arg: 12 x u64.  walk_end is written back by the kernel.
PM_SCAN_ARG_FIELDS = (
    "size",
    "flags",
    "start",
    "end",
    "walk_end",
    "vec",
    "vec_len",
    "max_pages",
    "category_inverted",
    "category_mask",
    "category_anyof_mask",
    "return_mask",
)
PM_SCAN_ARG = struct.Struct("<12Q")
PM_SCAN_ARG_SIZE = PM_SCAN_ARG.size  # 96
# struct page_region: start, end (exclusive), categories.
PAGE_REGION = struct.Struct("<3Q")
PAGE_REGION_SIZE = PAGE_REGION.size  # 24


def _ioc(direction: int, type_: int, nr: int, size: int) -> int:
    # asm-generic/ioctl.h: dir 2 bits at 30, size 14 bits at 16, type at 8.
    return direction << 30 | size << 16 | type_ << 8 | nr


_IOC_WRITE, _IOC_READ = 1, 2
PAGEMAP_SCAN = _ioc(_IOC_READ | _IOC_WRITE, ord("f"), 16, PM_SCAN_ARG_SIZE)  # 0xc0606610

# -- clear_refs values (fs/proc/task_mmu.c enum clear_refs_types) -------------


class ClearRefs(enum.IntEnum):
    ALL = 1
    ANON = 2
    MAPPED = 3
    SOFT_DIRTY = 4
    MM_HIWATER_RSS = 5


# -- the generated C header ----------------------------------------------------

_C_CONSTANTS: tuple[tuple[str, int], ...] = (
    ("SD_PAGE_SHIFT", PAGE_SHIFT),
    ("SD_PM_PFRAME_MASK", PM_PFRAME_MASK),
    ("SD_PM_SOFT_DIRTY", int(PM.SOFT_DIRTY)),
    ("SD_PM_MMAP_EXCLUSIVE", int(PM.MMAP_EXCLUSIVE)),
    ("SD_PM_UFFD_WP", int(PM.UFFD_WP)),
    ("SD_PM_GUARD_REGION", int(PM.GUARD_REGION)),
    ("SD_PM_FILE", int(PM.FILE)),
    ("SD_PM_SWAP", int(PM.SWAP)),
    ("SD_PM_PRESENT", int(PM.PRESENT)),
    ("SD_PM_FLAGS_MASK", PM_FLAGS_MASK),
    ("SD_PAGEMAP_SCAN", PAGEMAP_SCAN),
    ("SD_PM_SCAN_ARG_SIZE", PM_SCAN_ARG_SIZE),
    ("SD_PAGE_REGION_SIZE", PAGE_REGION_SIZE),
    ("SD_PM_SCAN_WP_MATCHING", int(ScanFlag.WP_MATCHING)),
    ("SD_PM_SCAN_CHECK_WPASYNC", int(ScanFlag.CHECK_WPASYNC)),
) + tuple((f"SD_PAGE_IS_{c.name}", int(c)) for c in PageCategory)


def c_header() -> str:
    """Text of ``csrc/pagemap_abi.h``: the C scanner's numbers, from here.

    The header is generated at build time by ``setup.py`` and checked in;
    ``tests/test_pagemap_abi.py`` fails if the two drift apart.
    """
    lines = [
        "/* Generated from softdirty/pagemap.py by softdirty.pagemap.c_header(). Do not edit. */",
        "#ifndef SOFTDIRTY_PAGEMAP_ABI_H",
        "#define SOFTDIRTY_PAGEMAP_ABI_H",
        "",
    ]
    lines += [f"#define {name} 0x{value:x}ULL" for name, value in _C_CONSTANTS]
    lines += [
        "",
        "/* struct pm_scan_arg, 12 x u64 */",
        "struct sd_pm_scan_arg {",
        *(f"    unsigned long long {f};" for f in PM_SCAN_ARG_FIELDS),
        "};",
        "",
        "struct sd_page_region {",
        "    unsigned long long start;",
        "    unsigned long long end;",
        "    unsigned long long categories;",
        "};",
        "",
        "#endif",
        "",
    ]
    return "\n".join(lines)
