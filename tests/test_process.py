"""Opening a live process: identity, bad input, and the typed errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import softdirty
from softdirty.errors import AccessDenied, NoSuchProcess, ProcessGone
from softdirty.process import LiveProcess


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("bad", [0, -1, -(2**40)])
def test_non_positive_pid_is_a_value_error(bad: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        LiveProcess(bad)
    with pytest.raises(ValueError, match="positive"):
        softdirty.track(bad)


@pytest.mark.parametrize("bad", ["1", 1.0, None, True, [1]])
def test_non_int_pid_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="PID"):
        LiveProcess(bad)  # type: ignore[arg-type]


def test_dead_pid_is_no_such_process() -> None:
    pid = dead_pid()
    with pytest.raises(NoSuchProcess) as info:
        LiveProcess(pid)
    assert info.value.pid == pid and not isinstance(info.value, ProcessGone)


def test_unknown_backend_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="backend"):
        softdirty.track(os.getpid(), backend="nope")


def test_open_self_reads_maps_and_pagemap() -> None:
    with LiveProcess(os.getpid()) as proc:
        vmas = proc.read_maps()
        assert any(v.path == "[stack]" for v in vmas)
        heap_or_first = vmas[0]
        data = proc.read_pagemap(heap_or_first.start // 4096 * 8, 16)
        assert len(data) == 16
        with pytest.raises(ValueError):
            proc.read_pagemap(3, 8)
    assert proc.closed
    with pytest.raises(ValueError, match="closed"):
        proc.read_maps()


def test_exit_after_open_is_process_gone_and_reused_pid_is_never_touched() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    proc = LiveProcess(child.pid)
    assert proc.read_maps()
    child.stdin.close()  # type: ignore[union-attr]
    child.wait()
    with pytest.raises(ProcessGone):
        proc.read_maps()
    with pytest.raises(ProcessGone):
        proc.ensure_alive()
    # Even if the PID now names another process, the /proc/PID directory we
    # hold still refers to the dead one: clear_refs cannot reach a newcomer.
    with pytest.raises(ProcessGone):
        proc.write_clear_refs(b"4")
    proc.close()


def test_zombie_is_process_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    # Wait for it to exit without reaping it.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    try:
        with pytest.raises(ProcessGone, match="zombie"):
            LiveProcess(child.pid)
    finally:
        child.wait()


def run_as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child that imports softdirty as root, then drops to uid 65534.

    (The interpreter lives under /root, which nobody may enter, so we drop
    privileges after start-up instead of exec'ing as nobody.)
    """
    prologue = (
        "import os, sys, softdirty, softdirty.process\n"
        "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(softdirty.__file__)))
    return subprocess.run([sys.executable, "-c", prologue + code], capture_output=True, text=True, env=env, cwd="/")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become an unprivileged user (CI runs as root)")
def test_no_permission_is_access_denied_naming_it() -> None:
    out = run_as_nobody(
        "p = softdirty.process.LiveProcess(1)\n"
        "try:\n"
        "    p.read_maps(); p.read_pagemap(0, 8)\n"
        "except softdirty.AccessDenied as e:\n"
        "    print('DENIED', e.permission); sys.exit(0)\n"
        "print('ALLOWED'); sys.exit(1)\n"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DENIED" in out.stdout and "PTRACE_MODE_READ" in out.stdout


def test_access_denied_is_typed() -> None:
    err = AccessDenied(1, "X")
    assert isinstance(err, softdirty.SoftDirtyError) and err.permission == "X"
