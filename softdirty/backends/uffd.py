"""The uffd back end: userfaultfd write-protect in async mode, harvested by PAGEMAP_SCAN.

Where soft-dirty is missing (our hosts, arm64, many cloud kernels), Linux
6.7+ offers the same information with the polarity reversed: register a
range with a userfaultfd in write-protect mode with ``UFFD_FEATURE_WP_ASYNC``,
write-protect ("arm") it, and every write simply clears the page's uffd-wp
bit, with no message to read.  ``PAGEMAP_SCAN`` then lists the pages without
the bit (``PAGE_IS_WRITTEN``) and, with ``PM_SCAN_WP_MATCHING``, protects
them again in the same pass, page by page under the page-table lock: a write
lands either before the scan reaches its page (reported now) or after
(reported next time).  No write is lost and nothing is frozen.

What each pass does (``reset`` and ``harvest`` share it):

1. read the maps and ask the kernel which VMAs are *not* registered in
   WP-async mode (a PAGEMAP_SCAN with ``PAGE_IS_WPALLOWED`` inverted);
2. harvest (or, for ``reset``, simply re-arm) the ranges we registered;
3. register and arm what is new: a VMA created since the last pass, one that
   lost its registration (``mremap`` moves a range out of it: spec section 6)
   or grew; it is reported whole, with ``NEW_MAPPING``, ``MOVED`` or
   ``PROTECTION_LOST``;
4. report what cannot be tracked (``[vvar]``, ``[vsyscall]``, ``VM_PFNMAP``,
   ranges someone else's uffd owns, registration refused, very large VMAs)
   as ``UNTRACKED``, every time: never as clean.

Causes of harvested ranges: ``WRITTEN`` for a page that is there (present or
swapped) and lost its protection, i.e. was written; ``PROTECTION_LOST`` for a
page with nothing behind it or only the shared zero page (zapped by
``MADV_DONTNEED`` and perhaps read since, or never armed): not written, but
its content may have changed (to zeros); ``HUGE`` added for huge pages (a write to an
armed THP splits it and marks only 4 KiB, so ``HUGE`` shows up for hugetlb
and for THPs faulted in unarmed ranges).  With ``nohugepage=True`` every
registered range also gets ``MADV_NOHUGEPAGE`` for 4 KiB precision.

``PROT_NONE`` VMAs are not registered: they cannot be written while so, and
arming allocates page tables for the whole range (about size/512 bytes),
which is also why VMAs above ``max_vma_bytes`` are reported ``UNTRACKED``
rather than armed.

Closing: we hold the only reference to the uffd (an injected one's copy in
the target is closed), so closing it, or our death, unregisters every range
and drops every protection bit in the target.
"""

from __future__ import annotations

import errno
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence

from softdirty import _libc, scanner
from softdirty.backends.base import Backend, Harvest
from softdirty.dirtyset import Cause
from softdirty.errors import AddressSpaceReplaced, ProcessGone, SoftDirtyError, Unsupported
from softdirty.maps import Vma
from softdirty.pagemap import PageCategory, ScanFlag
from softdirty.process import TASK_SIZE_4LEVEL, ProcessInterface, UffdInterface
from softdirty.uffd_abi import (
    UFFD_FEATURE_WP_ASYNC,
    UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
    UFFD_FEATURE_WP_UNPOPULATED,
    UFFDIO_REGISTER_MODE_WP,
)

FEATURES = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM
DEFAULT_MAX_VMA_BYTES = 1 << 36  # 64 GiB: arming it would allocate ~128 MiB of page tables

_WA = int(PageCategory.WPALLOWED)
_WRITTEN = int(PageCategory.WRITTEN)
_BACKED = int(PageCategory.PRESENT | PageCategory.SWAPPED)
_HUGE = int(PageCategory.HUGE)
_ZERO = int(PageCategory.PFNZERO)
_RETURN = _WRITTEN | _BACKED | _HUGE | _ZERO
_WP = int(ScanFlag.WP_MATCHING)

Ident = tuple[str, int, str]  # (dev, inode, path): what a VMA maps


def ident(vma: Vma) -> Ident:
    return (vma.dev, vma.inode, vma.path)


def _prot_none(vma: Vma) -> bool:
    return vma.perms[:3] == "---"


