"""The target exits at every point of reset, harvest and dump: typed errors or correct results only.

Each round starts a short-lived C target (tests/stress/victim.c) that writes its pages and exits by
itself after a random delay; some rounds also SIGKILL it, or reap it (freeing its PID), from a timer
thread at a random moment.  The tracker meanwhile opens it and runs reset/harvest until it fails.
Every failure must be one of our typed errors (NoSuchProcess and its subclasses ProcessGone,
AddressSpaceReplaced); an OSError/ValueError/... from deep inside, a crash or a hang fails the test.

Sizes: CI runs ~1,060 rounds in total (soft-dirty code path 800, uffd 200, dump 60); --stress x10.
Run with -s to see the summary lines.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from stress.targets import build

import softdirty
from softdirty.answer import Answer
from softdirty.dirtyset import DirtySet
from softdirty.errors import AddressSpaceReplaced, NoSuchProcess
from softdirty.process import LiveProcess

HANG = 20.0  # seconds one round may take before it counts as a hang


class PretendSoftDirty(LiveProcess):
    """A live process whose kernel we claim has soft-dirty: the host lacks it (clear_refs "4" is
    accepted and does nothing; bit 55 stays 0), but every step of the soft-dirty back end (open
    clear_refs, write it, read maps, windowed pagemap reads, PAGEMAP_SCAN) still runs against a
    process that is exiting, which is what these rounds are about."""

    def feature(self, name: str) -> Answer:
        if name == "soft_dirty":
            return Answer(True, "pretended: the error paths are under test, not the bits")
        return super().feature(name)


@dataclass
class Tally:
    rounds: int = 0
    operations: int = 0
    faults: int = 0  # target deaths we caused (kill/reap) or scheduled (self-exit)
    typed: Counter[str] = field(default_factory=Counter)
    results: int = 0  # operations that returned a (checked) result
    bad: list[str] = field(default_factory=list)

    def line(self, what: str) -> str:
        return (f"[reliability] {what}: rounds={self.rounds} faults injected={self.faults} "
                f"operations={self.operations} results checked={self.results} "
                f"typed errors={dict(self.typed)} failures={len(self.bad)}")


def check_result(ds: DirtySet) -> None:
    """A harvest that returned must be well formed: sorted, disjoint, page-aligned ranges."""
    last = -1
    for r in ds.ranges:
        assert r.start % 4096 == 0 and r.end % 4096 == 0 and r.start < r.end, r
        assert r.start >= last, ds.ranges
        last = r.end


def start_victim(rng: random.Random, tally: Tally, reap: bool = True
                 ) -> tuple[subprocess.Popen[bytes], threading.Timer | None]:
    """``reap``: some faults also reap the victim (freeing its PID).  Not where the library ptraces
    the victim (our child): our waitpid would steal its ptrace stops."""
    exe = build("victim")
    life = rng.randrange(0, 30_000)  # microseconds
    p = subprocess.Popen([exe, str(life)], stdout=subprocess.DEVNULL)
    tally.faults += 1
    timer = None
    how = rng.randrange(3 if reap else 2)
    if how:
        def fault() -> None:
            # os.kill, not p.kill(): Popen.send_signal() polls first, and a waitpid from this
            # thread would steal the ptrace stops the library is waiting for (a hang).
            os.kill(p.pid, signal.SIGKILL)  # the PID cannot be reused: we have not reaped it
            if how == 2:
                try:
                    os.waitpid(p.pid, 0)  # reap: the PID is free again
                except ChildProcessError:
                    pass

        timer = threading.Timer(rng.uniform(0, 0.03), fault)
        timer.start()
    return p, timer


def run_round(tally: Tally, p: subprocess.Popen[bytes] | int, body: Callable[[], None], pidfd: int = -1) -> None:
    """One round under a watchdog: a hang kills the target and is reported."""
    hung = threading.Event()

    def watchdog() -> None:
        hung.set()
        try:
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            elif isinstance(p, subprocess.Popen):
                os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    dog = threading.Timer(HANG, watchdog)
    dog.start()
    try:
        body()
    except AddressSpaceReplaced as exc:
        # The victims never exec: an exit must not read as an exec.
        tally.bad.append(f"an exit reported as AddressSpaceReplaced: {exc}")
    except NoSuchProcess as exc:
        tally.typed[type(exc).__name__] += 1
    except Exception as exc:
        tally.bad.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
    finally:
        dog.cancel()
    if hung.is_set():
        pid = p.pid if isinstance(p, subprocess.Popen) else p
        tally.bad.append(f"round hung for more than {HANG}s (target {pid} killed to unblock it)")
    tally.rounds += 1


def finish(p: subprocess.Popen[bytes], timer: threading.Timer | None) -> None:
    if timer is not None:
        timer.join()
    p.kill()
    try:
        p.wait()
    except ChildProcessError:
        pass


def test_exit_during_softdirty_reset_and_harvest(stress: int) -> None:
    rng = random.Random(7)
    tally = Tally()
    methods = ["pagemap", "scan"] if softdirty.probe().scan_soft_dirty.ok else ["pagemap"]
    for _ in range(800 * stress):
        p, timer = start_victim(rng, tally)

        def body(p: subprocess.Popen[bytes] = p) -> None:
            with softdirty.track(PretendSoftDirty(p.pid), backend="softdirty") as t:
                for _ in range(50):
                    op = rng.randrange(3)
                    tally.operations += 1
                    if op == 0:
                        t.reset()
                    else:
                        ds = t.harvest(method=rng.choice(methods), reset=op == 2)
                        check_result(ds)
                        tally.results += 1

        run_round(tally, p, body)
        finish(p, timer)
    print("\n" + tally.line("soft-dirty path, target exiting"))
    assert not tally.bad, "\n".join(tally.bad[:5])
    assert sum(tally.typed.values()) > 0  # the faults did land inside our operations


def test_exit_during_uffd_track_reset_and_harvest(stress: int) -> None:
    """Includes exits during the injection that creates the target's userfaultfd (inside track())."""
    rng = random.Random(11)
    tally = Tally()
    for _ in range(200 * stress):
        p, timer = start_victim(rng, tally, reap=False)

        def body(p: subprocess.Popen[bytes] = p) -> None:
            tally.operations += 1
            with softdirty.track(p.pid, backend="uffd") as t:
                for _ in range(50):
                    tally.operations += 1
                    if rng.randrange(2):
                        t.reset()
                    else:
                        check_result(t.harvest())
                        tally.results += 1

        run_round(tally, p, body)
        finish(p, timer)
    print("\n" + tally.line("uffd, target exiting (track/inject, reset, harvest)"))
    assert not tally.bad, "\n".join(tally.bad[:5])
    assert sum(tally.typed.values()) > 0


