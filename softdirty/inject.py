"""Run a few system calls inside another process, with ptrace (x86-64).

Used to create a userfaultfd in a process that does not cooperate: the
uffd context is bound to the mm of whoever calls ``userfaultfd()``, so the
target itself must make the call.  The recipe (as CRIU's compel and gdb's
inferior calls do it, minus any code injection):

1. ``PTRACE_SEIZE`` one thread (no signal is sent) and ``PTRACE_INTERRUPT``
   it; the other threads keep running.
2. Save its registers.  Point ``rip`` at an existing ``syscall`` instruction
   (in the vDSO; we never write to the target's memory), load the syscall
   number and arguments, set ``orig_rax`` to -1 so that the kernel's
   syscall-restart logic leaves our registers alone, and step to the
   syscall-exit stop with ``PTRACE_SYSCALL``.  Repeat per syscall.
3. Put the saved registers back.  If the thread had been inside a blocking
   syscall that the interrupt broke off (``rax`` = -ERESTARTSYS and friends,
   ``orig_rax`` = its number), we interrupt it once more so that it stops
   inside ``get_signal()`` with exactly those registers, as it was when we
   found it; on the way out the kernel's own restart logic then runs
   (``restart_syscall`` for -ERESTART_RESTARTBLOCK), and a signal with a
   handler arriving meanwhile gets EINTR or SA_RESTART as it would have.
4. ``PTRACE_DETACH``.  Signals that arrived meanwhile were held back and are
   sent again.

Nothing is left behind on failure: every step after the seize runs under
``try/finally`` that restores the registers and detaches.  Before running
anything we evaluate the target's seccomp filters (if it has any) on the
exact calls we will make, so that a filter that would kill the target or
fail the call makes us refuse instead.

The injector process.  No ``finally`` runs when the tracer is SIGKILLed,
and the kernel has no "put the registers back if the tracer dies": it just
detaches, and a thread caught between loading the injected registers and
restoring them resumes at the vDSO's ``syscall`` instruction with our
arguments and crashes.  So a tracker never injects in its own process:
:func:`run_injection` starts a short-lived *injector process* (``python -I
-S``, stdlib and this file's modules only, without ``softdirty/__init__``)
in a session of its own, so that neither the tracker's death nor signals
sent to its process group or terminal reach it; it also blocks SIGTERM,
SIGINT, SIGHUP, SIGQUIT and the tty stop signals.  It reads its job from
stdin, seizes, runs the job (for a userfaultfd: ``userfaultfd()`` in the
target, ``pidfd_getfd`` into itself, ``close()`` of the target's copy),
restores and detaches, and only then sends the result and any fds to the
tracker over a socket (``SCM_RIGHTS``) and exits.  If the tracker died
meanwhile, the injector still finishes, the send fails or lands in a dead
socket, and the fds it took go with it: the target keeps nothing (no
injected registers, no copy of the uffd, no registration: ranges are
registered by the tracker, after it has the fd) and is not left stopped.
The tracker waits for the injector; if it dies while an injector still
runs, the target stays traced (``TracerPid``) for the milliseconds the
injector needs to finish.

What is left: a SIGKILL of the *injector* itself (or a crash of it, or of
the machine's cgroup that holds it) in the window between setting the
injected registers and restoring them.  That window is a few ptrace calls
per injected system call (set registers, step to the syscall entry and exit
stops, read the result, put the saved registers back at once, before the
next call or anything else); a tracker on a busy host is far likelier to be
killed than this process in those microseconds, but it cannot be closed.
A SIGKILL elsewhere in the injector's life is harmless to the target's
registers: the kernel detaches, wakes the thread with its own registers and
runs the usual restart of an interrupted system call; two lesser losses
remain possible then: signals that arrived during the injection and were
held back are not sent again, and a userfaultfd made in the target before
its ``close()`` stays open there (unregistered: it tracks nothing).
The in-process :class:`Injector` is still used directly by
:func:`softdirty.spawn` (its child is traced by the caller from the exec
stop) and by :func:`run_injection` as a fallback, see there.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import json
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

from softdirty import _libc
from softdirty.errors import (
    PTRACE_ATTACH,
    AccessDenied,
    AddressSpaceReplaced,
    AlreadyTracked,
    NoSuchProcess,
    ProcessGone,
    Unsupported,
)
from softdirty.freeze import release_tracees

# ptrace requests (include/uapi/linux/ptrace.h)
PTRACE_TRACEME = 0
PTRACE_CONT = 7
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETSIGINFO = 0x4202
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_SECCOMP_GET_FILTER = 0x420C
PTRACE_O_TRACESYSGOOD = 1
PTRACE_EVENT_STOP = 128
_WALL = 0x40000000

# x86-64 system call numbers we inject or meet.
NR = {
    "read": 0, "close": 3, "madvise": 28, "prctl": 157, "restart_syscall": 219, "futex": 202,
    "userfaultfd": 323, "semop": 65, "semtimedop": 220, "rt_sigtimedwait": 128,
    "epoll_wait": 232, "epoll_pwait": 281, "epoll_pwait2": 441, "tgkill": 234,
}
# Interrupted calls the kernel never restarts after a stop (signal(7)): a thread
# blocked in one would see EINTR, so we prefer another thread when there is one.
_NOT_RESTARTED = frozenset(NR[n] for n in ("semop", "semtimedop", "rt_sigtimedwait", "epoll_wait",
                                           "epoll_pwait", "epoll_pwait2"))
_SYSCALL_INSN = b"\x0f\x05"
_USER_CS_64 = 0x33  # __USER_CS: a 64-bit task (0x23 would be a 32-bit one)
ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
_U64 = (1 << 64) - 1

_libc.libc.syscall.restype = ctypes.c_long
_SYS_PTRACE = 101


class UserRegs(ctypes.Structure):
    """``struct user_regs_struct`` of x86-64 (sys/user.h)."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
        "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")]

    def copy(self) -> UserRegs:
        new = UserRegs()
        ctypes.pointer(new)[0] = self
        return new


