"""Getting a userfaultfd on a live process's mm, and using it.

A uffd is bound to the mm of the process that called ``userfaultfd()``;
whoever holds the fd can then register and write-protect that mm's ranges.
Three ways to get one:

* the calling process itself: a plain ``userfaultfd()``;
* a child started by :func:`softdirty.spawn`: created at its exec stop
  (see :mod:`softdirty.spawn`);
* any other process we may ptrace: :mod:`softdirty.inject` runs
  ``userfaultfd()`` in it, takes the fd with ``pidfd_getfd`` and closes the
  target's copy, so that ours is the only reference: when we close it (or
  die), the kernel unregisters every range and drops the write-protection.
  That happens in a short-lived injector process which hands us the fd
  (:func:`softdirty.inject.run_injection`), so that our death mid-injection
  cannot leave the target with injected registers.

With ``vm.unprivileged_userfaultfd=0`` an unprivileged caller gets EPERM and
must ask for ``UFFD_USER_MODE_ONLY`` (kernel-mode faults are then not
handled; write-protect-async faults are resolved without a handler anyway).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from softdirty import _libc
from softdirty.errors import ProcessGone, Unsupported
from softdirty.uffd_abi import (
    UFFD_API,
    UFFD_USER_MODE_ONLY,
    UFFDIO_API,
    UFFDIO_API_STRUCT,
    UFFDIO_RANGE_STRUCT,
    UFFDIO_REGISTER,
    UFFDIO_REGISTER_STRUCT,
    UFFDIO_UNREGISTER,
    UFFDIO_WRITEPROTECT,
    UFFDIO_WRITEPROTECT_MODE_WP,
    UFFDIO_WRITEPROTECT_STRUCT,
)

if TYPE_CHECKING:
    from softdirty.inject import Injector
    from softdirty.process import LiveProcess

UFFD_FLAGS = os.O_CLOEXEC | os.O_NONBLOCK
UFFD_LINK = "anon_inode:[userfaultfd]"
# An injection session: a context manager yielding a stopped, attached Injector.
Session = Callable[[], "contextlib.AbstractContextManager[Injector]"]


def _buf(data: bytes) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(data, len(data))


def uffd_api(fd: int, features: int) -> int:
    """UFFDIO_API on a fresh uffd; returns what the kernel supports (it enables only ``features``)."""
    buf = _buf(UFFDIO_API_STRUCT.pack(UFFD_API, features, 0))
    try:
        _libc.ioctl(fd, UFFDIO_API, buf)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise Unsupported("userfaultfd features",
                              f"UFFDIO_API refused features {features:#x} (write-protect async needs Linux 6.7+; "
                              f"{os.uname().release})") from None
        raise
    return int(UFFDIO_API_STRUCT.unpack(buf.raw[: UFFDIO_API_STRUCT.size])[1])


def is_uffd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == UFFD_LINK
    except OSError:
        return False


class LiveUffd:
    """A userfaultfd we hold, on the mm of process ``pid`` (implements ``UffdInterface``)."""

    def __init__(self, fd: int, features: int, pid: int, *, user_mode_only: bool = False,
                 session: Session | None = None, pidfd: int = -1, remote: bool = False) -> None:
        self._fd = fd
        self._features = features
        self.pid = pid
        self.user_mode_only = user_mode_only
        self._session = session  # an attached injector we were lent (a suspended spawned child)
        self._remote = remote or session is not None  # False: the mm is our own
        self._pidfd = pidfd

    @property
    def features(self) -> int:
        return self._features

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("the userfaultfd is closed")
        return self._fd

    def register(self, start: int, length: int, mode: int) -> int:
        buf = _buf(UFFDIO_REGISTER_STRUCT.pack(start, length, mode, 0))
        _libc.ioctl(self.fileno(), UFFDIO_REGISTER, buf)
        return int(UFFDIO_REGISTER_STRUCT.unpack(buf.raw[: UFFDIO_REGISTER_STRUCT.size])[3])

    def unregister(self, start: int, length: int) -> None:
        _libc.ioctl(self.fileno(), UFFDIO_UNREGISTER, _buf(UFFDIO_RANGE_STRUCT.pack(start, length)))

    def writeprotect(self, start: int, length: int, protect: bool) -> None:
        mode = UFFDIO_WRITEPROTECT_MODE_WP if protect else 0
        _libc.ioctl(self.fileno(), UFFDIO_WRITEPROTECT, _buf(UFFDIO_WRITEPROTECT_STRUCT.pack(start, length, mode)))

    def madvise(self, ranges: Sequence[tuple[int, int]], advice: int) -> None:
        """Apply ``madvise(start, length, advice)`` in the target's mm (ranges gone meanwhile are skipped)."""
        if not ranges:
            return
        if not self._remote:
            for start, length in ranges:
                try:
                    _libc.madvise(start, length, advice)
                except OSError as exc:
                    if exc.errno != errno.ENOMEM:  # ENOMEM: unmapped meanwhile
                        raise
            return
        if self._process_madvise(ranges, advice):
            return
        # process_madvise takes only a few advices for other processes: run madvise() there.
        if self._session is not None:
            with self._session() as inj:
                madvise_in(inj, ranges, advice)
            return
        from softdirty.inject import run_injection

        run_injection(self.pid, self._pidfd, "softdirty.uffd_live:madvise_job",
                      {"ranges": [list(r) for r in ranges], "advice": advice})

    def _process_madvise(self, ranges: Sequence[tuple[int, int]], advice: int) -> bool:
        if self._pidfd < 0:
            return False
        iov = (ctypes.c_uint64 * (2 * len(ranges)))()
        for i, (start, length) in enumerate(ranges):
            iov[2 * i], iov[2 * i + 1] = start, length
        try:
            _libc.syscall("process_madvise", self._pidfd, ctypes.addressof(iov), len(ranges), advice, 0)
        except OSError:
            return False  # EINVAL for advice it does not take remotely; then inject
        return True

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<LiveUffd pid={self.pid} fd={self._fd} features={self._features:#x}>"


def own_uffd() -> tuple[int, bool]:
    """A userfaultfd on our own mm: (fd, user_mode_only)."""
    try:
        return _libc.syscall("userfaultfd", UFFD_FLAGS), False
    except OSError as exc:
        if exc.errno != errno.EPERM:
            raise _create_error(exc.errno or 0, os.getpid()) from None
    try:
        return _libc.syscall("userfaultfd", UFFD_FLAGS | UFFD_USER_MODE_ONLY), True
    except OSError as exc:
        raise _create_error(exc.errno or 0, os.getpid()) from None


def _create_error(code: int, pid: int) -> BaseException:
    if code == errno.ENOSYS:
        return Unsupported("userfaultfd", f"the kernel has no userfaultfd() ({os.uname().release})")
    if code == errno.EPERM:
        return Unsupported("userfaultfd", f"userfaultfd() is refused in process {pid} even with "
                                          "UFFD_USER_MODE_ONLY (a seccomp filter or an LSM?)")
    return OSError(code, f"userfaultfd() in process {pid}: {os.strerror(code)}")


def steal_uffd(inj: Injector, pidfd: int) -> tuple[int, bool]:
    """Run userfaultfd() in the stopped target, take the fd, close the target's copy.

    Returns (our fd, user_mode_only).  On any failure the target's copy is
    closed before we raise.
    """
    inj.check_allowed("userfaultfd", (UFFD_FLAGS,))
    inj.check_allowed("close", (3,))
    user_mode_only = False
    target_fd = inj.syscall("userfaultfd", UFFD_FLAGS)
    if target_fd == -errno.EPERM:  # vm.unprivileged_userfaultfd=0 and an unprivileged target
        inj.check_allowed("userfaultfd", (UFFD_FLAGS | UFFD_USER_MODE_ONLY,))
        target_fd = inj.syscall("userfaultfd", UFFD_FLAGS | UFFD_USER_MODE_ONLY)
        user_mode_only = True
    if target_fd < 0:
        raise _create_error(-target_fd, inj.pid)
    ours = -1
    try:
        ours = _libc.syscall("pidfd_getfd", pidfd, target_fd, 0)
        if not is_uffd(ours):
            raise OSError(errno.EBADF, f"fd {target_fd} taken from process {inj.pid} is not a userfaultfd")
    except BaseException:
        if ours >= 0:
            os.close(ours)
        raise
    finally:
        inj.check_allowed("close", (target_fd,))
        ret = inj.syscall("close", target_fd)
        if ret < 0:
            if ours >= 0:
                os.close(ours)
            raise OSError(-ret, f"close({target_fd}) in process {inj.pid}: {os.strerror(-ret)}")
    return ours, user_mode_only


def steal_job(inj: Injector, pidfd: int, args: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """:func:`steal_uffd` as an injection job (:func:`softdirty.inject.run_injection`)."""
    fd, user_mode_only = steal_uffd(inj, pidfd)
    return {"user_mode_only": user_mode_only}, [fd]


def madvise_in(inj: Injector, ranges: Sequence[tuple[int, int]], advice: int) -> None:
    """``madvise()`` over ``ranges`` in the stopped target (ranges unmapped meanwhile are skipped)."""
    for start, length in ranges:
        ret = inj.syscall("madvise", start, length, advice)
        if ret < 0 and -ret != errno.ENOMEM:
            raise OSError(-ret, f"madvise({start:#x}, {length}, {advice}) in process {inj.pid}: "
                                f"{os.strerror(-ret)}")


def madvise_job(inj: Injector, pidfd: int, args: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """:func:`madvise_in` as an injection job."""
    madvise_in(inj, [(int(s), int(n)) for s, n in args["ranges"]], int(args["advice"]))
    return {}, []


def borrowed_session(inj: Injector) -> Session:
    """A session over an injector that stays attached (a suspended spawned child)."""

    @contextlib.contextmanager
    def session() -> Iterator[Injector]:
        yield inj

    return session


def open_uffd_for(proc: LiveProcess, features: int, *, session: Session | None = None) -> LiveUffd:
    """A userfaultfd on ``proc``'s mm with UFFDIO_API(``features``) done.

    Our own process: a plain call.  Another: system call injection (or the
    given ``session``, e.g. a child we already hold stopped).
    """
    proc.ensure_alive()
    if proc.pid == os.getpid() and session is None:
        fd, user_only = own_uffd()
        try:
            uffd_api(fd, features)
        except BaseException:
            os.close(fd)
            raise
        return LiveUffd(fd, features, proc.pid, user_mode_only=user_only)
    if session is not None:
        with session() as inj:
            fd, user_only = steal_uffd(inj, proc.pidfd)
        return adopt_uffd(fd, features, proc, user_mode_only=user_only, session=session)
    from softdirty.inject import run_injection

    result, fds = run_injection(proc.pid, proc.pidfd, "softdirty.uffd_live:steal_job", {})
    if len(fds) != 1 or not is_uffd(fds[0]):
        for fd in fds:
            os.close(fd)
        raise OSError(errno.EIO, f"the injection in process {proc.pid} did not hand over a userfaultfd")
    return adopt_uffd(fds[0], features, proc, user_mode_only=bool(result["user_mode_only"]))


def adopt_uffd(fd: int, features: int, proc: LiveProcess, *, user_mode_only: bool = False,
               session: Session | None = None) -> LiveUffd:
    """Wrap a uffd created in ``proc`` (we hold the only reference) after UFFDIO_API."""
    try:
        try:
            uffd_api(fd, features)
        except OSError as exc:
            if exc.errno == errno.ESRCH or not _alive(proc):
                raise ProcessGone(proc.pid) from None
            raise
    except BaseException:
        os.close(fd)
        raise
    return LiveUffd(fd, features, proc.pid, user_mode_only=user_mode_only, session=session,
                    pidfd=proc.pidfd, remote=True)


def _alive(proc: LiveProcess) -> bool:
    try:
        proc.ensure_alive()
    except ProcessGone:
        return False
    return True
