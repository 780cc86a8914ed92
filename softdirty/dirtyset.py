"""Harvest results: run-length page ranges with causes, never an object per page."""

from __future__ import annotations

import bisect
import enum
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from softdirty import scanner
from softdirty.maps import Vma
from softdirty.pagemap import PAGE_SIZE


class Cause(enum.IntFlag):
    """Why a range is reported.  Several may hold at once."""

    WRITTEN = 1 << 0  # the kernel saw a write (soft-dirty bit, or uffd-wp cleared)
    NEW_MAPPING = 1 << 1  # the VMA is new since the checkpoint (VM_SOFTDIRTY): all of it reads dirty
    HUGE = 1 << 2  # part of a huge page: a write anywhere in it marks all of it
    MOVED = 1 << 3  # moved by mremap: the kernel marks moved pages dirty
    UNTRACKED = 1 << 4  # the back end cannot track this range (hugetlb, PFNMAP, ...): assume written
    PROTECTION_LOST = 1 << 5  # tracking was undone (fork, unregister): assume written


class Range(NamedTuple):
    start: int
    end: int  # exclusive
    flags: Cause

    @property
    def pages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE


@dataclass(frozen=True, slots=True)
class VmaSummary:
    vma: Vma
    pages: int  # pages of this VMA reported
    ranges: int  # ranges (or pieces of ranges) inside it


def normalize(triples: Sequence[int]) -> array[int]:
    """Sort flat ``(start, end, flags)`` triples, OR the flags of overlaps, coalesce.

    Adjacent ranges with equal flags merge; overlapping ranges are cut at
    every boundary and the pieces carry the union of the flags.
    """
    n = len(triples)
    if n % 3:
        raise ValueError("ranges come as flat (start, end, flags) triples")
    if n == 0:
        return array("Q")
    if isinstance(triples, array) and triples.typecode == "Q":
        # The usual input (a harvest): a few sorted runs, no overlaps.  The C library does it
        # without a Python step per range; None: overlaps, a bad range or no C library.
        fast = scanner.normalize_disjoint(triples)
        if fast is not None:
            return fast
    starts = triples[0::3]
    ends = triples[1::3]
    flags = triples[2::3]
    order = sorted(range(len(starts)), key=starts.__getitem__)
    for i in order:
        if starts[i] >= ends[i] or starts[i] % PAGE_SIZE or ends[i] % PAGE_SIZE:
            raise ValueError(f"bad range {starts[i]:#x}-{ends[i]:#x}")
    # Fast path: the common case (from one scan) has no overlaps.
    out = array("Q")
    prev_end = -1
    overlap = False
    for i in order:
        s, e, f = starts[i], ends[i], flags[i]
        if s < prev_end:
            overlap = True
            break
        if s == prev_end and out[-1] == f:
            out[-2] = e
        else:
            out.extend((s, e, f))
        prev_end = e
    if not overlap:
        return out
    # Sweep over boundaries, counting the open ranges of each flags value.
    opens = [(s, 1, f) for s, f in zip(starts, flags, strict=True)]
    closes = [(e, -1, f) for e, f in zip(ends, flags, strict=True)]
    events = sorted(opens + closes)
    open_count: dict[int, int] = {}
    out = array("Q")
    pos = events[0][0]
    for addr, delta, f in events:
        if addr > pos and any(open_count.values()):
            active = 0
            for value, c in open_count.items():
                if c:
                    active |= value
            if out and out[-2] == pos and out[-1] == active:
                out[-2] = addr
            else:
                out.extend((pos, addr, active))
        pos = addr
        open_count[f] = open_count.get(f, 0) + delta
    return out


