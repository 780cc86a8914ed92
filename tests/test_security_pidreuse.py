"""PID reuse: the tracked process exits and its PID goes to a new process; nothing touches the newcomer.

Reuse is forced in a fresh PID namespace (``unshare --pid --fork --mount-proc``) by writing the old
PID - 1 to /proc/sys/kernel/ns_last_pid; the work happens in tests/stress/pidreuse_child.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from stress.targets import build

import softdirty

CHILD = Path(__file__).parent / "stress" / "pidreuse_child.py"


def run_reuse() -> dict[str, object]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make a PID namespace (CI runs as root)")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(softdirty.__file__)))
    got = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(CHILD), build("victim")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert got.returncode == 0, got.stdout + got.stderr
    out: dict[str, object] = json.loads(got.stdout.strip().splitlines()[-1])
    assert out["reused"], f"could not force the PID to be reused: {out}"
    print(f"\n[reliability] PID reuse: {json.dumps(out)}")
    return out


def test_reused_pid_is_never_touched() -> None:
    out = run_reuse()
    attempts = out["attempts"]
    assert isinstance(attempts, dict)
    bad = {k: v for k, v in attempts.items() if not str(v).startswith("ok ")}
    assert not bad, bad
    assert out["registered"] == [], "the newcomer has uffd-registered (WPALLOWED) ranges"
    assert out["wp_bits"] == [], "the newcomer has uffd-wp bits set"
    assert out["tracer_is_us"], "someone else ptrace-attached the newcomer"
    assert out["state"] not in ("T", "t")


@pytest.mark.softdirty_kernel
def test_reused_pid_keeps_its_soft_dirty_bits() -> None:
    """clear_refs through a stale handle must not clear the newcomer's soft-dirty bits."""
    out = run_reuse()
    assert out["soft_dirty_before"] == 64
    assert out["soft_dirty_after"] == 64
