"""The one narrow interface between back ends and a kernel, and its real side.

Back ends only ever talk to a :class:`ProcessInterface`: read pagemap at an
offset, write clear_refs, issue PAGEMAP_SCAN, read maps.  :class:`LiveProcess`
implements it over ``/proc/PID`` for a real process; the emulator implements
the same methods over emulated page tables.

A live target is opened once: a pidfd plus a ``/proc/PID`` directory fd.
Every file we open afterwards is opened relative to that directory fd, and
a ``/proc/PID`` directory keeps referring to the process it was opened for
even after its PID is reused, so maps, pagemap and clear_refs provably belong
to the same process; a reused PID makes them fail with ESRCH instead of
touching the newcomer.
"""

from __future__ import annotations

import errno
import os
import signal
from array import array
from typing import Protocol, runtime_checkable

from softdirty import scanner
from softdirty.answer import Answer
from softdirty.errors import AddressSpaceReplaced, NoSuchProcess, ProcessGone, Unsupported, from_oserror
from softdirty.maps import Vma, hugetlb_internal_devices, hugetlbfs_devices, mark_hugetlb, parse_maps
from softdirty.pagemap import ENTRY_SIZE, PAGE_SHIFT

# include/linux/sched.h: set by do_exit() before exit_mm() drops the address space.
_PF_EXITING = 0x00000004

# Readable pagemap range on x86-64 with 4-level paging (spec 1.5).
TASK_SIZE_4LEVEL = (1 << 47) - 4096


def check_pid(pid: object) -> int:
    """A PID as the kernel understands it, or a clear TypeError/ValueError."""
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"a PID is a positive int, not {type(pid).__name__} {pid!r}")
    if pid <= 0:
        raise ValueError(f"a PID is a positive int, got {pid}")
    return pid


@runtime_checkable
class UffdInterface(Protocol):
    """A userfaultfd bound to the target's mm (ours, injected, or emulated).

    Failures raise ``OSError`` with the kernel's errno; back ends translate.
    """

    @property
    def features(self) -> int:
        """The features enabled by UFFDIO_API."""
        ...

    def register(self, start: int, length: int, mode: int) -> int:
        """UFFDIO_REGISTER; returns the ``ioctls`` bitmask."""
        ...

    def unregister(self, start: int, length: int) -> None: ...

    def writeprotect(self, start: int, length: int, protect: bool) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class ProcessInterface(Protocol):
    """What a back end may ask of a process, live or emulated."""

    @property
    def pid(self) -> int: ...

    def read_maps(self) -> list[Vma]: ...

    def read_pagemap(self, offset: int, count: int) -> bytes:
        """``pread`` of the pagemap file: offset and count in bytes, multiples of 8."""
        ...

    def pagemap_fileno(self) -> int | None:
        """A pagemap fd for the C scanner's fast path, or None (emulated)."""
        ...

    def write_clear_refs(self, value: bytes) -> int: ...

    def pagemap_scan_ioctl(
        self,
        start: int,
        end: int,
        *,
        flags: int = 0,
        category_inverted: int = 0,
        category_mask: int = 0,
        category_anyof_mask: int = 0,
        return_mask: int = 0,
        max_pages: int = 0,
        vec_len: int = 512,
    ) -> tuple[array[int], int]:
        """One PAGEMAP_SCAN call: flat ``(start, end, categories)`` triples and walk_end."""
        ...

    def ensure_alive(self) -> None:
        """Raise :class:`ProcessGone` if the process we opened is gone."""
        ...

    def mm_gone_error(self) -> ProcessGone:
        """The error for a pagemap EOF inside the address space (exit or exec)."""
        ...

    def feature(self, name: str) -> Answer:
        """Whether the kernel behind this process has a feature, and why.

        Names: ``soft_dirty``, ``pagemap_scan``, ``scan_soft_dirty``,
        ``scan_guard``, ``uffd_wp_async``, ``pfn_visible``.
        """
        ...

    def open_uffd(self, features: int) -> UffdInterface:
        """A userfaultfd on the target's mm with UFFDIO_API(features) done."""
        ...

    def close(self) -> None: ...


