"""Golden tests of softdirty.pagemap: every number against the kernel's documented/observed value.

Expected values are written out from Documentation/admin-guide/mm/pagemap.rst,
include/uapi/linux/fs.h and the raw entries observed on our hosts
(shared/spec/kernel-semantics.md sections 1 and 5), not computed from the
module under test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softdirty import pagemap
from softdirty.pagemap import PM, ClearRefs, Entry, PageCategory, ScanFlag

ROOT = Path(__file__).resolve().parent.parent
U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)

# -- single bits ---------------------------------------------------------------------

BITS = [
    ("soft_dirty", 55, PM.SOFT_DIRTY),
    ("exclusive", 56, PM.MMAP_EXCLUSIVE),
    ("uffd_wp", 57, PM.UFFD_WP),
    ("guard", 58, PM.GUARD_REGION),
    ("file", 61, PM.FILE),
    ("swapped", 62, PM.SWAP),
    ("present", 63, PM.PRESENT),
]
FIELDS = [name for name, _, _ in BITS]


@pytest.mark.parametrize(("field", "bit", "flag"), BITS)
def test_each_flag_bit_alone(field: str, bit: int, flag: PM) -> None:
    assert int(flag) == 1 << bit
    entry = Entry.decode(1 << bit)
    for other in FIELDS:
        assert getattr(entry, other) is (other == field), other
    assert entry.frame == 0 and entry.reserved == 0
    assert entry.flags == flag
    assert entry.encode() == 1 << bit
    assert Entry(**{field: True}).encode() == 1 << bit


def test_frame_and_reserved_bits() -> None:
    assert pagemap.PM_PFRAME_MASK == (1 << 55) - 1
    assert Entry.decode((1 << 55) - 1).frame == (1 << 55) - 1
    assert not any(getattr(Entry.decode((1 << 55) - 1), f) for f in FIELDS)
    for bit in (59, 60):
        e = Entry.decode(1 << bit)
        assert e.reserved == 1 << bit and e.frame == 0 and not any(getattr(e, f) for f in FIELDS)
        assert e.flags == PM(0)
    assert pagemap.PM_FLAGS_MASK == sum(1 << b for _, b, _ in BITS) == 0xE780000000000000


def test_every_bit_set() -> None:
    e = Entry.decode((1 << 64) - 1)
    assert all(getattr(e, f) for f in FIELDS)
    assert e.frame == (1 << 55) - 1 and e.reserved == (1 << 59) | (1 << 60)
    assert e.encode() == (1 << 64) - 1
    assert e.pfn == (1 << 55) - 1  # present wins for pfn ...
    assert e.swap_type == 31 and e.swap_offset == (1 << 50) - 1  # ... and swapped for the swap view


def test_combinations() -> None:
    written_anon = Entry.decode((1 << 63) | (1 << 56) | 0x1234)
    assert written_anon.present and written_anon.exclusive and written_anon.pfn == 0x1234
    assert not written_anon.file and written_anon.swap_type is None and written_anon.swap_offset is None
    file_page = Entry(frame=7, present=True, file=True)
    assert file_page.encode() == 0xA000000000000007
    sd_none = Entry.decode(1 << 55)  # a none PTE in a VM_SOFTDIRTY VMA
    assert sd_none.soft_dirty and not sd_none.present and sd_none.pfn is None


# -- raw values observed on real kernels -------------------------------------------------


def test_guard_marker() -> None:
    e = Entry.decode(0x440000000000009F)
    assert e.swapped and e.guard and not e.present and not e.uffd_wp
    assert e.swap_type == 31 == pagemap.SWP_PTE_MARKER
    assert e.swap_offset == 4 == pagemap.PTE_MARKER_GUARD
    assert e.is_marker
    assert Entry.swap(31, pagemap.PTE_MARKER_GUARD, guard=True).encode() == 0x440000000000009F
    wp = Entry.decode(0x460000000000009F)  # guard marker after WP_MATCHING: swp-uffd-wp bit too
    assert wp.guard and wp.uffd_wp and wp.swapped and wp.is_marker
    hidden = Entry.decode(0x4400000000000000)  # the same marker read without CAP_SYS_ADMIN
    assert hidden.guard and hidden.swapped and hidden.frame == 0 and not hidden.is_marker


def test_uffd_wp_marker() -> None:
    e = Entry.decode(0x420000000000003F)
    assert e.swapped and e.uffd_wp and not e.guard and not e.present
    assert e.swap_type == 31 and e.swap_offset == pagemap.PTE_MARKER_UFFD_WP == 1
    assert e.is_marker


@pytest.mark.parametrize("offset", [1, 2, 3, 8, 0x12345, (1 << 50) - 1])
def test_swap_entries(offset: int) -> None:
    raw = 0x4000000000000000 | offset << 5
    e = Entry.decode(raw)
    assert e.swapped and not e.present and not e.exclusive and not e.file and not e.uffd_wp
    assert e.swap_type == 0 and e.swap_offset == offset and e.pfn is None
    assert not e.is_marker
    assert Entry.swap(0, offset).encode() == raw
    wp = Entry.decode(0x4200000000000000 | offset << 5)  # swapped page that was uffd-wp'd
    assert wp.swapped and wp.uffd_wp and wp.swap_offset == offset
    assert Entry.swap(0, offset, uffd_wp=True).encode() == 0x4200000000000000 | offset << 5


def test_swap_offsets_1_to_8_frames() -> None:
    assert [Entry.swap(0, n).frame for n in range(1, 9)] == [0x20 * n for n in range(1, 9)]


def test_huge_zero_page() -> None:
    e = Entry.decode(0xA000000000245C00)
    assert e.present and e.file and not e.exclusive and not e.swapped
    assert e.pfn == 0x245C00


def test_unprivileged_present_exclusive() -> None:
    e = Entry.decode(0x8100000000000000)
    assert e.present and e.exclusive and e.pfn == 0 and e.flags == PM.PRESENT | PM.MMAP_EXCLUSIVE


def test_hugetlb_uffd_wp_marker() -> None:
    e = Entry.decode(0x0200000000000000)
    assert e.uffd_wp and not e.swapped and not e.present and e.frame == 0
    assert e.swap_type is None and not e.is_marker


# -- round trips -------------------------------------------------------------------------


@given(U64)
def test_decode_encode_round_trip(value: int) -> None:
    e = Entry.decode(value)
    assert e.encode() == value
    assert Entry.from_bytes(value.to_bytes(8, "little")) == e
    assert e.to_bytes() == value.to_bytes(8, "little")
    assert int(e.flags) == value & 0xE780000000000000


@given(
    st.integers(0, (1 << 55) - 1),
    st.lists(st.booleans(), min_size=7, max_size=7),
    st.sampled_from([0, 1 << 59, 1 << 60, (1 << 59) | (1 << 60)]),
)
def test_encode_decode_round_trip(frame: int, flags: list[bool], reserved: int) -> None:
    e = Entry(frame, **dict(zip(FIELDS, flags, strict=True)), reserved=reserved)
    assert Entry.decode(e.encode()) == e
    assert e.encode() >> 55 & 1 == flags[0] and e.encode() >> 63 == flags[6]


@pytest.mark.parametrize(
    ("value", "error"),
    [(-1, ValueError), (1 << 64, ValueError), (True, TypeError), (1.0, TypeError), ("0", TypeError)],
)
def test_decode_rejects(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        Entry.decode(value)  # type: ignore[arg-type]


def test_constructor_and_bytes_reject() -> None:
    with pytest.raises(ValueError, match="bits 0-54"):
        Entry(frame=1 << 55)
    with pytest.raises(ValueError, match="59-60"):
        Entry(reserved=1 << 58)
    with pytest.raises(ValueError, match="8 bytes"):
        Entry.from_bytes(b"\0" * 7)
    with pytest.raises(ValueError):
        Entry.swap(32, 0)
    with pytest.raises(ValueError):
        Entry.swap(0, 1 << 50)


# -- PAGEMAP_SCAN and clear_refs numbers ----------------------------------------------------


def test_pagemap_scan_abi() -> None:
    assert pagemap.PAGEMAP_SCAN == 0xC0606610
    assert pagemap.PM_SCAN_ARG_SIZE == pagemap.PM_SCAN_ARG.size == 96
    assert pagemap.PAGE_REGION_SIZE == pagemap.PAGE_REGION.size == 24
    assert pagemap.PM_SCAN_ARG_FIELDS == (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask",
    )
    assert {c.name: int(c) for c in PageCategory} == {
        "WPALLOWED": 1, "WRITTEN": 2, "FILE": 4, "PRESENT": 8, "SWAPPED": 16,
        "PFNZERO": 32, "HUGE": 64, "SOFT_DIRTY": 128, "GUARD": 256,
    }
    assert pagemap.PM_SCAN_CATEGORIES_6_7 == 0x7F and pagemap.PM_SCAN_CATEGORIES == 0x1FF
    assert int(ScanFlag.WP_MATCHING) == 1 and int(ScanFlag.CHECK_WPASYNC) == 2 and pagemap.PM_SCAN_FLAGS == 3
    assert [int(v) for v in ClearRefs] == [1, 2, 3, 4, 5] and int(ClearRefs.SOFT_DIRTY) == 4


# -- the generated C header -----------------------------------------------------------------

HEADER = ROOT / "csrc" / "pagemap_abi.h"


def test_header_matches_c_header() -> None:
    """csrc/pagemap_abi.h is checked in; regenerate with python -m softdirty._build."""
    assert HEADER.read_text() == pagemap.c_header(), "csrc/pagemap_abi.h drifted: run python -m softdirty._build"


def test_header_defines() -> None:
    defines = {m[0]: int(m[1], 16) for m in re.findall(r"#define (SD_\w+) 0x([0-9a-f]+)ULL", pagemap.c_header())}
    assert defines["SD_PAGEMAP_SCAN"] == 0xC0606610
    assert defines["SD_PM_SOFT_DIRTY"] == 1 << 55 and defines["SD_PM_PRESENT"] == 1 << 63
    assert defines["SD_PM_UFFD_WP"] == 1 << 57 and defines["SD_PM_GUARD_REGION"] == 1 << 58
    assert defines["SD_PAGE_IS_GUARD"] == 256 and defines["SD_PAGE_IS_WRITTEN"] == 2
    assert defines["SD_PM_SCAN_ARG_SIZE"] == 96 and defines["SD_PAGE_REGION_SIZE"] == 24


def test_header_compiles_to_the_same_numbers(tmp_path: Path) -> None:
    """What a C compiler makes of the header: struct sizes, offsets, constants."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on PATH (the C scanner is then not built either)")
    src = tmp_path / "probe.c"
    src.write_text(
        '#include <stdio.h>\n#include <stddef.h>\n#include "pagemap_abi.h"\n'
        "int main(void) {\n"
        '  printf("%zu %zu %zu %zu %llx %llx\\n", sizeof(struct sd_pm_scan_arg), sizeof(struct sd_page_region),\n'
        "         offsetof(struct sd_pm_scan_arg, walk_end), offsetof(struct sd_pm_scan_arg, return_mask),\n"
        "         SD_PAGEMAP_SCAN, SD_PM_FLAGS_MASK);\n  return 0;\n}\n"
    )
    subprocess.run([cc, "-Wall", "-Werror", "-I", str(ROOT / "csrc"), str(src), "-o", str(tmp_path / "probe")],
                   check=True)
    out = subprocess.run([str(tmp_path / "probe")], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["96", "24", "32", "88", "c0606610", "e780000000000000"]
