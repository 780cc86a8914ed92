"""Stop every thread of a process with ptrace, the way CRIU freezes a task.

``PTRACE_SEIZE`` each thread listed in ``/proc/PID/task`` (no signal is
sent, unlike ``PTRACE_ATTACH``), ``PTRACE_INTERRUPT`` it, and wait until it
reports a stop.  A thread may create another one while we work, so we list
the tasks again after every thread we know of has stopped, until a listing
brings nothing new: a stopped thread cannot clone, so the set is then final.
``PTRACE_DETACH`` lets them all go.

Why ptrace and never ``SIGSTOP``: a ptrace stop is invisible to the
process's parent and to job control, and the kernel ends it by itself when
the tracer exits (``exit_ptrace`` detaches every tracee), so a crashed or
killed freezer can never leave its target stopped.

A thread that was about to take a signal when we stopped it reports a
signal-delivery stop instead of our interrupt stop: it is just as stopped.
We remember the signal and hand it back with ``PTRACE_DETACH``, so nothing
is lost or delivered twice.

ptrace binds a tracee to the *thread* that attached it: freeze and thaw on
the same thread (:class:`Freeze` checks).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from types import TracebackType
from typing import Protocol

from softdirty import _libc
from softdirty.errors import PTRACE_ATTACH, AccessDenied, NoSuchProcess, ProcessGone, SoftDirtyError

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
_WALL = 0x40000000

_ptrace = _libc.libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    """glibc's ptrace() for the requests that return 0 or -1 (not the PEEKs)."""
    ret = _ptrace(request, tid, addr or None, data or None)
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")
    return int(ret)


class FreezeTimeout(SoftDirtyError):
    """A thread did not reach a stop in time (e.g. stuck in uninterruptible sleep)."""


class _Alive(Protocol):
    @property
    def pid(self) -> int: ...

    def ensure_alive(self) -> None: ...