class LiveProcess:
    """A real process, opened once by pidfd and ``/proc/PID`` directory fd."""

    def __init__(self, pid: int) -> None:
        self._pid = check_pid(pid)
        self._pidfd = -1
        self._dirfd = -1
        self._pagemap_fd = -1
        self._clear_refs_fd = -1
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise NoSuchProcess(pid) from None
        try:
            self._dirfd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.close()
            raise NoSuchProcess(pid) from None
        # The pidfd was taken first: if its process is still there now, the
        # directory we just opened is that process's, not a successor's.
        if not self._pidfd_alive():
            self.close()
            raise NoSuchProcess(pid, f"process {pid} exited while being opened")
        self.start_time = self._read_start_time()
        # Read once: which devices are hugetlbfs mounts in the target's namespace.
        self._hugetlbfs_devs = hugetlbfs_devices(self._read_text("mountinfo")) | hugetlb_internal_devices()

    # -- identity --------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self._pid

    @property
    def pidfd(self) -> int:
        return self._pidfd

    @property
    def closed(self) -> bool:
        return self._dirfd < 0

    def _pidfd_alive(self) -> bool:
        try:
            signal.pidfd_send_signal(self._pidfd, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # there, but not ours to signal
        return True

    def _read_start_time(self) -> int:
        text = self._read_text("stat")
        # comm may hold spaces and parentheses: the fields start after the last ')'.
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            raise ProcessGone(self._pid, f"process {self._pid} is a zombie: it has no memory to track")
        return int(fields[19])  # field 22 of proc(5): starttime

    def ensure_alive(self) -> None:
        if self.closed:
            raise ValueError("the process handle is closed")
        if not self._pidfd_alive():
            raise ProcessGone(self._pid)

    # -- files -----------------------------------------------------------------
    def _open(self, name: str, flags: int) -> int:
        if self.closed:
            raise ValueError("the process handle is closed")
        try:
            return os.open(name, flags | os.O_CLOEXEC, dir_fd=self._dirfd)
        except OSError as exc:
            raise self._translate(exc, name) from None

    def _translate(self, exc: OSError, what: str) -> BaseException:
        out = from_oserror(exc, self._pid, what, opened=True)
        if out is exc and self._gone_or_exiting():
            # An exiting task answers some files with other errnos (mountinfo: EINVAL
            # once its namespaces are released): that is still the process going away.
            return ProcessGone(self._pid, f"process {self._pid} exited ({what}: {exc.strerror})")
        return out

    def _gone_or_exiting(self) -> bool:
        if self._pidfd < 0 or not self._pidfd_alive():
            return True
        try:  # no _read_text here: its errors come back through _translate
            fd = os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dirfd)
            try:
                text = os.read(fd, 4096).decode("ascii", "replace")
            finally:
                os.close(fd)
            fields = text[text.rindex(")") + 2 :].split()
            return fields[0] in ("Z", "X") or bool(int(fields[6]) & _PF_EXITING)
        except (OSError, ValueError, IndexError):
            return True

    def mm_gone_error(self) -> ProcessGone:
        """Why pagemap answered EOF inside the address space: exit or exec."""
        if self._pidfd_alive() and not self._exiting():
            return AddressSpaceReplaced(self._pid)
        return ProcessGone(self._pid)

    def _exiting(self) -> bool:
        """A zombie, or a task inside do_exit: its mm is released before it turns zombie,
        while signal 0 still reaches it, so without PF_EXITING an exit reads as an exec."""
        try:
            text = self._read_text("stat")
        except ProcessGone:
            return True
        fields = text[text.rindex(")") + 2 :].split()
        return fields[0] in ("Z", "X") or bool(int(fields[6]) & _PF_EXITING)  # field 9 of proc(5): flags

    def _read_text(self, name: str) -> str:
        fd = self._open(name, os.O_RDONLY)
        try:
            chunks = []
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except OSError as exc:
                    raise self._translate(exc, name) from None
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", "surrogateescape")

    def read_maps(self) -> list[Vma]:
        text = self._read_text("maps")
        if not text:
            # An exited (or exec-in-progress) process has no mm and empty maps.
            self.ensure_alive()
        return mark_hugetlb(parse_maps(text), self._hugetlbfs_devs)

    def pagemap_fileno(self) -> int:
        if self._pagemap_fd < 0:
            self._pagemap_fd = self._open("pagemap", os.O_RDONLY)
        return self._pagemap_fd

    def read_pagemap(self, offset: int, count: int) -> bytes:
        if offset % ENTRY_SIZE or count % ENTRY_SIZE or offset < 0 or count < 0:
            raise ValueError(f"pagemap reads are 8-byte aligned: offset={offset}, count={count}")
        try:
            data = os.pread(self.pagemap_fileno(), count, offset)
        except OSError as exc:
            raise self._translate(exc, "pagemap") from None
        if not data and count and offset < pagemap_offset(TASK_SIZE_4LEVEL):
            # The fd is bound to the mm it was opened on: EOF inside the user
            # range means that mm is gone (exit, or exec into a new one).
            raise self.mm_gone_error()
        return data

    def write_clear_refs(self, value: bytes) -> int:
        if self._clear_refs_fd < 0:
            self._clear_refs_fd = self._open("clear_refs", os.O_WRONLY)
        # clear_refs acts on the task's *current* mm; make sure the task is
        # still the one we opened (the dirfd guarantees the PID, not the mm).
        try:
            return os.write(self._clear_refs_fd, value)
        except OSError as exc:
            raise self._translate(exc, "clear_refs") from None

    def pagemap_scan_ioctl(
        self,
        start: int,
        end: int,
        *,
        flags: int = 0,
        category_inverted: int = 0,
        category_mask: int = 0,
        category_anyof_mask: int = 0,
        return_mask: int = 0,
        max_pages: int = 0,
        vec_len: int = 512,
    ) -> tuple[array[int], int]:
        try:
            return scanner.pagemap_scan_ioctl(
                self.pagemap_fileno(),
                start,
                end,
                flags=flags,
                category_inverted=category_inverted,
                category_mask=category_mask,
                category_anyof_mask=category_anyof_mask,
                return_mask=return_mask,
                max_pages=max_pages,
                vec_len=vec_len,
            )
        except OSError as exc:
            raise self.scan_error(exc) from None

    def scan_error(self, exc: OSError) -> BaseException:
        """PAGEMAP_SCAN's errno as a typed error (shared with the looping scan)."""
        if exc.errno == errno.ENOTTY:
            why = f"the kernel has no PAGEMAP_SCAN ioctl (needs Linux 6.7+; this is {os.uname().release})"
            return Unsupported("PAGEMAP_SCAN", why)
        return self._translate(exc, "pagemap")

    def feature(self, name: str) -> Answer:
        from softdirty.probe import probe  # the host's kernel answers for every live process

        return probe().answer(name)

    def open_uffd(self, features: int) -> UffdInterface:
        # Creating a uffd in another process means injecting a syscall into it.
        from softdirty.uffd_live import open_uffd_for

        return open_uffd_for(self, features)

    def close(self) -> None:
        for attr in ("_clear_refs_fd", "_pagemap_fd", "_dirfd", "_pidfd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                os.close(fd)

    def __enter__(self) -> LiveProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<LiveProcess pid={self._pid}{' closed' if self.closed else ''}>"


def pagemap_offset(addr: int) -> int:
    """File offset of the entry for the page holding ``addr``."""
    return (addr >> PAGE_SHIFT) * ENTRY_SIZE
