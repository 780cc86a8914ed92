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
   ``PROTECTION_LOST``, and armed with ``UFFDIO_WRITEPROTECT`` (PTEs the kernel left
   protected but writable when it dropped a registration: ``_protect``);
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


def _cause_of(cats: int) -> int:
    """The cause of a harvested region from its PAGEMAP_SCAN categories."""
    # No page, or the shared zero page (read-faulted after a zap): never
    # written, but unprotected and possibly changed (zeroed).
    cause = Cause.WRITTEN if cats & _BACKED and not cats & _ZERO else Cause.PROTECTION_LOST
    if cats & _HUGE:
        cause |= Cause.HUGE
    return int(cause)


class _CauseTable(dict[int, int]):
    def __missing__(self, cats: int) -> int:
        self[cats] = got = _cause_of(cats)
        return got


_CAUSE_OF = _CauseTable()
_PLAIN = _WRITTEN | int(PageCategory.PRESENT)  # written, present, not huge: the usual region
_WRITTEN_CAUSE = array("Q", [_cause_of(_PLAIN)])
_FOREIGN = "registered by another userfaultfd"


def ident(vma: Vma) -> Ident:
    return (vma.dev, vma.inode, vma.path)


def _prot_none(vma: Vma) -> bool:
    return vma.perms[:3] == "---"


