"""Tracker death and two trackers on one target.

Tracker death: a tracker subprocess (tests/stress/tracker_child.py) is SIGKILLed at a random
moment while it tracks with uffd, while it injects (track/close loop), while it freezes the target
and (VM) during exact soft-dirty harvests.  The target must keep running, not be left stopped
(/proc/PID/stat state, TracerPid) and keep no userfaultfd registration (WPALLOWED, bit 57).
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stress.targets import build, stat_state, wp_bits, wp_registered

import softdirty
from softdirty.answer import Answer
from softdirty.dirtyset import Cause
from softdirty.errors import AlreadyTracked
from softdirty.process import LiveProcess

CHILD = Path(__file__).parent / "stress" / "tracker_child.py"


def victim() -> tuple[subprocess.Popen[str], int]:
    p = subprocess.Popen([build("victim"), "-1"], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return p, int(p.stdout.readline().split()[1])


def stat_state_or_none(pid: int) -> str | None:
    try:
        return stat_state(pid)[0]
    except OSError:
        return None


def wait_for_orphaned_injectors(pid: int) -> int:
    """A tracker killed mid-injection leaves its injector process (softdirty/inject.py, a session
    of its own) to finish the job, restore the target and let go: the target is traced by it for
    those milliseconds (or a little later: it may not have seized it yet).  Wait until every
    injector process for ``pid`` has exited; how many there were."""
    found = 0
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if not any(b"injector_main" in a for a in argv) or str(pid).encode() not in argv:
                continue
            fd = os.pidfd_open(int(entry))
        except (OSError, ValueError):  # not a process, or it has exited already
            continue
        try:
            select.select([fd], [], [], 60)  # readable when it exits
        finally:
            os.close(fd)
        found += 1
    return found


def left_behind(pid: int, n: int) -> list[str]:
    """What a killed tracker left in the target: a ptrace or group stop, a tracer, a registration."""
    bad = []
    state, tracer = stat_state(pid)
    if state in ("t", "T") or tracer != 0:
        bad.append(f"round {n}: target left state={state} TracerPid={tracer}")
    regs, bits = wp_registered(pid), wp_bits(pid)
    if regs or bits:
        bad.append(f"round {n}: registration left: {regs[:3]} bits {bits[:3]}")
    return bad


def died(p: subprocess.Popen[str] | subprocess.Popen[bytes], n: int, bad: list[str]) -> bool:
    if p.poll() is not None or stat_state_or_none(p.pid) in ("Z", None):
        bad.append(f"round {n}: target died ({p.wait()}, signal {-(p.returncode or 0)})")
        return True
    return False


def kill_tracker_rounds(mode: str, rounds: int) -> list[str]:
    rng = random.Random(mode)
    bad: list[str] = []
    orphans = 0
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(softdirty.__file__)))
    p, _ = victim()
    try:
        for n in range(rounds):
            tr = subprocess.Popen([sys.executable, str(CHILD), mode, str(p.pid)], stdout=subprocess.PIPE,
                                  text=True, env=env)
            assert tr.stdout is not None and tr.stdout.readline() == "go\n"
            time.sleep(rng.uniform(0.0, 0.15))
            tr.send_signal(signal.SIGKILL)
            tr.wait()
            try:
                orphans += wait_for_orphaned_injectors(p.pid)
                bad += left_behind(p.pid, n)
            except OSError:  # the target is gone (checked below)
                pass
            if died(p, n, bad):
                break
    finally:
        p.kill()
        p.wait()
    print(f"\n[reliability] tracker SIGKILLed during {mode}: rounds={rounds} faults injected={rounds} "
          f"injectors outliving their tracker={orphans} failures={len(bad)}")
    return bad


@pytest.mark.uffd_wp_async
@pytest.mark.parametrize("mode", [
    "uffd",
    "inject",
    "freeze",
])
def test_tracker_killed_leaves_target_running_and_clean(mode: str, stress: int) -> None:
    bad = kill_tracker_rounds(mode, 12 * stress)
    assert not bad, bad


def catch_injector(target: int) -> tuple[int, int] | None:
    """SIGSTOP the injector process that has ``target`` traced, if it still has: (its pid, target's
    syscall number then, -1 if none).  None when we came too late."""
    tracer = stat_state(target)[1]
    if not tracer:
        return None
    try:
        with open(f"/proc/{tracer}/cmdline", "rb") as f:
            if b"injector_main" not in f.read():
                return None
        os.kill(tracer, signal.SIGSTOP)
    except OSError:
        return None
    while True:  # until it is stopped, or gone
        try:
            with open(f"/proc/{tracer}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in "TZX":
                    break
        except OSError:
            return None
    if stat_state(target)[1] != tracer:
        os.kill(tracer, signal.SIGCONT)
        return None  # it had let go already
    with open(f"/proc/{target}/syscall") as f:
        first = f.read().split()[0]
    return tracer, int(first) if first.lstrip("-").isdigit() else -1


@pytest.mark.uffd_wp_async
def test_tracker_killed_while_its_injector_holds_the_target(stress: int) -> None:
    """The tracker is SIGKILLed while its injector process holds the target stopped, the moment that
    used to crash the target when the tracker injected itself.  To land there surely, the injector is
    caught with SIGSTOP while it has the target traced (sometimes with the injected userfaultfd() or
    close() loaded in the registers), the tracker is killed, then the injector is let go: it must
    finish, restore the target and let go of it, and nothing may be left registered."""
    rounds, bad, in_call = 6 * stress, [], 0
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(softdirty.__file__)))
    p, _ = victim()
    try:
        for n in range(rounds):
            tr = subprocess.Popen([sys.executable, str(CHILD), "inject", str(p.pid)], stdout=subprocess.PIPE,
                                  text=True, env=env)
            assert tr.stdout is not None and tr.stdout.readline() == "go\n"
            caught = None
            while caught is None:
                assert tr.poll() is None, f"round {n}: the tracker failed (exit status {tr.returncode})"
                caught = catch_injector(p.pid)
            injector, nr = caught
            in_call += nr in (3, 323)  # close or userfaultfd: the injected registers are loaded
            tr.send_signal(signal.SIGKILL)
            tr.wait()
            os.kill(injector, signal.SIGCONT)
            wait_for_orphaned_injectors(p.pid)
            bad += left_behind(p.pid, n)
            if any(os.readlink(f"/proc/{p.pid}/fd/{fd}") == "anon_inode:[userfaultfd]"
                   for fd in os.listdir(f"/proc/{p.pid}/fd")):
                bad.append(f"round {n}: a userfaultfd left open in the target")
            if died(p, n, bad):
                break
    finally:
        p.kill()
        p.wait()
    print(f"\n[reliability] tracker SIGKILLed while its injector held the target: rounds={rounds} "
          f"(with injected registers loaded: {in_call}) failures={len(bad)}")
    assert not bad, bad


@pytest.mark.softdirty_kernel
def test_tracker_killed_during_exact_harvest() -> None:
    bad = kill_tracker_rounds("exact", 6)
    assert not bad, bad


class PretendSoftDirty(LiveProcess):
    """Claims soft-dirty so that the back end's one-clearer lock can be tested on this host."""

    def feature(self, name: str) -> Answer:
        if name == "soft_dirty":
            return Answer(True, "pretended: the lock is under test, not the bits")
        return super().feature(name)


