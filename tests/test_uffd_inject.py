"""System call injection (softdirty.inject): the target goes on exactly as before."""

from __future__ import annotations

import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from helpers.uffd_programs import Target, build, wait_in_syscall

import softdirty
from softdirty.backends.uffd import FEATURES
from softdirty.errors import Unsupported
from softdirty.inject import (
    ERESTART_RESTARTBLOCK,
    ERESTARTNOHAND,
    ERESTARTSYS,
    NR,
    SECCOMP_RET_ALLOW,
    Injector,
    UserRegs,
    restarted,
    run_bpf,
    run_injection,
    seccomp_data,
    seccomp_verdict,
)
from softdirty.process import LiveProcess
from softdirty.uffd_live import is_uffd, open_uffd_for

CLOCK_NANOSLEEP = 230
# Long enough for the injection to land inside the sleep: an injector process starts in ~0.1 s
# on the host, 1-2 s under TCG.
SLEEP_MS = 6000 if os.environ.get("SOFTDIRTY_IN_VM") else 1000


@pytest.fixture(scope="module")
def exe() -> Iterator[str]:
    path = build()
    yield path
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def steal_and_close(pid: int) -> None:
    with LiveProcess(pid) as proc:
        uffd = open_uffd_for(proc, FEATURES)
        assert is_uffd(uffd.fileno())
        uffd.close()


# -- blocked system calls resume with the right results ------------------------------------


def test_blocked_read_gets_its_data(exe: str) -> None:
    with Target(exe, "read") as t:
        wait_in_syscall(t.pid, [NR["read"]])
        steal_and_close(t.pid)
        t.send("hello")
        assert t.line() == "read 5 0 hello"


def test_blocked_nanosleep_sleeps_its_full_time_and_returns_0(exe: str) -> None:
    with Target(exe, "nanosleep", str(SLEEP_MS)) as t:
        wait_in_syscall(t.pid, [CLOCK_NANOSLEEP])
        steal_and_close(t.pid)
        words = t.line().split()
    assert words[:3] == ["nanosleep", "0", "0"]
    # restart_syscall continued the same sleep: not cut short by the interruption.
    assert int(words[3]) >= SLEEP_MS * 1_000_000


def test_blocked_futex_wait_is_woken_normally(exe: str) -> None:
    with Target(exe, "futex") as t:
        wait_in_syscall(t.pid, [NR["futex"]])
        steal_and_close(t.pid)
        # The interrupted FUTEX_WAIT restarts and re-checks the word (EAGAIN had it changed
        # meanwhile, as after any stop): wake it only once it sleeps again.
        wait_in_syscall(t.pid, [NR["futex"]])
        t.send("wake")
        words = t.line().split()
    assert words[0] == "futex" and words[1:3] == ["0", "0"] and words[4] == "1"  # woken, word set


def test_blocked_futex_with_timeout_times_out_on_time(exe: str) -> None:
    with Target(exe, "futex-timeout", str(SLEEP_MS)) as t:
        wait_in_syscall(t.pid, [NR["futex"]])
        steal_and_close(t.pid)
        words = t.line().split()
    assert words[:3] == ["futex", "-1", "110"]  # ETIMEDOUT, neither EINTR nor a spurious 0
    assert int(words[3]) >= SLEEP_MS * 1_000_000


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def wait_state(pid: int, want: str) -> None:
    deadline = time.monotonic() + 10
    while state(pid) != want:
        assert time.monotonic() < deadline, f"process {pid} is {state(pid)}, not {want}"
        time.sleep(0.001)


def test_group_stopped_target_stays_stopped(exe: str) -> None:
    with Target(exe, "ctl") as t:
        os.kill(t.pid, signal.SIGSTOP)
        wait_state(t.pid, "T")
        with softdirty.track(t.pid, backend="uffd") as tr:
            tr.reset()
            wait_state(t.pid, "T")  # detaching puts it back into the group stop
            t.send("map 4")
            assert t.popen.stdout is not None
            assert select.select([t.popen.stdout], [], [], 0.3)[0] == []  # it does not run
            os.kill(t.pid, signal.SIGCONT)
            a = int(t.line().split()[1], 16)
            t.write(a + 4096)
            assert (a + 4096) in tr.harvest()