def _cut(start: int, end: int, cuts: Sequence[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    """[start, end) split into (s, e, inside any of the sorted, disjoint ``cuts``)."""
    out = []
    pos = start
    i = max(bisect_right(cuts, (start, 1 << 64)) - 1, 0)
    while i < len(cuts) and cuts[i][0] < end:
        s, e = max(cuts[i][0], start), min(cuts[i][1], end)
        i += 1
        if e <= s:
            continue
        if s > pos:
            out.append((pos, s, False))
        out.append((s, e, True))
        pos = e
    if pos < end:
        out.append((pos, end, False))
    return out


class UffdBackend(Backend):
    """Tracks writes with uffd-wp async + PAGEMAP_SCAN; re-arms atomically at every harvest."""

    name = "uffd"

    def __init__(self, proc: ProcessInterface, *, nohugepage: bool = False,
                 max_vma_bytes: int | None = DEFAULT_MAX_VMA_BYTES) -> None:
        super().__init__(proc)
        if not isinstance(nohugepage, bool):
            raise TypeError(f"nohugepage must be a bool, not {type(nohugepage).__name__}")
        if max_vma_bytes is not None and (isinstance(max_vma_bytes, bool) or not isinstance(max_vma_bytes, int)
                                          or max_vma_bytes <= 0):
            raise ValueError(f"max_vma_bytes must be a positive int or None, not {max_vma_bytes!r}")
        works = proc.feature("uffd_wp_async")
        if not works.ok:
            raise Unsupported("the uffd back end", works.reason)
        self.nohugepage = nohugepage
        self.max_vma_bytes = max_vma_bytes
        # Ranges we registered and believe still registered: sorted (start, end, ident).
        self._ours: list[tuple[int, int, Ident]] = []
        # VMAs whose registration failed, by identity, with the reason (not retried while unchanged).
        self._refused: dict[tuple[int, int, str, Ident], str] = {}
        # What a failed harvest had already reported and re-armed: handed out by the next one.
        self._pending: array[int] = array("Q")
        self._madvise: Callable[[Sequence[tuple[int, int]], int], None] | None = None
        self.proc.pagemap_fileno()  # bind the pagemap fd to this mm now (exec is then detected)
        try:
            self.uffd: UffdInterface = proc.open_uffd(FEATURES)
        except OSError as exc:
            raise self._error(exc) from None
        if nohugepage:
            self._madvise = self._madviser()
        self._closed = False

    def _madviser(self) -> Callable[[Sequence[tuple[int, int]], int], None]:
        """madvise in the target: the live uffd's (batched, by injection if need be) or the process's own."""
        batched = getattr(self.uffd, "madvise", None)
        if batched is not None:
            return batched  # type: ignore[no-any-return]
        single = getattr(self.proc, "madvise", None)
        if single is None:
            self.uffd.close()
            raise Unsupported("nohugepage", f"{type(self.proc).__name__} offers no way to madvise the target")

        def each(ranges: Sequence[tuple[int, int]], advice: int) -> None:
            for start, length in ranges:
                single(start, length, advice)

        return each

    @property
    def rearms_on_harvest(self) -> bool:
        return True

    # -- errors ---------------------------------------------------------------------------
    def _error(self, exc: BaseException) -> BaseException:
        """Our typed error for a failure on the target's mm (exit and exec told apart)."""
        if isinstance(exc, AddressSpaceReplaced):
            return exc
        if isinstance(exc, ProcessGone) or (isinstance(exc, OSError) and exc.errno == errno.ESRCH):
            return self.proc.mm_gone_error()
        if isinstance(exc, OSError):
            translate = getattr(self.proc, "scan_error", None)
            if translate is not None:
                out: BaseException = translate(exc)
                return self._error(out) if isinstance(out, ProcessGone) else out
        return exc

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the uffd back end is closed")

    # -- PAGEMAP_SCAN ---------------------------------------------------------------------------
    def _scan(self, start: int, end: int, **kw: int) -> scanner.ScanRegions:
        try:
            fd = self.proc.pagemap_fileno()
            if fd is not None:
                return scanner.pagemap_scan(fd, start, end, **kw)
            return scanner.pagemap_scan_loop(self.proc.pagemap_scan_ioctl, start, end, **kw)
        except (OSError, SoftDirtyError) as exc:
            raise self._error(exc) from None

    def _arm(self, start: int, end: int) -> None:
        # No output vector: the kernel's fast path protects every entry (holes get markers).
        self._scan(start, end, flags=_WP, vec_len=0)

    def _unregistered(self, start: int, end: int) -> list[tuple[int, int]]:
        """Ranges the kernel walks whose VMA is not registered in WP-async mode (spec 5.3)."""
        got = self._scan(start, end, category_inverted=_WA, category_mask=_WA, return_mask=0)
        r = got.ranges
        return [(r[i], r[i + 1]) for i in range(0, len(r), 3)]

    def _wp_allowed(self, start: int, end: int) -> bool:
        got = self._scan(start, end, category_mask=_WA, return_mask=_WA, max_pages=1, vec_len=1)
        return len(got.ranges) > 0

    # -- the pass -----------------------------------------------------------------------------
    def reset(self) -> None:
        self._check_open()
        self._pending = array("Q")
        self._pass(report=False)

    def harvest(self) -> Harvest:
        self._check_open()
        out: array[int] = array("Q")
        try:
            got = self._pass(report=True, out=out)
        except BaseException:
            # Pages in ``out`` are re-armed already: losing them would lose their writes.
            self._pending.extend(out)
            raise
        if self._pending:
            got.triples[:0] = self._pending
            got.notes.append(f"{len(self._pending) // 3} ranges from a harvest that failed before returning")
            self._pending = array("Q")
        return got

    def _read_maps(self) -> list[Vma]:
        try:
            vmas = self.proc.read_maps()
        except (OSError, SoftDirtyError) as exc:
            raise self._error(exc) from None
        if not vmas:  # a zombie, or an exec in progress: no mm to track
            self.proc.ensure_alive()
            raise self.proc.mm_gone_error()
        return vmas

    def _pass(self, report: bool, out: array[int] | None = None) -> Harvest:
        vmas = self._read_maps()
        out = array("Q") if out is None else out
        notes: list[str] = []
        untracked = int(Cause.UNTRACKED)

        def untrack(s: int, e: int, vma: Vma, why: str) -> None:
            out.extend((s, e, untracked))
            notes.append(f"{vma.name} {s:#x}-{e:#x}: untracked: {why}")

        user = [v for v in vmas if v.end <= TASK_SIZE_4LEVEL]
        for v in vmas:
            if v.end > TASK_SIZE_4LEVEL:
                untrack(v.start, v.end, v, "above the user address range (pagemap does not cover it)")
        unreg = self._unregistered(user[0].start, user[-1].end) if user else []
        ours = [(s, e) for s, e, _ in self._ours]
        old_ours = self._ours
        keep: list[tuple[int, int, Ident]] = []
        fresh: list[tuple[int, int, Vma, bool]] = []  # (start, end, vma, needs registering)
        foreign: list[tuple[int, int]] = []
        for v in user:
            for s, e, not_registered in _cut(v.start, v.end, unreg):
                if not_registered:
                    why = self._why_not(v)
                    if why == "":
                        continue  # PROT_NONE: cannot be written while so; registered when that changes
                    if why is not None:
                        untrack(s, e, v, why)
                    else:
                        fresh.append((s, e, v, True))
                    continue
                for ps, pe, mine in _cut(s, e, ours):
                    if mine and self._ident_at(ps) == ident(v):
                        keep.append((ps, pe, ident(v)))
                    elif v.special:
                        untrack(ps, pe, v, "special mapping")
                    elif not self._wp_allowed(ps, pe):
                        untrack(ps, pe, v, "PAGEMAP_SCAN does not walk it (VM_PFNMAP or similar)")
                    elif self._touches(ps, pe, ident(v)):
                        fresh.append((ps, pe, v, False))  # a registered VMA of ours grew
                    else:
                        foreign.append((ps, pe))
                        untrack(ps, pe, v, "registered by another userfaultfd")
        self._ours = keep
        self._harvest_ours(keep, foreign, out if report else None)
        self._add_fresh(fresh, old_ours, vmas, out if report else None, untrack)
        if not report:
            return Harvest(array("Q"), vmas, notes)
        return Harvest(out, vmas, notes)

    def _ident_at(self, addr: int) -> Ident | None:
        i = bisect_right(self._ours, (addr, 1 << 64)) - 1
        if i >= 0 and self._ours[i][0] <= addr < self._ours[i][1]:
            return self._ours[i][2]
        return None

    def _touches(self, start: int, end: int, what: Ident) -> bool:
        return any(s <= end and start <= e and i == what for s, e, i in self._ours)

    def _why_not(self, vma: Vma) -> str | None:
        """Why a VMA is not registered: None (register it), "" (skip quietly) or the reason."""
        if vma.special:
            return "special mapping"
        if _prot_none(vma):
            return ""
        if self.max_vma_bytes is not None and vma.size > self.max_vma_bytes:
            return (f"{vma.size} bytes is above max_vma_bytes={self.max_vma_bytes} "
                    "(arming would allocate page tables for all of it)")
        return self._refused.get((vma.start, vma.end, vma.perms, ident(vma)))

    def _harvest_ours(self, ranges: list[tuple[int, int, Ident]], foreign: list[tuple[int, int]],
                      out: array[int] | None) -> None:
        # Gaps and unregistered VMAs are skipped by the kernel (WP_MATCHING without
        # CHECK_WPASYNC), so one walk may span them; never one over someone else's range.
        runs: list[list[int]] = []
        for s, e, _ in ranges:
            if runs and not any(runs[-1][1] <= fs < s for fs, _ in foreign):
                runs[-1][1] = e
            else:
                runs.append([s, e])
        for s, e in runs:
            if out is None:
                self._arm(s, e)
                continue
            got = self._scan(s, e, flags=_WP, category_mask=_WRITTEN, return_mask=_RETURN)
            r = got.ranges
            for i in range(0, len(r), 3):
                cats = r[i + 2]
                # No page, or the shared zero page (read-faulted after a zap): never
                # written, but unprotected and possibly changed (zeroed).
                cause = Cause.WRITTEN if cats & _BACKED and not cats & _ZERO else Cause.PROTECTION_LOST
                if cats & _HUGE:
                    cause |= Cause.HUGE
                out.extend((r[i], r[i + 1], int(cause)))

    def _add_fresh(self, fresh: list[tuple[int, int, Vma, bool]], old_ours: list[tuple[int, int, Ident]],
                   vmas: list[Vma], out: array[int] | None, untrack: Callable[[int, int, Vma, str], None]) -> None:
        registered: list[tuple[int, int, Vma]] = []
        for s, e, v, needs in fresh:
            if needs:
                try:
                    self.uffd.register(s, e - s, UFFDIO_REGISTER_MODE_WP)
                except OSError as exc:
                    if exc.errno == errno.ESRCH or not self._alive():
                        raise self._error(ProcessGone(self.proc.pid)) from None
                    why = f"UFFDIO_REGISTER refused it ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
                    self._refused[(v.start, v.end, v.perms, ident(v))] = why
                    untrack(s, e, v, why)
                    continue
                if not self._wp_allowed(s, e):
                    self._unregister_quietly(s, e)
                    why = "registered, but PAGEMAP_SCAN does not walk it (VM_PFNMAP or similar)"
                    self._refused[(v.start, v.end, v.perms, ident(v))] = why
                    untrack(s, e, v, why)
                    continue
            registered.append((s, e, v))
        if self._madvise is not None and registered:
            try:
                self._madvise([(s, e - s) for s, e, _ in registered], _libc.MADV_NOHUGEPAGE)
            except OSError as exc:
                raise self._error(exc) from None
        for s, e, v in registered:
            self._arm(s, e)
            self._insert((s, e, ident(v)))
            if out is not None:
                out.extend((s, e, int(self._fresh_cause(s, e, v, old_ours, vmas))))

    def _insert(self, rec: tuple[int, int, Ident]) -> None:
        i = bisect_right(self._ours, (rec[0], 1 << 64))
        self._ours.insert(i, rec)

    def _fresh_cause(self, start: int, end: int, vma: Vma, old_ours: list[tuple[int, int, Ident]],
                     vmas: list[Vma]) -> Cause:
        """Why a range we had not been tracking is reported whole."""
        what = ident(vma)
        mine = [r for r in old_ours if r[2] == what]
        if any(s < end and start < e for s, e, _ in mine):
            return Cause.PROTECTION_LOST  # same mapping, same place, registration gone
        for s, e, _ in mine:
            # A mapping of ours that is no longer where it was: it moved (mremap) here.
            still = sum(max(0, min(e, v.end) - max(s, v.start)) for v in vmas if ident(v) == what)
            if still < e - s and e - s >= end - start:
                return Cause.MOVED
        return Cause.NEW_MAPPING

    def _unregister_quietly(self, start: int, end: int) -> None:
        try:
            self.uffd.unregister(start, end - start)
        except OSError:
            pass

    def _alive(self) -> bool:
        try:
            self.proc.ensure_alive()
        except ProcessGone:
            return False
        return True

    @property
    def tracked_ranges(self) -> tuple[tuple[int, int], ...]:
        """What we registered and believe armed, as (start, end) pairs."""
        return tuple((s, e) for s, e, _ in self._ours)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ours = []
        # Ours is the only reference: the kernel unregisters and unprotects everything.
        self.uffd.close()

