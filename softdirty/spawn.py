"""``softdirty.spawn()``: start a program whose writes can be tracked from its first instruction.

The child asks to be traced (``PTRACE_TRACEME``) right before ``execve``;
the kernel then stops it with SIGTRAP once the new program is loaded, before
its first instruction (the dynamic loader's).  At that stop we run
``userfaultfd()`` in it (:mod:`softdirty.inject`), take the fd and close the
child's copy, and keep the fd for :func:`softdirty.track`.  Then we detach
(the SIGTRAP is discarded), unless ``suspended=True``: the child then stays
stopped until :meth:`Spawned.resume`, so that ``track(...).reset()`` can arm
its memory before it runs at all.

>>> with softdirty.spawn(["./prog"], suspended=True) as child:   # doctest: +SKIP
...     with softdirty.track(child, backend="uffd") as t:
...         t.reset()
...         child.resume()
...         ...
...         dirty = t.harvest()
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Any

from softdirty import _libc
from softdirty.errors import ProcessGone
from softdirty.inject import PTRACE_TRACEME, Injector, check_arch
from softdirty.process import LiveProcess, UffdInterface
from softdirty.uffd_live import adopt_uffd, borrowed_session, open_uffd_for, steal_uffd

_WALL = 0x40000000


def _traceme() -> None:  # runs in the child between fork and exec
    if _libc.libc.syscall(101, PTRACE_TRACEME, 0, 0, 0) != 0:
        os._exit(127)


class Spawned:
    """A child started by :func:`spawn`: the :class:`subprocess.Popen` plus a userfaultfd on its mm.

    ``pid``, ``stdin``/``stdout``/``stderr``, ``returncode``, ``poll()``,
    ``wait()``, ``kill()``, ``terminate()``, ``send_signal()`` behave as in
    Popen.  Leaving the ``with`` block kills a child still running and waits.
    """

    def __init__(self, popen: subprocess.Popen[Any], uffd_fd: int, user_mode_only: bool,
                 injector: Injector | None) -> None:
        self.popen = popen
        self._uffd_fd = uffd_fd
        self._user_mode_only = user_mode_only
        self._injector = injector  # attached while suspended
        self._owner = threading.get_ident()

    # -- Popen-like --------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stdin(self) -> IO[Any] | None:
        return self.popen.stdin

    @property
    def stdout(self) -> IO[Any] | None:
        return self.popen.stdout

    @property
    def stderr(self) -> IO[Any] | None:
        return self.popen.stderr

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    @property
    def suspended(self) -> bool:
        return self._injector is not None

    def resume(self) -> None:
        """Let a child spawned with ``suspended=True`` run its first instruction."""
        inj, self._injector = self._injector, None
        if inj is None:
            return
        if threading.get_ident() != self._owner:
            self._injector = inj
            raise RuntimeError("resume() must be called from the thread that called spawn() (its ptrace tracer)")
        inj.__exit__(None, None, None)

    def poll(self) -> int | None:
        return None if self.suspended else self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        self.resume()
        return self.popen.wait(timeout)

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def terminate(self) -> None:
        self.resume()
        self.popen.terminate()

    def kill(self) -> None:
        self.popen.kill()  # SIGKILL also ends a ptrace-stopped child
        if self._injector is not None:
            self._injector = None  # nothing left to detach from

    # -- tracking -----------------------------------------------------------------------
    def take_uffd_fd(self) -> tuple[int, bool] | None:
        """The userfaultfd made at the exec stop (once): (fd, user_mode_only)."""
        fd, self._uffd_fd = self._uffd_fd, -1
        return None if fd < 0 else (fd, self._user_mode_only)

    def process_interface(self) -> LiveProcess:
        """A :class:`LiveProcess` for :func:`softdirty.track` that uses our userfaultfd."""
        return SpawnedProcess(self)

    def close(self) -> None:
        """Drop the userfaultfd if nobody took it (the child keeps running)."""
        taken = self.take_uffd_fd()
        if taken is not None:
            os.close(taken[0])

    def __enter__(self) -> Spawned:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.suspended or self.popen.poll() is None:
                self.kill()
            self.popen.__exit__(None, None, None)  # closes the pipes and waits
        finally:
            self.close()

    def __repr__(self) -> str:
        state = "suspended" if self.suspended else f"returncode={self.popen.returncode}"
        return f"<Spawned pid={self.pid} {state}>"


class SpawnedProcess(LiveProcess):
    """A spawned child as a ProcessInterface: ``open_uffd`` hands out the exec-stop uffd first."""

    def __init__(self, spawned: Spawned) -> None:
        super().__init__(spawned.pid)
        self.spawned = spawned

    def open_uffd(self, features: int) -> UffdInterface:
        inj = self.spawned._injector
        session = borrowed_session(inj) if inj is not None else None
        taken = self.spawned.take_uffd_fd()
        if taken is None:  # taken by an earlier tracker: make another
            return open_uffd_for(self, features, session=session)
        fd, user_only = taken
        return adopt_uffd(fd, features, self, user_mode_only=user_only, session=session)


def spawn(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
          stdin: int | IO[Any] | None = None, stdout: int | IO[Any] | None = None,
          stderr: int | IO[Any] | None = None, suspended: bool = False, **popen_kwargs: Any) -> Spawned:
    """Start ``argv`` with a userfaultfd made in it before its first instruction.

    Arguments are those of :class:`subprocess.Popen` (``preexec_fn`` excepted:
    we need it).  ``suspended=True`` keeps the child stopped at the exec stop
    until :meth:`Spawned.resume` (or ``wait()``/``terminate()``); the stopped
    child is traced by the calling thread, so resume it from that thread.
    """
    check_arch()
    if isinstance(argv, (str, bytes)) or not argv:
        raise TypeError("argv must be a non-empty sequence of strings (no shell)")
    if "preexec_fn" in popen_kwargs:
        raise TypeError("spawn() needs preexec_fn itself (for PTRACE_TRACEME)")
    popen = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
                             preexec_fn=_traceme, **popen_kwargs)
    injector: Injector | None = None
    pidfd = -1
    try:
        _, status = os.waitpid(popen.pid, _WALL)  # the SIGTRAP of the exec
        if not os.WIFSTOPPED(status):
            popen.returncode = os.waitstatus_to_exitcode(status)
            raise ProcessGone(popen.pid, f"{argv[0]} ended before its first instruction (status {status:#x})")
        pidfd = os.pidfd_open(popen.pid)
        injector = Injector(popen.pid, attached=True).__enter__()
        fd, user_only = steal_uffd(injector, pidfd)
    except BaseException:
        if injector is not None:
            injector.__exit__(None, None, None)
        if popen.returncode is None:
            popen.kill()
            popen.wait()
        raise
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    child = Spawned(popen, fd, user_only, injector)
    if not suspended:
        child.resume()
    return child