@pytest.mark.parametrize("blocked", [False, True])
def test_signals_arriving_during_injection_are_delivered_once_each(exe: str, blocked: bool) -> None:
    with Target(exe, "ctl") as t:
        if blocked:
            wait_in_syscall(t.pid, [NR["read"]])
        with Injector(t.pid) as inj:
            for _ in range(5):
                os.kill(t.pid, signal.SIGRTMIN)  # queued while it is stopped: none may be lost or doubled
            assert inj.syscall("close", 999) == -9  # EBADF: it ran in the target
            held = len(inj._held_signals)
        assert held == 5  # they came in while we stepped the syscall and were held back
        deadline = time.monotonic() + 10
        while int(t.cmd("signals")[0]) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert t.cmd("signals") == ["5"]
        # The same with a sender running alongside several whole uffd thefts.
        sender = subprocess.Popen([sys.executable, "-c", SENDER, str(t.pid)], stdout=subprocess.PIPE, text=True)
        assert sender.stdout is not None and sender.stdout.readline().strip() == "sending"
        try:
            for _ in range(30):
                steal_and_close(t.pid)
        finally:
            sender.terminate()
            sent = int(sender.communicate()[0])
        while int(t.cmd("signals")[0]) < 5 + sent and time.monotonic() < deadline + 10:
            time.sleep(0.01)
        assert int(t.cmd("signals")[0]) == 5 + sent and sent > 0


SENDER = """
import os, signal, sys, time
pid, sent, stop = int(sys.argv[1]), 0, []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))  # only a flag: the count stays exact
print("sending", flush=True)
while not stop and sent < 20000:
    os.kill(pid, signal.SIGRTMIN)
    sent += 1
    time.sleep(0.0001)
print(sent, flush=True)
"""


def test_multithreaded_target(exe: str) -> None:
    with Target(exe, "futex") as t:  # two threads: one in futex, one in read
        wait_in_syscall(t.pid, [NR["futex"]])
        assert len(os.listdir(f"/proc/{t.pid}/task")) == 2
        for _ in range(5):
            steal_and_close(t.pid)
        wait_in_syscall(t.pid, [NR["futex"]])  # asleep again (see the test above)
        t.send("wake")
        assert t.line().split()[1:3] == ["0", "0"]


# -- seccomp ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "action"), [("seccomp-kill", "KILL_PROCESS"), ("seccomp-errno", "ERRNO")])
def test_seccomp_filter_that_would_refuse_is_respected(exe: str, mode: str, action: str) -> None:
    if os.getuid() != 0:
        pytest.skip("reading a seccomp filter needs CAP_SYS_ADMIN")
    with Target(exe, mode) as t:
        with pytest.raises(Unsupported, match=action):
            softdirty.track(t.pid, backend="uffd")
        assert t.alive() and t.cmd("getpid") == [str(t.pid)]
        assert all(not os.readlink(f"/proc/{t.pid}/fd/{fd}").startswith("anon_inode")
                   for fd in os.listdir(f"/proc/{t.pid}/fd"))


def test_seccomp_filter_that_allows_is_evaluated_and_passes(exe: str) -> None:
    if os.getuid() != 0:
        pytest.skip("reading a seccomp filter needs CAP_SYS_ADMIN")
    with Target(exe, "seccomp-allow") as t:
        a = t.map(4)
        with softdirty.track(t.pid, backend="uffd") as tr:
            tr.reset()
            t.write(a)
            assert a in tr.harvest()


# -- units ---------------------------------------------------------------------------------------


def regs(**values: int) -> UserRegs:
    r = UserRegs()
    for k, v in values.items():
        setattr(r, k, v & ((1 << 64) - 1))
    return r


@pytest.mark.parametrize("code", [ERESTARTSYS, ERESTARTNOHAND, 513])
def test_interrupted_syscall_is_set_up_to_run_again(code: int) -> None:
    out = restarted(regs(orig_rax=0, rax=-code, rip=0x1002, rdi=7))
    assert (out.rax, out.rip, out.rdi) == (0, 0x1000, 7)


def test_restart_block_goes_through_restart_syscall() -> None:
    out = restarted(regs(orig_rax=230, rax=-ERESTART_RESTARTBLOCK, rip=0x1002))
    assert (out.rax, out.rip) == (NR["restart_syscall"], 0x1000)


@pytest.mark.parametrize(("orig", "rax"), [(-1, -ERESTARTSYS), (0, 5), (0, -4), (230, 0)])
def test_other_states_are_left_alone(orig: int, rax: int) -> None:
    before = regs(orig_rax=orig, rax=rax, rip=0x1002)
    out = restarted(before)
    assert bytes(out) == bytes(before)


def bpf(code: int, jt: int, jf: int, k: int) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


LD_NR = bpf(0x20, 0, 0, 0)  # A = seccomp_data.nr
LD_ARCH = bpf(0x20, 0, 0, 4)
LD_ARG0 = bpf(0x20, 0, 0, 16)


