"""softdirty.freeze: every thread stopped with ptrace, released on thaw or on the tracer's death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from sdtargets import Writer

from softdirty.errors import AccessDenied, NoSuchProcess
from softdirty.freeze import Freeze


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_every_thread_is_in_a_ptrace_stop_and_nothing_is_written() -> None:
    with Writer(pages=32, writers=3) as w:
        w.wait_for(lambda: all(w.stores(k) > 0 for k in range(3)), "the writers to start")
        with Freeze(w.pid) as f:
            states = w.task_states()
            assert set(states) == set(f.tids)
            assert set(states.values()) == {"t"}, states  # tracing stop, not "T" (SIGSTOP)
            before = w.memory()
            for _ in range(50):
                os.sched_yield()
            assert w.memory() == before  # frozen: not one store lands
        assert f.acquire_seconds >= 0 and f.frozen_seconds >= 0
        counts = [w.stores(k) for k in range(3)]
        w.wait_for(lambda: all(w.stores(k) > counts[k] for k in range(3)), "every writer to run again")
        assert not set(w.task_states().values()) & {"t", "T"}


def test_threads_created_during_the_freeze_are_caught() -> None:
    with Writer(pages=8, writers=1, spawner=True) as w:
        for _ in range(20):
            with Freeze(w.pid) as f:
                # Every thread that exists now (and is not on its way out) was stopped by us.
                states = {tid: st for tid, st in w.task_states().items() if st not in ("Z", "X")}
                assert set(states) <= set(f.tids), (states, f.tids)
                assert set(states.values()) <= {"t"}, states


def test_a_signal_that_arrives_while_frozen_is_delivered_after_thaw() -> None:
    with Writer(pages=8, writers=1) as w:
        with Freeze(w.pid):
            os.kill(w.pid, signal.SIGUSR1)
            for _ in range(20):
                os.sched_yield()
            assert not w.usr1_seen()
        w.wait_for(w.usr1_seen, "the SIGUSR1 handler to run after thaw")
        assert w.proc.poll() is None


def test_the_tracer_dying_releases_the_target() -> None:
    script = textwrap.dedent("""
        import sys
        from softdirty.freeze import Freeze
        f = Freeze(int(sys.argv[1])).freeze()
        print("frozen", flush=True)
        sys.stdin.read()
    """)
    with Writer(pages=8, writers=1) as w:
        tracer = subprocess.Popen([sys.executable, "-c", script, str(w.pid)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert tracer.stdout is not None
            assert tracer.stdout.readline().strip() == "frozen"
            assert set(w.task_states().values()) == {"t"}
            count = w.stores()
        finally:
            tracer.kill()  # SIGKILL: no thaw() runs; the kernel detaches
            tracer.wait()
        w.wait_for(lambda: w.stores() > count, "the writer to run after its tracer died")


def test_freezing_ourselves_is_refused() -> None:
    with pytest.raises(ValueError, match="itself"):
        Freeze(os.getpid())


@pytest.mark.parametrize("bad", [0, -5])
def test_bad_pids(bad: int) -> None:
    with pytest.raises(ValueError):
        Freeze(bad)


def test_no_such_process() -> None:
    with pytest.raises(NoSuchProcess):
        Freeze(dead_pid()).freeze()


def test_a_second_tracer_is_access_denied_and_the_first_freeze_holds() -> None:
    with Writer(pages=8, writers=1) as w, Freeze(w.pid):
        with pytest.raises(AccessDenied, match="already traced"):
            Freeze(w.pid).freeze()
        assert set(w.task_states().values()) == {"t"}


def test_thaw_from_another_thread_is_refused() -> None:
    import threading

    with Writer(pages=8, writers=1) as w:
        f = Freeze(w.pid).freeze()
        errors: list[BaseException] = []

        def other() -> None:
            try:
                f.thaw()
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert errors and isinstance(errors[0], RuntimeError)
        f.thaw()
        count = w.stores()
        w.wait_for(lambda: w.stores() > count, "the writer to run again")
