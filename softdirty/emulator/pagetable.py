"""4- or 5-level x86-64 page tables holding raw 64-bit entries.

Every table is a flat ``array('Q')`` of 512 raw entries.  A PTE table keeps a
second array beside it, ``pm``: the pagemap entry each PTE reads as (without
the VMA's soft-dirty bit), kept up to date on every PTE store, so that a
pagemap read is a copy of arrays rather than a walk over objects.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator

from softdirty.emulator.x86 import _PAGE_PSE, pte_present, table_entry

PTRS = 512
PMD_SHIFT = 21
PUD_SHIFT = 30
P4D_SHIFT = 39
PGD_SHIFT_5 = 48
PMD_SIZE = 1 << PMD_SHIFT
PUD_SIZE = 1 << PUD_SHIFT
PMD_MASK = ~(PMD_SIZE - 1)
_ZERO = bytes(8 * PTRS)


class PteTable:
    """The last level: 512 PTEs covering 2 MiB, plus their cached pagemap values."""

    __slots__ = ("pte", "pm", "base", "pfn", "owner")

    def __init__(self, base: int, pfn: int, owner: object) -> None:
        self.pte = array("Q", _ZERO)
        self.pm = array("Q", _ZERO)
        self.base = base
        self.pfn = pfn
        self.owner = owner  # the EmulatedProcess whose tables these are

    def empty(self) -> bool:
        # pte_none ignores A/D; a table is empty when every entry is none.
        return not any(v & ~0x60 for v in self.pte)

    def __repr__(self) -> str:
        return f"<PteTable {self.base:#x}>"


class Table:
    """PMD, PUD or P4D level: raw entries plus the lower tables they point to."""

    __slots__ = ("ents", "child", "base", "pfn", "shift", "owner")

    def __init__(self, base: int, pfn: int, shift: int, owner: object) -> None:
        self.ents = array("Q", _ZERO)
        self.child: list[Table | PteTable | None] = [None] * PTRS
        self.base = base
        self.pfn = pfn
        self.shift = shift  # the shift of the entries of this table (21 for a PMD table)
        self.owner = owner

    def __repr__(self) -> str:
        return f"<Table shift={self.shift} {self.base:#x}>"


def is_leaf(raw: int) -> bool:
    """A present (or PROT_NONE) huge leaf at PMD/PUD level."""
    return bool(raw & _PAGE_PSE) and pte_present(raw)


class PageTables:
    """One mm's page tables.  ``pmd_tables`` indexes PMD tables by ``addr >> 30``."""

    def __init__(self, new_pfn: Callable[[], int], owner: object, *, five_level: bool = False) -> None:
        self._new_pfn = new_pfn
        self.owner = owner
        self.five_level = five_level
        top_shift = PGD_SHIFT_5 if five_level else P4D_SHIFT
        self.pgd = Table(0, new_pfn(), top_shift, owner)
        self.pmd_tables: dict[int, Table] = {}

    # -- lookup and allocation --------------------------------------------------
    def pmd_table(self, addr: int, alloc: bool = False) -> Table | None:
        key = addr >> PUD_SHIFT
        t = self.pmd_tables.get(key)
        if t is not None or not alloc:
            return t
        table = self.pgd
        while table.shift > PMD_SHIFT:
            i = (addr >> table.shift) & (PTRS - 1)
            child = table.child[i]
            if child is None:
                span = 1 << table.shift
                child = Table(addr & ~(span - 1), self._new_pfn(), table.shift - 9, self.owner)
                table.child[i] = child
                table.ents[i] = table_entry(child.pfn)
            assert isinstance(child, Table)
            table = child
        self.pmd_tables[key] = table
        return table

    def pte_table(self, addr: int, alloc: bool = False) -> PteTable | None:
        """The PTE table for ``addr``; None if missing (or if the PMD is a huge leaf)."""
        pmdt = self.pmd_table(addr, alloc)
        if pmdt is None:
            return None
        i = (addr >> PMD_SHIFT) & (PTRS - 1)
        t = pmdt.child[i]
        if t is None and alloc and not pmdt.ents[i]:
            t = PteTable(addr & PMD_MASK, self._new_pfn(), self.owner)
            pmdt.child[i] = t
            pmdt.ents[i] = table_entry(t.pfn)
        return t  # type: ignore[return-value]

    def install_pte_table(self, pmdt: Table, i: int, t: PteTable) -> None:
        pmdt.child[i] = t
        pmdt.ents[i] = table_entry(t.pfn)

    def new_pte_table(self, base: int) -> PteTable:
        return PteTable(base, self._new_pfn(), self.owner)

    def pmd_tables_in(self, start: int, end: int) -> Iterator[tuple[int, Table]]:
        """(addr >> 30, PMD table) for the existing PMD tables meeting [start, end)."""
        if end <= start:
            return
        lo, hi = start >> PUD_SHIFT, (end - 1) >> PUD_SHIFT
        if hi - lo > len(self.pmd_tables):
            for key in sorted(self.pmd_tables):
                if lo <= key <= hi:
                    yield key, self.pmd_tables[key]
            return
        for key in range(lo, hi + 1):
            t = self.pmd_tables.get(key)
            if t is not None:
                yield key, t

    # -- freeing (free_pgtables) --------------------------------------------------
    def free_range(self, start: int, end: int, floor: int, ceiling: int) -> None:
        """Free every table meeting [start, end) whose whole span lies in [floor, ceiling).

        That is free_pgd_range(): a table survives if a remaining VMA shares its span.
        The PTEs must already be zapped.
        """
        self._free_in(self.pgd, start, end, floor, ceiling)

    def _free_in(self, table: Table, start: int, end: int, floor: int, ceiling: int) -> None:
        span = 1 << table.shift
        first = (start - table.base) >> table.shift if start > table.base else 0
        last = min(PTRS - 1, (end - 1 - table.base) >> table.shift)
        for i in range(max(0, first), last + 1):
            child = table.child[i]
            lo = table.base + i * span
            hi = lo + span
            if child is None:
                if table.shift == PMD_SHIFT and table.ents[i] and lo >= floor and hi <= ceiling:
                    table.ents[i] = 0  # a huge leaf is gone with its VMA (zapped already)
                continue
            if isinstance(child, Table):
                self._free_in(child, max(start, lo), min(end, hi), floor, ceiling)
            if lo >= floor and hi <= ceiling:
                table.child[i] = None
                table.ents[i] = 0
                if isinstance(child, Table) and child.shift == PMD_SHIFT:
                    self.pmd_tables.pop(lo >> PUD_SHIFT, None)

    def free_pte_table(self, pmdt: Table, i: int) -> None:
        pmdt.child[i] = None
        pmdt.ents[i] = 0
