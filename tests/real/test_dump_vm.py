"""Pre-copy dumps on a real soft-dirty kernel (exact soft-dirty harvests), then verify.

The measurements (bytes per round, the last round's freeze beside a
stop-and-copy) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sdtargets import PAGE, Writer

from softdirty import dump as dm
from softdirty import vmio

pytestmark = pytest.mark.softdirty_kernel


def show(report: dm.DumpReport) -> None:
    rounds = ", ".join(f"r{r.number} {r.kind} {r.bytes_copied / 1e6:.2f} MB" for r in report.rounds)
    sc = report.stop_and_copy_seconds
    print(f"\n[dump {report.backend}] {rounds}; stop: {report.stop_reason}; final freeze "
          f"{report.final_freeze_seconds * 1e3:.1f} ms (acquire {report.final_freeze_acquire_seconds * 1e3:.2f} ms)"
          f" vs stop-and-copy {sc * 1e3 if sc else float('nan'):.1f} ms for "
          f"{(report.stop_and_copy_bytes or 0) / 1e6:.1f} MB")


def test_dump_a_running_writer_with_softdirty_and_verify(tmp_path: Path) -> None:
    with Writer(pages=1024, writers=2, pause_every=128) as w:
        w.wait_for(lambda: w.stores(0) > 0, "the writers to start")
        report = dm.dump(w.pid, tmp_path / "img", backend="softdirty", leave="frozen")
        try:
            show(report)
            assert report.backend == "softdirty" and "every thread stopped" in report.why
            assert report.rounds[0].kind == "full" and report.rounds[-1].kind == "final"
            assert report.rounds[0].bytes_copied >= w.pages * PAGE
            ok = dm.verify(tmp_path / "img", w.pid, freeze=report.freeze)
            assert ok.ok, (ok.mismatches[:5], ok.missing[:5], ok.unreadable[:5], ok.layout[:5])
            vmio.write(w.pid, w.addr + 300 * PAGE, b"\x00changed")
            bad = dm.verify(tmp_path / "img", w.pid, freeze=report.freeze)
            assert bad.mismatches == [(w.addr + 300 * PAGE, w.addr + 301 * PAGE)]
        finally:
            report.release()
        count = w.stores(0)
        w.wait_for(lambda: w.stores(0) > count, "the writer to run after release")


def test_cli_dump_leave_stopped_then_verify(tmp_path: Path) -> None:
    d = tmp_path / "img"
    with Writer(pages=256, writers=1, pause_every=64) as w:
        r = subprocess.run([sys.executable, "-m", "softdirty", "dump", str(w.pid), str(d), "--backend", "softdirty",
                            "--leave-stopped", "--json"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["backend"] == "softdirty"
        print(f"\n[cli dump] bytes per round {[x['bytes_copied'] for x in report['rounds']]}; final freeze "
              f"{report['final_freeze_seconds'] * 1e3:.1f} ms vs stop-and-copy "
              f"{report['stop_and_copy_seconds'] * 1e3:.1f} ms")
        try:
            v = subprocess.run([sys.executable, "-m", "softdirty", "verify", str(d), str(w.pid)],
                               capture_output=True, text=True, timeout=600)
            assert v.returncode == 0, v.stdout + v.stderr
            assert "matches" in v.stdout
        finally:
            os.kill(w.pid, signal.SIGCONT)