def _cut(start: int, end: int, cuts: Sequence[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    """[start, end) split into (s, e, inside any of the sorted, disjoint ``cuts``)."""
    if start >= end:
        return []
    j = bisect_right(cuts, (start, 1 << 64))  # cuts[j - 1] is the last one starting at or before start
    if j and cuts[j - 1][1] >= end:
        return [(start, end, True)]  # inside one cut (the usual case: a VMA we registered)
    if (not j or cuts[j - 1][1] <= start) and (j == len(cuts) or cuts[j][0] >= end):
        return [(start, end, False)]  # touches none
    out = []
    pos = start
    i = max(j - 1, 0)
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


def _spans(user: Sequence[Vma], other: set[int]) -> list[tuple[int, int]]:
    """Sorted, disjoint ranges to register over: each maximal run of VMAs (``user``, sorted) not
    in ``other``, with the holes around it up to the VMAs of ``other`` around it."""
    out = []
    k, n = 0, len(user)
    while k < n:
        if k in other:
            k += 1
            continue
        j = k
        while j < n and j not in other:
            j += 1
        out.append((user[k - 1].end if k else user[k].start, user[j].start if j < n else user[j - 1].end))
        k = j
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

    def _protect(self, start: int, end: int) -> None:
        """Arm a range we (re)registered and report whole: UFFDIO_WRITEPROTECT, not ``_arm``.

        The kernel can leave uffd-wp bits in PTEs of a VMA it unregistered: mremap of a registered
        VMA next to one of ours merges them and drops the registration of the merged VMA
        (userfaultfd_reset_ctx, no EVENT_REMAP) without clearing its PTEs' bits, and an
        unregistered VMA moved by mremap keeps its PTEs' bits.  A write there (wp_page_reuse) or
        an mprotect to writable makes such a PTE writable with the bit still set.  ``_arm``'s
        fast path skips PTEs that have the bit, so after we register the VMA again every write
        to that page would go unseen forever; UFFDIO_WRITEPROTECT write-protects every PTE.
        It fails (ENOENT) on a range holding a VMA that is not registered (changed meanwhile):
        then part by part, registered parts this way, the rest by ``_arm`` (it skips them).
        """
        try:
            self.uffd.writeprotect(start, end - start, True)
            return
        except OSError as exc:
            if exc.errno == errno.ESRCH or not self._alive():
                raise self._error(ProcessGone(self.proc.pid)) from None
        pos = start
        for s, e in self._unregistered(start, end) + [(end, end)]:
            if pos < s:
                try:
                    self.uffd.writeprotect(pos, s - pos, True)
                except OSError as exc:
                    if exc.errno == errno.ESRCH or not self._alive():
                        raise self._error(ProcessGone(self.proc.pid)) from None
                    self._arm(pos, s)  # no VMA there (gone), or hugetlb alignment: what can be armed is
            pos = max(pos, e)

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
        other: set[int] = set()  # indices into ``user`` of VMAs a span must not reach over
        unknown: list[tuple[int, int, int]] = []  # registered, not by us as far as we know: (start, end, index)
        for k, v in enumerate(user):
            for s, e, not_registered in _cut(v.start, v.end, unreg):
                if not_registered:
                    why = self._why_not(v)
                    if v.special or (v.start, v.end, v.perms, ident(v)) in self._refused:
                        other.add(k)  # a span over it would fail (PROT_NONE and large VMAs may be in one)
                    if why == "":
                        continue  # PROT_NONE: cannot be written while so; armed when that changes
                    if why is not None:
                        untrack(s, e, v, why)
                    else:
                        fresh.append((s, e, v, True))
                    continue
                for ps, pe, mine in _cut(s, e, ours):
                    if mine and self._ident_at(ps) == ident(v):
                        keep.append((ps, pe, ident(v)))
                        continue
                    # Only what stays so bounds a span: not a VMA gone since the maps read
                    # (the scan no longer walks it, registering it fails).
                    if v.special:
                        why = "special mapping"
                        other.add(k)
                    elif not self._wp_allowed(ps, pe):
                        why = "PAGEMAP_SCAN does not walk it (VM_PFNMAP or similar)"
                    elif self._unregistered(ps, pe):
                        why = "changing while read (part registered, part not): sorted out next pass"
                    else:
                        unknown.append((ps, pe, k))  # registered: by us (grew, or a span took it in) or not
                        continue
                    untrack(ps, pe, v, why)
        self._ours = keep
        # Before any span is registered: a harvest walk may span holes and VMAs we register now.
        # Never over a range that may be another's.
        self._harvest_ours(keep, foreign + [(s, e) for s, e, _ in unknown], out if report else None)
        if keep:
            # The kernel drops a registration without telling us: a registered VMA mremap'd next to
            # one of ours merges with it, and the merged VMA then loses VM_UFFD_WP as a whole
            # (mremap_userfaultfd_prep, no EVENT_REMAP).  If that happened before our walk reached
            # it, the walk skipped it and its writes since the last harvest went unreported: report
            # it whole now (from here on it is a fresh, unregistered VMA to the next pass).
            lost = self._unregistered(keep[0][0], keep[-1][1])
            if lost:
                keep = self._drop_lost(keep, lost, out if report else None, notes)
                self._ours = keep
        done, ours_now = self._register_spans(fresh, unknown, _spans(user, other))
        for n, (ps, pe, k) in enumerate(unknown):
            v = user[k]
            why = self._whose(ps, pe, v, probe=n not in ours_now)
            if why is None:
                fresh.append((ps, pe, v, False))  # ours: armed and reported whole below
            elif why != "":  # "": ours, PROT_NONE: armed when that changes
                if why == _FOREIGN:
                    foreign.append((ps, pe))
                untrack(ps, pe, v, why)
        self._add_fresh(fresh, old_ours, vmas, out if report else None, untrack, done)
        if not report:
            return Harvest(array("Q"), vmas, notes)
        return Harvest(out, vmas, notes)

    def _ident_at(self, addr: int) -> Ident | None:
        i = bisect_right(self._ours, (addr, 1 << 64)) - 1
        if i >= 0 and self._ours[i][0] <= addr < self._ours[i][1]:
            return self._ours[i][2]
        return None

    def _whose(self, start: int, end: int, vma: Vma, probe: bool) -> str | None:
        """A registered range we do not track: None if ours (arm it), "" if ours but PROT_NONE (skip it
        quietly), else why it is untracked (``_FOREIGN`` if another userfaultfd owns it).

        Ours are VMAs that grew in place (they keep the registration) and VMAs that a span
        registered without our knowing them (``_add_fresh``).  Registering it again tells: the
        kernel skips what our context already owns (no change, no split) and refuses with EBUSY,
        before changing anything, a range with a VMA another context owns.
        """
        try:
            if probe:  # its span could not be registered (_register_spans): ask for it alone
                self.uffd.register(start, end - start, UFFDIO_REGISTER_MODE_WP)
        except OSError as exc:
            if exc.errno == errno.ESRCH or not self._alive():
                raise self._error(ProcessGone(self.proc.pid)) from None
            if exc.errno == errno.EBUSY:
                return _FOREIGN
            return f"registered, but UFFDIO_REGISTER refused it ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
        if _prot_none(vma):
            return ""
        if self.max_vma_bytes is not None and vma.size > self.max_vma_bytes:
            return (f"{vma.size} bytes is above max_vma_bytes={self.max_vma_bytes} "
                    "(arming would allocate page tables for all of it)")
        return None

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
            if runs and not (foreign and any(runs[-1][1] <= fs < s for fs, _ in foreign)):
                runs[-1][1] = e
            else:
                runs.append([s, e])
        for s, e in runs:
            if out is None:
                self._arm(s, e)
                continue
            r = self._scan(s, e, flags=_WP, category_mask=_WRITTEN, return_mask=_RETURN).ranges
            if r:
                # Categories -> causes without a Python step per range (harvests are often
                # thousands of ranges): one value for the usual case, else a table look-up.
                cats = r[2::3]
                n = len(cats)
                r[2::3] = _WRITTEN_CAUSE * n if cats.count(_PLAIN) == n else array("Q", map(_CAUSE_OF.__getitem__,
                                                                                           cats))
                out.extend(r)

    def _register_spans(self, fresh: list[tuple[int, int, Vma, bool]], unknown: list[tuple[int, int, int]],
                        spans: list[tuple[int, int]]) -> tuple[set[int], set[int]]:
        """Register, one UFFDIO_REGISTER per span, the spans holding ranges to register or registered
        ranges we do not know as ours; the indices into ``fresh`` so registered (the others are
        registered one by one) and into ``unknown`` so found ours (the others are asked one by one).

        Never with the bounds of the VMA as the maps read saw it: the target may have grown
        that VMA in place since (``mremap``, or an ``mmap`` next to it that merged), and
        registering the old bounds would split it (VM_UFFD_WP on a part only), so that the
        target's next ``mremap`` of its whole mapping fails with EFAULT.  A span reaches over
        the holes around the VMA up to the nearest VMA we cannot register: the VMA can only
        grow into those holes, and whatever the kernel finds in the span is registered whole.
        The kernel skips holes and VMAs our context already owns (no split there) and checks
        every VMA before it changes any, so a span is registered entirely or not at all.
        """
        done: set[int] = set()
        ours: set[int] = set()
        todo: dict[int, tuple[list[int], list[int]]] = {}

        def span_of(s: int, e: int) -> int:
            i = bisect_right(spans, (s, 1 << 64)) - 1
            return i if i >= 0 and spans[i][0] <= s and e <= spans[i][1] else -1

        for n, (s, e, _, needs) in enumerate(fresh):
            if needs and (i := span_of(s, e)) >= 0:
                todo.setdefault(i, ([], []))[0].append(n)
        for n, (s, e, _) in enumerate(unknown):
            if (i := span_of(s, e)) >= 0:
                todo.setdefault(i, ([], []))[1].append(n)
        for i, (members, known) in todo.items():
            lo, hi = spans[i]
            try:
                self.uffd.register(lo, hi - lo, UFFDIO_REGISTER_MODE_WP)
            except OSError as exc:
                if exc.errno == errno.ESRCH or not self._alive():
                    raise self._error(ProcessGone(self.proc.pid)) from None
                continue  # some VMA in the span cannot be registered (or is another's): one by one
            done.update(members)
            ours.update(known)
        return done, ours

    def _add_fresh(self, fresh: list[tuple[int, int, Vma, bool]], old_ours: list[tuple[int, int, Ident]],
                   vmas: list[Vma], out: array[int] | None, untrack: Callable[[int, int, Vma, str], None],
                   done: set[int]) -> None:
        registered: list[tuple[int, int, Vma]] = []
        for n, (s, e, v, needs) in enumerate(fresh):
            if needs:
                try:
                    if n not in done:
                        self.uffd.register(s, e - s, UFFDIO_REGISTER_MODE_WP)
                except OSError as exc:
                    if exc.errno == errno.ESRCH or not self._alive():
                        raise self._error(ProcessGone(self.proc.pid)) from None
                    why = f"UFFDIO_REGISTER refused it ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
                    if self._still_there(v):  # not refused because it went away (or changed) meanwhile
                        self._refused[(v.start, v.end, v.perms, ident(v))] = why
                    untrack(s, e, v, why)
                    continue
                if not self._wp_allowed(s, e):
                    # A VMA we registered is WPALLOWED (WP_ASYNC implies WP_UNPOPULATED): this one was
                    # replaced meanwhile (munmap + mmap, maybe at the same place).  Unregistering or
                    # refusing it by these bounds could split or shun what took its place; next pass sees it.
                    untrack(s, e, v, "changed while being registered")
                    continue
            registered.append((s, e, v))
        if self._madvise is not None and registered:
            try:
                self._madvise([(s, e - s) for s, e, _ in registered], _libc.MADV_NOHUGEPAGE)
            except OSError as exc:
                raise self._error(exc) from None
        for s, e, v in registered:
            self._protect(s, e)
            self._insert((s, e, ident(v)))
            if out is not None:
                out.extend((s, e, int(self._fresh_cause(s, e, v, old_ours, vmas))))

    @staticmethod
    def _drop_lost(keep: list[tuple[int, int, Ident]], lost: list[tuple[int, int]], out: array[int] | None,
                   notes: list[str]) -> list[tuple[int, int, Ident]]:
        """``keep`` without the parts in ``lost`` (ranges no longer registered); those parts go to
        ``out`` whole, as ``PROTECTION_LOST``."""
        cuts = sorted(lost)
        kept: list[tuple[int, int, Ident]] = []
        for s, e, what in keep:
            for ps, pe, gone in _cut(s, e, cuts):
                if not gone:
                    kept.append((ps, pe, what))
                    continue
                if out is not None:
                    out.extend((ps, pe, int(Cause.PROTECTION_LOST)))
                notes.append(f"{ps:#x}-{pe:#x}: lost its userfaultfd registration while being harvested "
                             "(a neighbouring mapping moved next to it and merged): reported whole")
        return kept

    def _still_there(self, vma: Vma) -> bool:
        """Whether a fresh maps read still shows ``vma`` (same bounds, permissions and mapping)."""
        try:
            now = self.proc.read_maps()
        except (OSError, SoftDirtyError):
            return False
        return any((v.start, v.end, v.perms, ident(v)) == (vma.start, vma.end, vma.perms, ident(vma)) for v in now)

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