class DirtySet:
    """The pages reported since a checkpoint: sorted, coalesced ranges.

    ``addr in dirty_set`` asks about the page holding ``addr``.  Ranges come
    as :class:`Range` values; ``triples`` is the flat ``array('Q')`` behind
    them, for code that wants no per-range objects at all.
    """

    __slots__ = ("_t", "_starts", "vma_list", "epoch", "backend", "pid", "notes")

    def __init__(
        self,
        triples: Sequence[int] = (),
        vmas: Iterable[Vma] = (),
        *,
        epoch: int = 0,
        backend: str = "",
        pid: int | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        self._t = normalize(triples)
        self._starts = self._t[0::3]
        self.vma_list = tuple(sorted(vmas, key=lambda v: v.start))
        self.epoch = epoch
        self.backend = backend
        self.pid = pid
        self.notes = tuple(notes)

    def _adopt(self, other: DirtySet) -> None:
        """Take ``other``'s already normalised ranges without normalising again."""
        self._t, self._starts, self.vma_list = other._t, other._starts, other.vma_list
        self.epoch, self.backend, self.pid, self.notes = other.epoch, other.backend, other.pid, other.notes

    @property
    def triples(self) -> array[int]:
        return self._t

    @property
    def ranges(self) -> tuple[Range, ...]:
        t = self._t
        return tuple(Range(t[i], t[i + 1], Cause(t[i + 2])) for i in range(0, len(t), 3))

    def __iter__(self) -> Iterator[Range]:
        t = self._t
        for i in range(0, len(t), 3):
            yield Range(t[i], t[i + 1], Cause(t[i + 2]))

    def __len__(self) -> int:
        return len(self._t) // 3

    def __bool__(self) -> bool:
        return bool(self._t)

    @property
    def page_count(self) -> int:
        t = self._t
        return sum(t[i + 1] - t[i] for i in range(0, len(t), 3)) // PAGE_SIZE

    @property
    def bytes(self) -> int:
        return self.page_count * PAGE_SIZE

    def __contains__(self, addr: object) -> bool:
        if isinstance(addr, bool) or not isinstance(addr, int):
            return False
        i = bisect.bisect_right(self._starts, addr) - 1
        return i >= 0 and addr < self._t[3 * i + 1]

    def flags_at(self, addr: int) -> Cause:
        """The causes reported for the page holding ``addr`` (0 if clean)."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._t[3 * i + 1]:
            return Cause(self._t[3 * i + 2])
        return Cause(0)

    def pages_in(self, start: int, end: int) -> int:
        """Reported pages inside [start, end)."""
        t = self._t
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        total = 0
        while 3 * i < len(t) and t[3 * i] < end:
            s, e = max(t[3 * i], start), min(t[3 * i + 1], end)
            if e > s:
                total += e - s
            i += 1
        return total // PAGE_SIZE

    def count(self, cause: Cause) -> int:
        """Pages whose causes include ``cause``."""
        t = self._t
        return sum(t[i + 1] - t[i] for i in range(0, len(t), 3) if t[i + 2] & cause) // PAGE_SIZE

    @property
    def vmas(self) -> tuple[VmaSummary, ...]:
        out = []
        for vma in self.vma_list:
            t = self._t
            i = max(bisect.bisect_right(self._starts, vma.start) - 1, 0)
            pages = pieces = 0
            while 3 * i < len(t) and t[3 * i] < vma.end:
                s, e = max(t[3 * i], vma.start), min(t[3 * i + 1], vma.end)
                if e > s:
                    pages += (e - s) // PAGE_SIZE
                    pieces += 1
                i += 1
            out.append(VmaSummary(vma, pages, pieces))
        return tuple(out)

    def union(self, other: DirtySet) -> DirtySet:
        """Both sets' pages, causes OR-ed where they overlap (for merging epochs)."""
        vmas = {(v.start, v.end): v for v in self.vma_list}
        vmas.update({(v.start, v.end): v for v in other.vma_list})
        return DirtySet(
            array("Q", self._t) + other._t,
            vmas.values(),
            epoch=max(self.epoch, other.epoch),
            backend=self.backend or other.backend,
            pid=self.pid if self.pid is not None else other.pid,
            notes=self.notes + other.notes,
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "backend": self.backend,
            "epoch": self.epoch,
            "pages": self.page_count,
            "bytes": self.bytes,
            "ranges": [[r.start, r.end, _cause_names(r.flags)] for r in self],
            "vmas": [
                {"start": s.vma.start, "end": s.vma.end, "path": s.vma.name, "pages": s.pages, "ranges": s.ranges}
                for s in self.vmas
                if s.pages
            ],
            "notes": list(self.notes),
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DirtySet) and self._t == other._t

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<DirtySet epoch={self.epoch} {len(self)} ranges, {self.page_count} pages>"


def _cause_names(flags: int) -> list[str]:
    return [c.name for c in Cause if flags & c and c.name]
