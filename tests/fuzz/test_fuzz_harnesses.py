"""Run each atheris harness of tests/fuzz/fuzz_parsers.py for a bounded number of inputs.

A harness that meets an input its parser answers with anything but a result or its clear error
exits non-zero (libFuzzer's crash report); this test then fails with that report.  Each runs in
its own process: atheris.Fuzz() never returns.  Needs atheris (the ``test`` extra)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import softdirty

pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris, or the 'test' extra)")

HARNESS = Path(__file__).with_name("fuzz_parsers.py")
RUNS = {"maps": 3000, "entry": 3000, "image": 1000, "scenario": 1000}


@pytest.mark.parametrize("target", sorted(RUNS))
def test_harness_runs_clean(target: str, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(softdirty.__file__)))
    got = subprocess.run([sys.executable, str(HARNESS), target, f"-runs={RUNS[target]}", "-seed=1",
                          "-max_len=2048", "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert got.returncode == 0, got.stderr[-4000:]
    assert f"Done {RUNS[target]} runs" in got.stderr, got.stderr[-2000:]