def _signed(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


def ptrace(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    """The raw ptrace system call (``data``: an int or an address); OSError with the errno."""
    ret = _libc.libc.syscall(ctypes.c_long(_SYS_PTRACE), ctypes.c_long(request), ctypes.c_long(pid),
                             ctypes.c_void_p(addr), ctypes.c_void_p(data))
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {pid}): {os.strerror(err)}")
    return int(ret)


def check_arch() -> None:
    if platform.machine() != "x86_64":
        raise Unsupported("system call injection", f"implemented for x86-64 only, this is {platform.machine()}")


def in_restartable_syscall(regs: UserRegs) -> bool:
    return _signed(regs.orig_rax) >= 0 and -_signed(regs.rax) in (
        ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK)


def restarted(regs: UserRegs) -> UserRegs:
    """``regs`` with an interrupted syscall set up to run again, as the kernel's
    ``arch_do_signal_or_restart`` does when no handler runs.

    Used only for a thread we cannot PTRACE_INTERRUPT (attached with
    PTRACE_TRACEME): it resumes from our syscall-exit stop, where the kernel
    might not look at the restart codes.
    """
    out = regs.copy()
    if _signed(regs.orig_rax) < 0:
        return out  # not in a system call
    err = -_signed(regs.rax)
    if err in (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND):
        out.rax = regs.orig_rax
        out.rip = regs.rip - 2  # back onto the 2-byte syscall instruction
    elif err == ERESTART_RESTARTBLOCK:
        out.rax = NR["restart_syscall"]  # continues from current->restart_block
        out.rip = regs.rip - 2
    return out


# -- seccomp: evaluate the target's classic-BPF filters on our calls ----------------

AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_LOG = 0x7FFC0000
_SECCOMP_ACTIONS = {0x80000000: "KILL_PROCESS", 0x00000000: "KILL_THREAD", 0x00030000: "TRAP",
                    0x00050000: "ERRNO", 0x7FC00000: "USER_NOTIF", 0x7FF00000: "TRACE", 0x7FFC0000: "LOG",
                    0x7FFF0000: "ALLOW"}
_SOCK_FILTER = struct.Struct("<HBBI")


class BpfError(ValueError):
    """A filter we cannot evaluate (the kernel would not have accepted it either)."""


def seccomp_data(nr: int, args: Sequence[int], ip: int) -> bytes:
    full = list(args) + [0] * (6 - len(args))
    return struct.pack("<iIQ6Q", nr, AUDIT_ARCH_X86_64, ip, *(a & _U64 for a in full))


def run_bpf(prog: Sequence[tuple[int, int, int, int]], data: bytes) -> int:
    """Run one classic-BPF seccomp filter over ``seccomp_data``; its return value."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    m32 = 0xFFFFFFFF
    for _ in range(len(prog) + 1):  # classic BPF only jumps forward
        if not 0 <= pc < len(prog):
            raise BpfError(f"fell off the filter at {pc}")
        code, jt, jf, k = prog[pc]
        pc += 1
        cls = code & 0x07
        if cls in (0x00, 0x01):  # LD / LDX
            mode = code & 0xE0
            if mode == 0x20 and cls == 0x00:  # ABS (32-bit words only in seccomp)
                if k % 4 or k + 4 > len(data):
                    raise BpfError(f"bad load offset {k}")
                val = int.from_bytes(data[k:k + 4], "little")
            elif mode == 0x00:
                val = k
            elif mode == 0x60:
                val = mem[k & 15]
            elif mode == 0x80:
                val = len(data)
            else:
                raise BpfError(f"unsupported load {code:#x}")
            if cls == 0x00:
                a = val
            else:
                x = val
        elif cls == 0x02:
            mem[k & 15] = a
        elif cls == 0x03:
            mem[k & 15] = x
        elif cls == 0x04:  # ALU
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                a = a + src
            elif op == 0x10:
                a = a - src
            elif op == 0x20:
                a = a * src
            elif op == 0x30:
                if src == 0:
                    return 0  # the kernel returns 0 (KILL) on division by zero
                a = a // src
            elif op == 0x40:
                a = a | src
            elif op == 0x50:
                a = a & src
            elif op == 0x60:
                a = a << (src & 31)
            elif op == 0x70:
                a = a >> (src & 31)
            elif op == 0x80:
                a = -a
            elif op == 0x90:
                if src == 0:
                    return 0
                a = a % src
            elif op == 0xA0:
                a = a ^ src
            else:
                raise BpfError(f"unsupported ALU op {code:#x}")
            a &= m32
        elif cls == 0x05:  # JMP
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                pc += k
                continue
            if op == 0x10:
                cond = a == src
            elif op == 0x20:
                cond = a > src
            elif op == 0x30:
                cond = a >= src
            elif op == 0x40:
                cond = bool(a & src)
            else:
                raise BpfError(f"unsupported jump {code:#x}")
            pc += jt if cond else jf
        elif cls == 0x06:  # RET
            return (a if code & 0x18 == 0x10 else k) & m32
        elif cls == 0x07:  # MISC
            if code & 0xF8 == 0x00:
                x = a
            elif code & 0xF8 == 0x80:
                a = x
            else:
                raise BpfError(f"unsupported misc {code:#x}")
    raise BpfError("the filter did not return")


def _action(ret: int) -> int:
    full = ret & SECCOMP_RET_ACTION_FULL
    return full - (1 << 32) if full >> 31 else full  # the kernel compares these as s32


def seccomp_verdict(filters: Iterable[Sequence[tuple[int, int, int, int]]], data: bytes) -> int:
    """The action every filter together returns: the most restrictive wins."""
    best: int | None = None
    for prog in filters:
        ret = run_bpf(prog, data)
        if best is None or _action(ret) < _action(best):
            best = ret
    return SECCOMP_RET_ALLOW if best is None else best


def action_name(ret: int) -> str:
    return _SECCOMP_ACTIONS.get(ret & SECCOMP_RET_ACTION_FULL, f"{ret:#x}")


# -- the injector ---------------------------------------------------------------


def _status_field(pid: int, name: str, tid: int | None = None) -> str | None:
    path = f"/proc/{pid}/task/{tid}/status" if tid else f"/proc/{pid}/status"
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == name:
                    return value.strip()
    except OSError:
        return None
    return None


def choose_thread(pid: int) -> int:
    """The thread to stop: the leader, unless it is a zombie or sits in a call
    the kernel would not restart (another thread is then less disruptive)."""
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        raise ProcessGone(pid) from None
    if pid in tids:
        tids.remove(pid)
        tids.insert(0, pid)
    fallback = None
    for tid in tids:
        state = _status_field(pid, "State", tid) or ""
        if state[:1] in ("Z", "X", ""):
            continue
        fallback = fallback or tid
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                first = f.read().split(" ", 1)[0].strip()
        except OSError:
            return tid
        if first == "running" or not first.lstrip("-").isdigit() or int(first) not in _NOT_RESTARTED:
            return tid
    if fallback is None:
        raise ProcessGone(pid, f"process {pid} has no live thread to run a system call in")
    return fallback


class Injector:
    """A stopped thread of ``pid`` that runs system calls for us; a context manager.

    ``attached=True`` takes a thread we already trace and that sits in a
    ptrace stop (the exec stop of :func:`softdirty.spawn`), and leaves the
    detaching to ``__exit__`` as usual.
    """

    def __init__(self, pid: int, *, tid: int | None = None, attached: bool = False) -> None:
        check_arch()
        self.pid = pid
        self.tid = tid if tid is not None else (pid if attached else choose_thread(pid))
        self._attached = attached
        self._seized = False
        self._saved: UserRegs | None = None
        self._regs_dirty = False
        self._held_signals: list[tuple[int, bool]] = []  # (signo, thread-directed)
        self._insn: int | None = None
        self._filters: list[list[tuple[int, int, int, int]]] | None = None

    # -- attach / detach --------------------------------------------------------------
    def __enter__(self) -> Injector:
        try:
            self._attach()
            self._saved = self._getregs()
            if self._saved.cs != _USER_CS_64:
                raise Unsupported("system call injection",
                                  f"process {self.pid} runs 32-bit code (cs={self._saved.cs:#x}); x86-64 only")
            self._insn = self._find_syscall_insn()
            self._load_seccomp()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._detach()

    def _wait(self) -> int:
        while True:
            try:
                _, status = os.waitpid(self.tid, _WALL)
            except ChildProcessError:
                raise ProcessGone(self.pid) from None
            except InterruptedError:
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self._seized = False
                raise ProcessGone(self.pid, f"process {self.pid} exited while we ran a system call in it")
            return status

    def _attach(self) -> None:
        if self._attached:
            self._seized = True
            ptrace(PTRACE_SETOPTIONS, self.tid, 0, PTRACE_O_TRACESYSGOOD)
            return
        try:
            ptrace(PTRACE_SEIZE, self.tid, 0, PTRACE_O_TRACESYSGOOD)
        except OSError as exc:
            raise self._attach_error(exc) from None
        self._seized = True
        ptrace(PTRACE_INTERRUPT, self.tid)
        while True:
            status = self._wait()
            if status >> 16 == PTRACE_EVENT_STOP:
                return  # the interrupt stop (or a group stop: equally good)
            # A signal-delivery stop came first: let the signal go its normal way.
            ptrace(PTRACE_CONT, self.tid, 0, os.WSTOPSIG(status))

    def _attach_error(self, exc: OSError) -> BaseException:
        if exc.errno == errno.ESRCH:
            if not os.path.exists(f"/proc/{self.pid}"):
                return NoSuchProcess(self.pid)
            return ProcessGone(self.pid, f"process {self.pid} cannot be stopped (exiting?)")
        if exc.errno == errno.EPERM and _exiting(self.pid):
            # PTRACE_SEIZE refuses an exiting task with EPERM: that is exit, not permission.
            return ProcessGone(self.pid, f"process {self.pid} is exiting")
        if exc.errno == errno.EPERM:
            tracer = _status_field(self.pid, "TracerPid", self.tid)
            if tracer and tracer != "0":
                why = f"it is already traced by process {tracer} (a process has one tracer at a time)"
            else:
                why = "PTRACE_SEIZE was refused"
            return AccessDenied(self.pid, PTRACE_ATTACH,
                                f"cannot run userfaultfd() in process {self.pid}: {why}; needs {PTRACE_ATTACH}")
        return exc

    def _detach(self) -> None:
        if not self._seized:
            return
        try:
            if self._saved is not None and self._regs_dirty:
                if not in_restartable_syscall(self._saved):
                    self._setregs(self._saved)
                elif self._attached:
                    self._setregs(restarted(self._saved))
                else:
                    self._setregs(self._saved)
                    self._stop_in_get_signal()
            ptrace(PTRACE_DETACH, self.tid, 0, 0)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
            # Not in a ptrace stop any more (killed: it is exiting): nothing to restore, but
            # an exiting tracee stays a zombie only we may reap until we wait for it.
            release_tracees(self.pid, {self.tid: 0})
        finally:
            self._seized = False
        for signo, thread in self._held_signals:
            try:
                if thread:
                    _libc.libc.syscall(ctypes.c_long(NR["tgkill"]), ctypes.c_long(self.pid),
                                       ctypes.c_long(self.tid), ctypes.c_long(signo))
                else:
                    os.kill(self.pid, signo)
            except OSError:
                pass

    def _stop_in_get_signal(self) -> None:
        """From our syscall-exit stop into an interrupt stop: the kernel then
        handles the saved restart code when the thread leaves get_signal()."""
        ptrace(PTRACE_INTERRUPT, self.tid)
        sig = 0
        while True:
            ptrace(PTRACE_CONT, self.tid, 0, sig)
            status = self._wait()
            if status >> 16 == PTRACE_EVENT_STOP:
                return
            if status >> 16 == 0 and os.WSTOPSIG(status) != signal.SIGTRAP | 0x80:
                self._held_signals.append((os.WSTOPSIG(status), self._thread_directed()))
            sig = 0

    # -- registers ----------------------------------------------------------------------
    def _getregs(self) -> UserRegs:
        regs = UserRegs()
        ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(regs))
        return regs

    def _setregs(self, regs: UserRegs) -> None:
        ptrace(PTRACE_SETREGS, self.tid, 0, ctypes.addressof(regs))

    @property
    def saved_regs(self) -> UserRegs:
        if self._saved is None:
            raise ValueError("not attached")
        return self._saved.copy()

    # -- finding a syscall instruction ------------------------------------------------------
    def _find_syscall_insn(self) -> int:
        regions = []
        with open(f"/proc/{self.pid}/maps") as f:
            for line in f:
                fields = line.split()
                lo, hi = (int(v, 16) for v in fields[0].split("-"))
                name = fields[5] if len(fields) > 5 else ""
                if "x" in fields[1] and hi <= 1 << 47:
                    regions.append((0 if name == "[vdso]" else 1, lo, hi))
        regions.sort()
        fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for _, lo, hi in regions:
                pos = lo
                while pos < hi:
                    n = min(hi - pos, 1 << 20)
                    try:
                        chunk = os.pread(fd, n + 1, pos)[: n + 1]
                    except OSError:
                        break
                    i = chunk.find(_SYSCALL_INSN)
                    if i >= 0:
                        return pos + i
                    pos += n
        finally:
            os.close(fd)
        raise Unsupported("system call injection",
                          f"no syscall instruction found in the executable mappings of process {self.pid}")

    # -- seccomp ------------------------------------------------------------------------------
    def _load_seccomp(self) -> None:
        mode = _status_field(self.pid, "Seccomp", self.tid)
        if mode in (None, "0"):
            return
        if mode == "1":
            raise Unsupported("system call injection",
                              f"process {self.pid} runs in strict seccomp mode: any other system call kills it")
        filters = []
        index = 0
        while True:
            try:
                count = ptrace(PTRACE_SECCOMP_GET_FILTER, self.tid, index, 0)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    break
                raise Unsupported(
                    "system call injection",
                    f"process {self.pid} has seccomp filters and we cannot read them ({exc.strerror}; needs "
                    f"CAP_SYS_ADMIN): a filter might kill it for the system calls we would run") from None
            buf = ctypes.create_string_buffer(count * _SOCK_FILTER.size)
            ptrace(PTRACE_SECCOMP_GET_FILTER, self.tid, index, ctypes.addressof(buf))
            filters.append([_SOCK_FILTER.unpack_from(buf.raw, i * _SOCK_FILTER.size) for i in range(count)])
            index += 1
        self._filters = filters

    def check_allowed(self, name: str, args: Sequence[int]) -> None:
        """Refuse (Unsupported) unless the target's seccomp filters allow this call."""
        if not self._filters or self._insn is None:
            return
        try:
            ret = seccomp_verdict(self._filters, seccomp_data(NR[name], args, self._insn + 2))
        except BpfError as exc:
            raise Unsupported("system call injection",
                              f"cannot evaluate the seccomp filter of process {self.pid}: {exc}") from None
        action = ret & SECCOMP_RET_ACTION_FULL
        if action not in (SECCOMP_RET_ALLOW, SECCOMP_RET_LOG):
            raise Unsupported("system call injection",
                              f"the seccomp filter of process {self.pid} answers {name}() with "
                              f"SECCOMP_RET_{action_name(ret)}")

    # -- running a system call --------------------------------------------------------------
    def _step_to_syscall_stop(self) -> None:
        sig = 0
        while True:
            ptrace(PTRACE_SYSCALL, self.tid, 0, sig)
            sig = 0
            status = self._wait()
            stopsig = os.WSTOPSIG(status)
            if stopsig == signal.SIGTRAP | 0x80:
                return
            if status >> 16 == PTRACE_EVENT_STOP:
                continue  # a group stop or a late interrupt: just go on
            if status >> 16:
                continue  # other ptrace events are not enabled
            # A signal arrived: hold it back until the thread is itself again.
            self._held_signals.append((stopsig, self._thread_directed()))

    def _thread_directed(self) -> bool:
        info = ctypes.create_string_buffer(128)
        try:
            ptrace(PTRACE_GETSIGINFO, self.tid, 0, ctypes.addressof(info))
        except OSError:
            return False
        si_code: int = struct.unpack_from("<i", info.raw, 8)[0]
        return si_code == -6  # SI_TKILL: tkill/tgkill

    def syscall(self, name: str, *args: int) -> int:
        """Run one system call in the stopped thread; the raw result (``-errno`` on failure)."""
        if len(args) > 6:
            raise ValueError("a system call takes at most 6 arguments")
        if self._saved is None or self._insn is None:
            raise ValueError("not attached")
        self.check_allowed(name, args)
        regs = self._saved.copy()
        full = list(args) + [0] * (6 - len(args))
        regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = (a & _U64 for a in full)
        regs.rax = NR[name]
        regs.orig_rax = _U64  # -1: keep the kernel's restart logic away from our registers
        regs.rip = self._insn
        self._regs_dirty = True
        self._setregs(regs)
        self._step_to_syscall_stop()  # entry
        entry = self._getregs()
        if entry.orig_rax != NR[name]:
            raise OSError(errno.EIO, f"process {self.pid} entered syscall {_signed(entry.orig_rax)}, "
                                     f"not {name} ({NR[name]})")
        self._step_to_syscall_stop()  # exit
        ret = _signed(self._getregs().rax)
        # Our own registers back at once: if we die from here on, the thread resumes as itself.
        self._setregs(self._saved)
        return ret


_PF_EXITING = 0x00000004


def _exiting(pid: int) -> bool:
    """A zombie, gone, or PF_EXITING (field 9 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return True
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0] in ("Z", "X") or bool(int(fields[6]) & _PF_EXITING)


# -- the injector process (see the module docstring) -------------------------------------

# A job: ``"softdirty.module:function"``, called as function(injector, pidfd, args) in the
# stopped target; it returns (a JSON-able result, fds of the process it runs in).
JobResult = tuple[dict[str, Any], list[int]]
Job = Callable[[Injector, int, dict[str, Any]], JobResult]

# Runs in the injector process: our modules without softdirty/__init__ (which imports everything).
_BOOTSTRAP = ("import sys,types\n"
              "p=types.ModuleType('softdirty');p.__path__=[sys.argv[1]];sys.modules['softdirty']=p\n"
              "import softdirty.inject as i\n"
              "i.injector_main(sys.argv[2:])\n")
# Signals an injector must not die of: it finishes in milliseconds, then exits anyway.
_HELD_OFF = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP,
             signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2)


class InjectorUnavailable(Exception):
    """No injector process can be started here (no interpreter to run it with)."""


def run_injection(pid: int, pidfd: int, job: str, args: dict[str, Any]) -> JobResult:
    """Stop a thread of ``pid`` (opened as ``pidfd``), run ``job`` there; its result and fds (ours).

    It runs in an injector process, so that our death cannot leave the
    target with injected registers.  In this process only when that cannot
    be: no interpreter to start it with (``sys.executable`` empty or not
    there: an embedded Python), or the injector was refused ptrace access
    to a target that is our descendant (Yama's ``ptrace_scope=1`` lets a
    process trace its own descendants only, and the injector, in a session
    of its own, is not an ancestor of our children); then a SIGKILL of this
    process during the injection can still crash the target.
    """
    _resolve(job)  # a bad job name fails here, before anything runs
    try:
        return _run_in_injector_process(pid, pidfd, job, args)
    except InjectorUnavailable:
        pass
    except AccessDenied:
        if not _is_descendant(pid):
            raise
    with Injector(pid) as inj:
        _same_process(pidfd, pid)
        return _resolve(job)(inj, pidfd, args)


def _resolve(job: str) -> Job:
    module, _, name = job.partition(":")
    if not module.startswith("softdirty.") or not name:
        raise ValueError(f"an injection job is 'softdirty.module:function', not {job!r}")
    fn: Job = getattr(importlib.import_module(module), name)
    return fn


def _is_descendant(pid: int) -> bool:
    me = os.getpid()
    for _ in range(4096):
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            return False
        pid = int(text[text.rindex(")") + 2 :].split()[1])
        if pid == me:
            return True
        if pid <= 1:
            return False
    return False


def _same_process(pidfd: int, pid: int) -> None:
    """The thread we seized belongs to the process ``pidfd`` was opened on (not a reused PID)."""
    if pidfd < 0:
        return
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        raise ProcessGone(pid) from None


def _run_in_injector_process(pid: int, pidfd: int, job: str, args: dict[str, Any]) -> JobResult:
    python = sys.executable
    package = os.path.dirname(os.path.abspath(__file__))
    if not python or not os.access(python, os.X_OK) or not os.path.isfile(os.path.join(package, "inject.py")):
        raise InjectorUnavailable(f"no interpreter to run an injector with (sys.executable={python!r})")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        try:
            proc = subprocess.Popen(
                [python, "-I", "-S", "-c", _BOOTSTRAP, package, str(theirs.fileno()), str(pid), str(pidfd), job],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=(theirs.fileno(), pidfd) if pidfd >= 0 else (theirs.fileno(),),
                start_new_session=True)
        except OSError as exc:
            raise InjectorUnavailable(f"cannot start an injector with {python}: {exc}") from None
        finally:
            theirs.close()
        assert proc.stdin is not None and proc.stderr is not None
        try:
            proc.stdin.write(json.dumps(args).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it died before reading: no answer below says so
        try:
            msg, fds, _, _ = socket.recv_fds(ours, 1 << 16, 16)
        except InterruptedError:  # pragma: no cover (PEP 475 retries)
            msg, fds = b"", []
        stderr = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        status = proc.wait()
    finally:
        ours.close()
    if not msg:
        for fd in fds:
            os.close(fd)
        raise OSError(errno.EIO, f"the injector process for process {pid} ended without an answer "
                                 f"(exit status {status}){': ' + stderr[-2000:] if stderr else ''}")
    try:
        reply = json.loads(msg)
        if "error" in reply:
            raise _decode_error(reply["error"])
        result: dict[str, Any] = reply["result"]
        if reply.get("nfds") != len(fds):
            raise OSError(errno.EIO, f"the injector process for process {pid} sent {len(fds)} fds, "
                                     f"not {reply.get('nfds')}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return result, fds


def injector_main(argv: Sequence[str]) -> None:
    """The injector process (see ``_BOOTSTRAP``): argv = socket fd, pid, pidfd, job; args on stdin."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_OFF)
    sock = socket.socket(fileno=int(argv[0]))
    fds: list[int] = []
    reply: dict[str, Any]
    try:
        pid, pidfd, job = int(argv[1]), int(argv[2]), _resolve(argv[3])
        args = json.loads(sys.stdin.buffer.read())
        if _peer_gone(sock):
            os._exit(0)  # the tracker died before we touched the target: nothing to do
        with Injector(pid) as inj:
            _same_process(pidfd, pid)
            result, fds = job(inj, pidfd, args)
        reply = {"result": result, "nfds": len(fds)}  # only now: restored and detached
    except BaseException as exc:
        for fd in fds:
            os.close(fd)
        fds = []
        reply = {"error": _encode_error(exc)}
    try:
        socket.send_fds(sock, [json.dumps(reply).encode()], fds)
    except OSError:
        pass  # the tracker is gone: what we took goes with us
    os._exit(0)


def _peer_gone(sock: socket.socket) -> bool:
    import select

    poller = select.poll()
    poller.register(sock, select.POLLHUP)
    return any(ev & select.POLLHUP for _, ev in poller.poll(0))


_ERROR_ATTRS = ("pid", "permission", "feature", "reason", "errno", "strerror")


def _encode_error(exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    for attr in _ERROR_ATTRS:
        value = getattr(exc, attr, None)
        if isinstance(value, (int, str)):
            out[attr] = value
    if not isinstance(exc, (OSError, NoSuchProcess, AccessDenied, Unsupported, AlreadyTracked)):
        import traceback

        out["message"] = "".join(traceback.format_exception(exc)).strip()
    return out


def _decode_error(err: dict[str, Any]) -> BaseException:
    kind, msg = err.get("type"), str(err.get("message"))
    gone: dict[str, type[NoSuchProcess]] = {
        "NoSuchProcess": NoSuchProcess, "ProcessGone": ProcessGone, "AddressSpaceReplaced": AddressSpaceReplaced}
    if kind in gone and isinstance(err.get("pid"), int):
        return gone[str(kind)](err["pid"], msg)
    if kind == "AccessDenied" and "permission" in err:
        return AccessDenied(err.get("pid"), err["permission"], msg)
    if kind == "Unsupported" and "feature" in err:
        return Unsupported(err["feature"], str(err.get("reason")))
    if kind == "AlreadyTracked" and "pid" in err:
        return AlreadyTracked(err["pid"], msg)
    if isinstance(err.get("errno"), int):
        return OSError(err["errno"], err.get("strerror") or msg)
    return RuntimeError(f"in the injector process: {msg}")