def _thread_state(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return "X"
    return text[text.rindex(b")") + 2 :][:1].decode()


_PF_EXITING = 0x00000004


def _thread_exiting(pid: int, tid: int) -> bool:
    """A zombie, gone, or PF_EXITING (field 9 of /proc/PID/task/TID/stat)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return True
    fields = text[text.rindex(b")") + 2 :].split()
    return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & _PF_EXITING)


def release_tracees(pid: int, tracees: dict[int, int], *, stop_timeout: float = 1.0,
                    exit_timeout: float = 10.0) -> tuple[list[int], list[OSError]]:
    """Let go of every thread in ``tracees`` (tid -> signal to hand back): (tids left attached, errors).

    ``PTRACE_DETACH`` needs a tracee in a ptrace stop.  One that is not (SIGKILL takes
    a tracee out of its stop, and it then runs its exit; or our interrupt has not landed
    yet) makes it fail with ESRCH, and then detaching is not enough: an exiting tracee
    becomes a zombie that only its *tracer* sees and may reap.  Its parent is not told
    (and a group leader cannot even become reapable while a traced thread of it is an
    unreaped zombie) until we wait for it with ``__WALL``, which hands it on to the
    parent.  So we poll every such thread until it stops (detach again) or exits
    (reaped: released); all at once, because a zombie group leader waits for its
    other threads.  A thread that does neither (uninterruptible sleep) is given up
    after ``stop_timeout`` seconds, an exiting one after ``exit_timeout``: our exit
    releases those (``exit_ptrace``).
    """
    errors: list[OSError] = []
    pending: dict[int, int] = {}
    for tid, sig in tracees.items():
        try:
            ptrace(PTRACE_DETACH, tid, 0, sig)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                pending[tid] = sig
            else:
                errors.append(exc)
    start = time.monotonic()
    spins = 0
    while pending:
        for tid in list(pending):
            try:
                got, status = os.waitpid(tid, os.WNOHANG | _WALL)
            except ChildProcessError:
                del pending[tid]  # not (or no longer) our tracee
                continue
            if got == 0:
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                del pending[tid]  # reaped by us: its parent is told now
                continue
            if os.WIFSTOPPED(status) and status >> 16 == 0:
                pending[tid] = os.WSTOPSIG(status)  # a signal-delivery stop: hand that signal on
            try:
                ptrace(PTRACE_DETACH, tid, 0, pending[tid])
                del pending[tid]
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    errors.append(exc)
                    del pending[tid]
        if not pending:
            break
        waited = time.monotonic() - start
        if waited > exit_timeout or (waited > stop_timeout and
                                     not any(_thread_exiting(pid, tid) for tid in pending)):
            break
        spins += 1
        if spins < 100:
            os.sched_yield()
        else:
            time.sleep(min(0.005, 0.0001 * (spins - 99)))
    return sorted(pending), errors


class Freeze:
    """Every thread of ``target`` stopped while inside ``with``; a context manager.

    ``target`` is a PID or a :class:`~softdirty.process.LiveProcess` (whose
    pidfd then proves that the threads we stopped belong to the process it
    opened, not to a successor with the same PID).

    After :meth:`freeze`: ``tids`` (the stopped threads), ``acquire_seconds``
    (from the first seize until every thread stopped), ``rounds`` (task
    listings needed).  After :meth:`thaw`: ``frozen_seconds`` (from all
    stopped until the first detach) and ``release_seconds``.
    """

    def __init__(self, target: int | _Alive, *, timeout: float = 10.0) -> None:
        if isinstance(target, bool):
            raise TypeError("a PID is an int, not a bool")
        if isinstance(target, int):
            if target <= 0:
                raise ValueError(f"a PID is a positive int, got {target}")
            self.pid = target
            self._proc: _Alive | None = None
        else:
            self.pid = target.pid
            self._proc = target
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if self.pid == os.getpid():
            raise ValueError("a process cannot freeze itself (ptrace cannot trace its own thread group)")
        self.timeout = timeout
        self.tids: tuple[int, ...] = ()
        self.rounds = 0
        self.acquire_seconds = 0.0
        self.frozen_seconds = 0.0
        self.release_seconds = 0.0
        self._seized: dict[int, int] = {}  # tid -> signal to hand back on detach
        self._stopped: set[int] = set()  # seized threads that reported their stop
        self._owner: int | None = None
        self._frozen_at = 0.0
        self.left_attached: list[int] = []  # after thaw(): threads neither stopped nor exited in time

    @property
    def frozen(self) -> bool:
        return self._owner is not None

    # -- freezing -------------------------------------------------------------------
    def freeze(self) -> Freeze:
        if self._owner is not None:
            raise ValueError(f"process {self.pid} is already frozen by this Freeze")
        self._owner = threading.get_ident()
        start = time.monotonic()
        deadline = start + self.timeout
        try:
            dead: set[int] = set()  # zombie or gone threads: never seizable, never to wait for
            while True:
                self.rounds += 1
                new = [tid for tid in self._list_tasks() if tid not in self._seized and tid not in dead]
                if not new:
                    break
                if time.monotonic() > deadline:
                    raise FreezeTimeout(f"the threads of process {self.pid} kept changing for {self.timeout} s")
                seized = [tid for tid in new if self._seize(tid)]
                dead.update(tid for tid in new if tid not in self._seized)
                for tid in seized:
                    self._wait_stop(tid, deadline)
            if not self._seized:
                raise ProcessGone(self.pid, f"process {self.pid} has no thread left to stop")
            if self._proc is not None:
                self._proc.ensure_alive()  # the pidfd: still the process we opened
        except BaseException:
            self.thaw()
            raise
        self._frozen_at = time.monotonic()
        self.acquire_seconds = self._frozen_at - start
        self.tids = tuple(sorted(self._seized))
        return self

    def _list_tasks(self) -> list[int]:
        try:
            return [int(t) for t in os.listdir(f"/proc/{self.pid}/task")]
        except FileNotFoundError:
            if self._seized:
                raise ProcessGone(self.pid, f"process {self.pid} exited while being frozen") from None
            raise NoSuchProcess(self.pid) from None

    def _seize(self, tid: int) -> bool:
        """Seize and interrupt one thread; False if it is gone (or a zombie)."""
        try:
            ptrace(PTRACE_SEIZE, tid)
        except OSError as exc:
            if exc.errno == errno.ESRCH or _thread_state(self.pid, tid) in ("Z", "X"):
                return False  # exited since we listed it
            if exc.errno == errno.EPERM:
                raise AccessDenied(self.pid, PTRACE_ATTACH, self._eperm_reason(tid)) from None
            raise
        self._seized[tid] = 0
        # The tid was listed under /proc/PID/task; make sure it still is (not a reused tid).
        if not os.path.exists(f"/proc/{self.pid}/task/{tid}"):
            del self._seized[tid]
            try:
                ptrace(PTRACE_INTERRUPT, tid)  # PTRACE_DETACH needs a stop (or, if it exits, a reap)
            except OSError:
                pass
            release_tracees(self.pid, {tid: 0}, exit_timeout=self.timeout)
            return False
        try:
            ptrace(PTRACE_INTERRUPT, tid)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
        return True

    def _eperm_reason(self, tid: int) -> str:
        tracer = "0"
        try:
            with open(f"/proc/{self.pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("TracerPid:"):
                        tracer = line.split()[1]
        except OSError:
            pass
        if tracer != "0":
            why = f"it is already traced by process {tracer} (a thread has one tracer at a time)"
        else:
            why = "PTRACE_SEIZE was refused"
        return f"cannot freeze process {self.pid}: {why}; needs {PTRACE_ATTACH}"

    def _wait_stop(self, tid: int, deadline: float) -> None:
        spins = 0
        while True:
            try:
                got, status = os.waitpid(tid, os.WNOHANG | _WALL)
            except ChildProcessError:
                self._seized.pop(tid, None)  # reaped elsewhere: gone
                return
            if got == 0:
                if time.monotonic() > deadline:
                    raise FreezeTimeout(f"thread {tid} of process {self.pid} did not stop within {self.timeout} s "
                                        f"(state {_thread_state(self.pid, tid)})")
                spins += 1
                # Most threads stop within microseconds: spin briefly, then back off.
                if spins < 200:
                    os.sched_yield()
                else:
                    time.sleep(min(0.005, 0.0001 * (spins - 199)))
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self._seized.pop(tid, None)
                return
            if os.WIFSTOPPED(status):
                if status >> 16 == 0:
                    # Signal-delivery stop: stopped before taking a signal; hand it back on detach.
                    self._seized[tid] = os.WSTOPSIG(status)
                self._stopped.add(tid)
                return  # our interrupt stop, a group stop or another trap: stopped all the same

    # -- thawing --------------------------------------------------------------------
    def thaw(self) -> None:
        if self._owner is None:
            return
        if self._owner != threading.get_ident():
            raise RuntimeError("thaw() must run on the thread that froze the process (ptrace binds tracees to it)")
        start = time.monotonic()
        if self._frozen_at:
            self.frozen_seconds = start - self._frozen_at
        seized, self._seized = self._seized, {}
        self._stopped = set()
        # Threads not yet stopped (our interrupt is pending), killed meanwhile or exiting:
        # release_tracees() waits for each to stop (then detaches) or exit (then reaps it).
        self.left_attached, errors = release_tracees(self.pid, seized, exit_timeout=self.timeout)
        self._seized, self._stopped = {}, set()
        self._owner = None
        self._frozen_at = 0.0
        self.release_seconds = time.monotonic() - start
        if errors:
            raise errors[0]

    def __enter__(self) -> Freeze:
        return self.freeze()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.thaw()

    def __repr__(self) -> str:
        state = f"frozen, {len(self._seized)} threads" if self.frozen else "not frozen"
        return f"<Freeze pid={self.pid} {state}>"


def freeze(target: int | _Alive, *, timeout: float = 10.0) -> Freeze:
    """``with softdirty.freeze.freeze(pid) as f: ...``: every thread stopped inside the block."""
    return Freeze(target, timeout=timeout)
