"""Why each range is reported: causes a back end cannot see by itself.

The soft-dirty back end knows ``WRITTEN`` (bit 55 on a page) and
``NEW_MAPPING`` (``VM_SOFTDIRTY``: the whole VMA reads dirty).  The tracker
adds what needs more context (the uffd back end does all of this itself):

* ``MOVED``: mremap moves a page table entry by entry and marks every moved
  page soft-dirty (spec 3.2), so a moved mapping reads written.  A VMA that
  was not at its place at the last checkpoint, while a VMA mapping the same
  thing (device, inode, path) left its old place, was moved.  Anonymous
  VMAs all map "the same thing", so for them this is a guess, named as one;
* ``HUGE``: a write anywhere in a transparent huge page makes all of its 512
  entries dirty.  Candidates are fully dirty, 2 MiB-aligned blocks; each is
  confirmed with ``PAGEMAP_SCAN``'s ``PAGE_IS_HUGE`` (6.7+) or, failing that,
  with ``/proc/kpageflags`` (root: PFNs visible); otherwise left as is and
  said in the notes;
* ``UNTRACKED``: device mappings (``VM_PFNMAP``/``VM_IO``) are not walked by
  clear_refs or pagemap: such VMAs are reported whole, every time, never as
  clean (the back end itself does this for hugetlb, spec 1.6).
"""

from __future__ import annotations

import bisect
import os
from array import array
from collections.abc import Iterable, Sequence

from softdirty.dirtyset import Cause
from softdirty.maps import Vma
from softdirty.pagemap import PAGE_SHIFT, PAGE_SIZE, PM, PageCategory
from softdirty.process import TASK_SIZE_4LEVEL, ProcessInterface

HUGE_SIZE = 2 << 20
KPF_THP = 22
KPF_HUGE = 17
_PFN_MASK = (1 << 55) - 1

Ident = tuple[str, int, str]


def ident(vma: Vma) -> Ident:
    return (vma.dev, vma.inode, vma.path)


def untracked_reason(vma: Vma) -> str | None:
    """Why soft-dirty cannot see writes to ``vma`` beyond what the back end says (None: it can).

    (hugetlb VMAs are reported ``UNTRACKED`` by the soft-dirty back end itself.)
    """
    if not vma.writable or vma.end > TASK_SIZE_4LEVEL:
        return None  # nothing can write it (mprotect would make it a fresh, reported VMA)
    if vma.path.startswith("/dev/") and not vma.path.startswith(("/dev/zero", "/dev/shm/")):
        return "device mapping: VM_PFNMAP/VM_IO ranges are not walked by clear_refs or pagemap"
    return None


def moved_vmas(before: Sequence[Vma], after: Sequence[Vma]) -> list[tuple[Vma, bool]]:
    """VMAs of ``after`` that look moved since ``before``, each with "sure" (file-backed).

    A VMA is at its place if one of ``before`` covers it with the same
    identity and file offset; it was moved if not, and a VMA of the same
    identity (and, for files, an overlapping file range) is no longer all
    where it was.
    """
    by_ident: dict[Ident, list[Vma]] = {}
    for a in after:
        by_ident.setdefault(ident(a), []).append(a)

    def still_there(b: Vma) -> bool:
        covered = sum(max(0, min(b.end, a.end) - max(b.start, a.start)) for a in by_ident.get(ident(b), ()))
        return covered >= b.size

    gone: dict[Ident, list[Vma]] = {}
    for b in before:
        if not still_there(b):
            gone.setdefault(ident(b), []).append(b)
    if not gone:
        return []
    starts = [b.start for b in before]

    def same_place(v: Vma) -> bool:
        i = bisect.bisect_right(starts, v.start) - 1
        if i < 0:
            return False
        b = before[i]
        if not (b.start <= v.start and v.end <= b.end and ident(b) == ident(v)):
            return False
        return not v.inode or b.offset + (v.start - b.start) == v.offset

    out = []
    for v in after:
        candidates = gone.get(ident(v))
        if not candidates or same_place(v):
            continue
        if not v.inode:
            out.append((v, False))
            continue
        if any(b.offset < v.offset + v.size and v.offset < b.offset + b.size for b in candidates):
            out.append((v, True))
    return out


def _or_flags(triples: array[int], start: int, end: int, cause: int) -> array[int]:
    """OR ``cause`` into the parts of ranges inside [start, end) (splitting at the edges)."""
    out = array("Q")
    for i in range(0, len(triples), 3):
        s, e, f = triples[i], triples[i + 1], triples[i + 2]
        if e <= start or s >= end:
            out.extend((s, e, f))
            continue
        if s < start:
            out.extend((s, start, f))
        out.extend((max(s, start), min(e, end), f | cause))
        if e > end:
            out.extend((end, e, f))
    return out


def _has_new_mapping(triples: array[int], vma: Vma) -> bool:
    nm = int(Cause.NEW_MAPPING)
    return any(triples[i + 2] & nm and triples[i] < vma.end and vma.start < triples[i + 1]
               for i in range(0, len(triples), 3))