shells: list[subprocess.Popen[str]] = []


def tracer_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((ln.split()[1] for ln in f if ln.startswith("TracerPid:")), "?")
    except OSError:
        return "gone"


def start_orphan(rng: random.Random) -> tuple[int, int, threading.Timer | None]:
    """A victim that is not our child (a shell is its parent and reaps it): no zombie lingers
    (a zombie target makes Freeze spin: see test_freeze_of_a_zombie...).  Signalled by pidfd only,
    so a timer can never hit a process that took over its PID."""
    # sh starts the victim, tells its PID, and reaps it the moment it exits.
    sh = subprocess.Popen(["sh", "-c", f"{build('victim')} {rng.randrange(0, 40_000)} >/dev/null & echo $!; wait"],
                          stdout=subprocess.PIPE, text=True)
    assert sh.stdout is not None
    pid = int(sh.stdout.readline())
    shells.append(sh)
    # $! is known before the child has exec'd the victim: wait for the exec (an exec during the
    # dump would rightly read as AddressSpaceReplaced, and these victims are not meant to exec).
    for _ in range(1000):
        try:
            if os.readlink(f"/proc/{pid}/exe") == build("victim"):
                break
        except OSError:
            break  # already gone (a short life)
        time.sleep(0.001)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return pid, -1, None
    timer = None
    if rng.randrange(2):
        def fault() -> None:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(rng.uniform(0, 0.04), fault)
        timer.start()
    return pid, pidfd, timer


def test_exit_during_dump(stress: int) -> None:
    dump = pytest.importorskip("softdirty.dump")
    rng = random.Random(13)
    tally = Tally()
    for _ in range(60 * stress):
        pid, pidfd, timer = start_orphan(rng)
        tally.faults += 1
        with tempfile.TemporaryDirectory() as where:
            def body(pid: int = pid, where: str = where) -> None:
                tally.operations += 1
                dump.dump(pid, where, backend="uffd", compare=False)
                tally.results += 1

            run_round(tally, pid, body, pidfd)
            if timer is not None:
                timer.join()
            if pidfd >= 0:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.close(pidfd)
            for sh in shells:
                try:
                    sh.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    # Its victim stays a zombie: only its tracer may reap it, and that is us.
                    tally.bad.append(f"target {pid} left ptrace-attached to us after the dump "
                                     f"(TracerPid of a zombie: {tracer_of(pid)})")
                    try:
                        os.waitpid(pid, os.__dict__.get("__WALL", 0x40000000))
                    except ChildProcessError:
                        pass
                    sh.wait()
            shells.clear()
            # A dump that failed must leave no half image behind that reads as complete.
            try:
                dump.load_image(where).close()
            except dump.ImageError:
                pass
    print("\n" + tally.line("dump, target exiting"))
    assert not tally.bad, "\n".join(tally.bad[:5])


def test_signal_zero_on_our_victims_sanity() -> None:
    """The victim really exits by itself (else the faults above would all be our kills)."""
    p = subprocess.Popen([build("victim"), "1000"], stdout=subprocess.DEVNULL)
    assert p.wait(timeout=HANG) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(p.pid, signal.SIGCONT)


def test_freeze_of_a_zombie_is_a_typed_error_not_a_spin() -> None:
    """An exited, unreaped target (a zombie) must give ProcessGone/NoSuchProcess, promptly.
    Run in a subprocess with a timeout: a spinning freeze must fail the test, not hang CI."""
    import sys

    code = (
        "import os, subprocess, sys, softdirty\n"
        "from softdirty.freeze import Freeze\n"
        "p = subprocess.Popen([sys.argv[1], '0'], stdout=subprocess.DEVNULL)\n"
        "os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie\n"
        "try:\n"
        "    Freeze(p.pid, timeout=5.0).freeze()\n"
        "except softdirty.NoSuchProcess as e:\n"
        "    print('typed', type(e).__name__)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(softdirty.__file__)))
    try:
        got = subprocess.run([sys.executable, "-c", code, build("victim")], capture_output=True, text=True,
                             env=env, timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Freeze.freeze() on a zombie spun for more than {HANG}s (softdirty/freeze.py freeze loop)")
    assert got.stdout.startswith("typed"), got.stdout + got.stderr
