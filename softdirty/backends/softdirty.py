"""The soft-dirty back end: clear_refs "4" to checkpoint, bit 55 to harvest.

Two harvest paths give the same answer (tests hold them to it):

* ``scan``: PAGEMAP_SCAN with ``PAGE_IS_SOFT_DIRTY`` (Linux 6.8+): the kernel
  returns ranges, so cost follows what was written;
* ``pagemap``: windowed reads of ``/proc/PID/pagemap`` decoded by the C
  scanner (or its pure-Python twin).

Both report, per VMA, the soft-dirty runs.  A soft-dirty page that is
neither present nor swapped can only come from ``VM_SOFTDIRTY`` on its VMA
(a VMA created since the checkpoint, or one that regained the flag): then
the whole VMA reads dirty and is reported once, with ``Cause.NEW_MAPPING``.

One clearer per process: soft-dirty bits are per process, so a second
tracker's ``clear_refs`` would silently wipe the first one's epoch.  Each
soft-dirty back end on a live process therefore takes an advisory lock
(``flock``) on ``<runtime dir>/softdirty/<pid>-<start time>.lock`` (runtime
dir: ``$XDG_RUNTIME_DIR``, else ``/run`` for root, else the temp dir) and a
second one raises :class:`~softdirty.errors.AlreadyTracked`.  The kernel
drops the lock when the holder closes or dies.  Advisory only: it sees
trackers sharing a runtime dir (same user), not ``echo 4 > clear_refs``.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from array import array

from softdirty import scanner
from softdirty.backends.base import Backend, Harvest
from softdirty.dirtyset import Cause
from softdirty.errors import AlreadyTracked, Unsupported
from softdirty.maps import Vma
from softdirty.pagemap import PM, PageCategory
from softdirty.process import TASK_SIZE_4LEVEL, ProcessInterface

METHODS = ("scan", "pagemap")
_SD = int(PM.SOFT_DIRTY)
_BACKING = int(PM.PRESENT | PM.SWAP)
_SCAN_BACKING = int(PageCategory.PRESENT | PageCategory.SWAPPED)


def trackable(vma: Vma) -> bool:
    """pagemap covers only the user range ([vsyscall] lies above it)."""
    return vma.end <= TASK_SIZE_4LEVEL


class SoftDirtyBackend(Backend):
    name = "softdirty"

    def __init__(self, proc: ProcessInterface, *, method: str | None = None) -> None:
        super().__init__(proc)
        works = proc.feature("soft_dirty")
        if not works.ok:
            raise Unsupported("the soft-dirty back end", works.reason)
        self.method = self._choose(method)
        self._lock_path = ""
        self._lock_fd = self._lock()

    def _lock(self) -> int:
        """The one-clearer lock (see the module text); -1 for a process without a start time."""
        start = getattr(self.proc, "start_time", None)
        if not isinstance(start, int):
            return -1  # an emulated process: nobody else can clear it
        base = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.geteuid() == 0 else tempfile.gettempdir())
        where = os.path.join(base, f"softdirty-{os.geteuid()}")
        os.makedirs(where, mode=0o700, exist_ok=True)
        path = os.path.join(where, f"{self.proc.pid}-{start}.lock")
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise AlreadyTracked(self.proc.pid, f"process {self.proc.pid} already has a soft-dirty tracker "
                                     f"(lock {path} is held): soft-dirty has one clear per process, so a second "
                                     "tracker would wipe the first one's checkpoint") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_path = path
                return fd
            os.close(fd)  # its holder unlinked it on close: lock the new file instead

    def close(self) -> None:
        if self._lock_fd >= 0:
            fd, self._lock_fd = self._lock_fd, -1
            try:
                os.unlink(self._lock_path)  # while still holding it (see _lock's inode check)
            except OSError:
                pass
            os.close(fd)

    def _choose(self, method: str | None) -> str:
        if method is None:
            return "scan" if self.proc.feature("scan_soft_dirty").ok else "pagemap"
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)} or None, not {method!r}")
        if method == "scan":
            answer = self.proc.feature("scan_soft_dirty")
            if not answer.ok:
                raise Unsupported("PAGEMAP_SCAN with PAGE_IS_SOFT_DIRTY", answer.reason)
        return method

    def reset(self) -> None:
        self.proc.write_clear_refs(b"4")

    def harvest(self, method: str | None = None) -> Harvest:
        how = self.method if method is None else self._choose(method)
        vmas = [v for v in self.proc.read_maps() if trackable(v)]
        out = array("Q")
        for vma in vmas:
            if vma.hugetlb:
                # pagemap never reports a hugetlb page soft-dirty after a
                # clear (spec 1.6): we cannot see its writes, so say so.
                out.extend((vma.start, vma.end, int(Cause.UNTRACKED)))
                continue
            runs = self._scan_runs(vma, how)
            # runs: flat (start, end, backing) triples; backing 0 = soft-dirty
            # with no page behind it, which only VM_SOFTDIRTY produces.
            if any(runs[i + 2] == 0 for i in range(0, len(runs), 3)):
                out.extend((vma.start, vma.end, int(Cause.NEW_MAPPING)))
                continue
            for i in range(0, len(runs), 3):
                out.extend((runs[i], runs[i + 1], int(Cause.WRITTEN)))
        return Harvest(out, vmas)

    def _scan_runs(self, vma: Vma, how: str) -> array[int]:
        """Soft-dirty runs of one VMA, keyed 0 (no page) or nonzero (present/swapped)."""
        fd = self.proc.pagemap_fileno()
        if how == "scan":
            kw = dict(category_mask=int(PageCategory.SOFT_DIRTY), return_mask=_SCAN_BACKING)
            try:
                if fd is not None:
                    regions = scanner.pagemap_scan(fd, vma.start, vma.end, **kw)
                else:
                    regions = scanner.pagemap_scan_loop(self.proc.pagemap_scan_ioctl, vma.start, vma.end, **kw)
            except OSError as exc:
                raise self._scan_error(exc) from None
            if regions.walk_end < vma.end:
                self.proc.ensure_alive()
                raise self.proc.mm_gone_error()
            return regions.ranges
        if fd is not None:
            try:
                result = scanner.scan_fd(fd, vma.start, vma.end, match_mask=_SD, match_value=_SD,
                                         return_mask=_BACKING)
            except OSError as exc:
                raise self._scan_error(exc) from None
        else:
            result = scanner.scan_reader(self.proc.read_pagemap, vma.start, vma.end, match_mask=_SD,
                                         match_value=_SD, return_mask=_BACKING)
        if not result.complete:
            raise self.proc.mm_gone_error()
        return result.ranges

    def _scan_error(self, exc: OSError) -> BaseException:
        translate = getattr(self.proc, "scan_error", None)
        return translate(exc) if translate is not None else exc