def _relabel_new_vmas(triples: array[int], vmas: Sequence[Vma], before: Sequence[Vma],
                      notes: list[str]) -> array[int]:
    """Say ``NEW_MAPPING`` for VMAs over addresses that had no mapping at the checkpoint.

    Such a VMA carries ``VM_SOFTDIRTY`` (mmap sets it), so every entry reads
    soft-dirty.  The back end can only tell that when some page of it is not
    present; a new VMA whose pages are all present (``MAP_POPULATE``, or all
    touched) would otherwise read as ``WRITTEN``, although nothing in it was
    necessarily written.
    """
    spans = sorted((b.start, b.end) for b in before)
    starts = [s for s, _ in spans]
    nm, written = int(Cause.NEW_MAPPING), int(Cause.WRITTEN)
    for vma in vmas:
        i = bisect.bisect_left(starts, vma.end)  # spans[:i] start below vma.end; they do not overlap
        if i and spans[i - 1][1] > vma.start:
            continue  # something was mapped here at the checkpoint
        if _has_new_mapping(triples, vma):
            continue  # the back end said so already
        relabeled = array("Q")
        changed = False
        for j in range(0, len(triples), 3):
            s, e, f = triples[j], triples[j + 1], triples[j + 2]
            if f == written and vma.start <= s and e <= vma.end:
                f, changed = nm, True
            relabeled.extend((s, e, f))
        if changed:
            triples = relabeled
            notes.append(f"{vma.name} {vma.start:#x}-{vma.end:#x}: mapped since the checkpoint (VM_SOFTDIRTY): "
                         "all of it reads dirty")
    return triples


def huge_candidates(triples: array[int], vmas: Iterable[Vma]) -> list[int]:
    """Start addresses of 2 MiB-aligned blocks that are reported whole, inside one VMA."""
    blocks = []
    spans = [(v.start, v.end) for v in vmas]
    for i in range(0, len(triples), 3):
        s, e = triples[i], triples[i + 1]
        b = -(-s // HUGE_SIZE) * HUGE_SIZE
        while b + HUGE_SIZE <= e:
            if any(vs <= b and b + HUGE_SIZE <= ve for vs, ve in spans):
                blocks.append(b)
            b += HUGE_SIZE
    return blocks


def confirm_huge(proc: ProcessInterface, blocks: list[int]) -> tuple[list[int], str | None]:
    """Which candidate blocks are huge pages, and a note if that cannot be told."""
    if not blocks:
        return [], None
    if proc.feature("pagemap_scan").ok:
        hc = int(PageCategory.HUGE)
        found = []
        for b in blocks:
            got, _ = proc.pagemap_scan_ioctl(b, b + HUGE_SIZE, category_mask=hc, return_mask=hc, vec_len=4)
            if len(got) and got[0] == b and got[1] == b + HUGE_SIZE:
                found.append(b)
        return found, None
    try:
        kpf = os.open("/proc/kpageflags", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return [], (f"{len(blocks)} fully dirty 2 MiB blocks may be transparent huge pages; cannot tell without "
                    f"PAGEMAP_SCAN (Linux 6.7+) or /proc/kpageflags ({exc.strerror})")
    try:
        found = []
        for b in blocks:
            raw = proc.read_pagemap((b >> PAGE_SHIFT) * 8, 8)
            entry = int.from_bytes(raw, "little") if len(raw) == 8 else 0
            pfn = entry & _PFN_MASK
            if not entry & PM.PRESENT or not pfn:
                continue  # swapped, or PFNs hidden (no CAP_SYS_ADMIN)
            flags = int.from_bytes(os.pread(kpf, 8, pfn * 8), "little")
            if flags & (1 << KPF_THP):
                found.append(b)
        return found, None
    finally:
        os.close(kpf)


def annotate(proc: ProcessInterface, triples: array[int], vmas: Sequence[Vma],
             before: Sequence[Vma] | None) -> tuple[array[int], list[str]]:
    """Soft-dirty triples with ``MOVED``, ``HUGE`` and ``UNTRACKED`` added, and notes saying why."""
    notes: list[str] = []
    out = array("Q", triples)
    for vma in vmas:
        why = untracked_reason(vma)
        if why is not None:
            out.extend((vma.start, vma.end, int(Cause.UNTRACKED)))
            notes.append(f"{vma.name} {vma.start:#x}-{vma.end:#x}: untracked: {why}")
    if before is not None:
        moved = moved_vmas(before, vmas)
        moved_starts = {vma.start for vma, _ in moved}
        out = _relabel_new_vmas(out, [v for v in vmas if v.start not in moved_starts], before, notes)
        for vma, sure in moved:
            if not sure and _has_new_mapping(out, vma):
                continue  # a fresh mmap (VM_SOFTDIRTY); a move copies the source's cleared flag
            out = _or_flags(out, vma.start, vma.end, int(Cause.MOVED))
            guess = "" if sure else " (anonymous: inferred from the VMA layout)"
            notes.append(f"{vma.name} {vma.start:#x}-{vma.end:#x}: moved since the checkpoint{guess}; "
                         "the kernel marks moved pages dirty")
    written = array("Q")
    for i in range(0, len(out), 3):
        if out[i + 2] == Cause.WRITTEN:
            written.extend(out[i : i + 3])
    blocks, why_not = confirm_huge(proc, huge_candidates(written, vmas))
    for b in blocks:
        out = _or_flags(out, b, b + HUGE_SIZE, int(Cause.HUGE))
    if blocks:
        notes.append(f"{len(blocks)} transparent huge pages: a write anywhere in one reports all "
                     f"{HUGE_SIZE // PAGE_SIZE} of its pages")
    if why_not:
        notes.append(why_not)
    return out, notes