def test_bpf_interpreter() -> None:
    kill, allow, errno_eperm = 0x80000000, SECCOMP_RET_ALLOW, 0x00050001
    prog = [LD_ARCH, bpf(0x15, 1, 0, 0xC000003E), bpf(0x06, 0, 0, kill), LD_NR,
            bpf(0x15, 0, 1, NR["userfaultfd"]), bpf(0x06, 0, 0, errno_eperm), bpf(0x06, 0, 0, allow)]
    assert run_bpf(prog, seccomp_data(NR["userfaultfd"], [0], 0)) == errno_eperm
    assert run_bpf(prog, seccomp_data(NR["close"], [3], 0)) == allow
    bad_arch = struct.pack("<iI", NR["close"], 0x40000003) + bytes(56)
    assert run_bpf(prog, bad_arch) == kill
    # arithmetic, scratch memory, X register, JSET and JA
    prog2 = [LD_ARG0, bpf(0x54, 0, 0, 0xFF), bpf(0x02, 0, 0, 3), bpf(0x01, 0, 0, 2),  # A&=0xff; M[3]=A; X=2
             bpf(0x60, 0, 0, 3), bpf(0x2C, 0, 0, 0), bpf(0x45, 0, 1, 8),  # A=M[3]; A*=X; jset 8
             bpf(0x06, 0, 0, allow), bpf(0x05, 0, 0, 0), bpf(0x06, 0, 0, kill)]
    assert run_bpf(prog2, seccomp_data(3, [0x104], 0)) == allow  # (0x04 * 2) & 8
    assert run_bpf(prog2, seccomp_data(3, [0x101], 0)) == kill


def test_most_restrictive_filter_wins() -> None:
    allow = [bpf(0x06, 0, 0, SECCOMP_RET_ALLOW)]
    trap = [bpf(0x06, 0, 0, 0x00030000)]
    kill_process = [bpf(0x06, 0, 0, 0x80000000)]
    data = seccomp_data(3, [], 0)
    assert seccomp_verdict([allow, trap], data) == 0x00030000
    assert seccomp_verdict([trap, kill_process, allow], data) == 0x80000000
    assert seccomp_verdict([], data) == SECCOMP_RET_ALLOW


def test_injector_refuses_to_attach_twice(exe: str) -> None:
    with Target(exe, "ctl") as t:
        with Injector(t.pid) as inj:
            assert inj.syscall("close", 999) == -9  # EBADF, run inside the target
            with pytest.raises(softdirty.AccessDenied, match="already traced"):
                with Injector(t.pid):
                    pass
        assert t.cmd("getpid") == [str(t.pid)]


# -- the injector process ------------------------------------------------------------------------


def test_injection_runs_in_an_injector_process(exe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our death mid-injection must not touch the target: we never attach ourselves."""
    def refuse(self: Injector) -> Injector:
        raise AssertionError("injected from the tracker's own process")

    monkeypatch.setattr(Injector, "__enter__", refuse)
    with Target(exe, "read") as t:
        wait_in_syscall(t.pid, [NR["read"]])
        steal_and_close(t.pid)
        t.send("hello")
        assert t.line() == "read 5 0 hello"


def test_without_an_interpreter_it_injects_in_process(exe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    entered = []
    real = Injector.__enter__

    def spy(self: Injector) -> Injector:
        entered.append(self.pid)
        return real(self)

    monkeypatch.setattr(Injector, "__enter__", spy)
    monkeypatch.setattr(sys, "executable", "")  # an embedded Python: no injector process to start
    with Target(exe, "read") as t:
        wait_in_syscall(t.pid, [NR["read"]])
        steal_and_close(t.pid)
        t.send("hello")
        assert t.line() == "read 5 0 hello"
    assert entered == [t.pid]


def test_injector_errors_come_back_typed(exe: str) -> None:
    with Target(exe, "ctl") as t, LiveProcess(t.pid) as proc:
        with pytest.raises(OSError, match="madvise") as info:  # EINVAL: not page-aligned
            run_injection(t.pid, proc.pidfd, "softdirty.uffd_live:madvise_job",
                          {"ranges": [[1, 4096]], "advice": 4})
        assert info.value.errno == 22
        with pytest.raises(ValueError, match="softdirty.module:function"):
            run_injection(t.pid, proc.pidfd, "os:system", {})
        assert t.cmd("getpid") == [str(t.pid)]
    with pytest.raises(softdirty.ProcessGone):
        run_injection(t.pid, -1, "softdirty.uffd_live:steal_job", {})