def test_second_softdirty_tracker_is_refused_clearly() -> None:
    p, _ = victim()
    try:
        first = softdirty.track(PretendSoftDirty(p.pid), backend="softdirty")
        with pytest.raises(AlreadyTracked, match="one clear per process"):
            softdirty.track(PretendSoftDirty(p.pid), backend="softdirty")
        first.close()  # the lock goes with the tracker
        softdirty.track(PretendSoftDirty(p.pid), backend="softdirty").close()
    finally:
        p.kill()
        p.wait()


@pytest.mark.softdirty_kernel
def test_second_softdirty_tracker_in_another_process_is_refused() -> None:
    p, _ = victim()
    try:
        with softdirty.track(p.pid, backend="softdirty"):
            code = ("import softdirty,sys\n"
                    "try:\n softdirty.track(int(sys.argv[1]), backend='softdirty')\n"
                    "except softdirty.AlreadyTracked as e:\n print('REFUSED', e); sys.exit(0)\n"
                    "sys.exit(1)\n")
            got = subprocess.run([sys.executable, "-c", code, str(p.pid)], capture_output=True, text=True)
            assert got.returncode == 0 and "REFUSED" in got.stdout, got.stdout + got.stderr
    finally:
        p.kill()
        p.wait()


@pytest.mark.uffd_wp_async
def test_two_uffd_trackers_never_report_writes_as_clean() -> None:
    """What the uffd back end does with a second tracker: the first keeps its ranges; the second
    reports them UNTRACKED ("registered by another userfaultfd"), never as clean."""
    p, addr = victim()
    try:
        with softdirty.track(p.pid, backend="uffd") as t1, softdirty.track(p.pid, backend="uffd") as t2:
            t1.reset()
            t2.reset()
            time.sleep(0.05)
            d1, d2 = t1.harvest(), t2.harvest()
            assert addr in d1 and addr in d2
            c1 = next(r.flags for r in d1.ranges if r.start <= addr < r.end)
            c2 = next(r.flags for r in d2.ranges if r.start <= addr < r.end)
            print(f"\n[reliability] two uffd trackers: first reports {c1!r}, second {c2!r}")
            assert c1 & Cause.WRITTEN
            assert c2 & (Cause.WRITTEN | Cause.UNTRACKED)
        assert not wp_registered(p.pid)
    finally:
        p.kill()
        p.wait()
