"""The VM runner (tools/vmtest): report counting, argument errors, and one real boot."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VMTEST = ROOT / "tools" / "vmtest"


def counts(tmp_path: Path, xml: str) -> subprocess.CompletedProcess[str]:
    report = tmp_path / "junit.xml"
    report.write_text(xml)
    return subprocess.run([str(VMTEST / "junit-counts"), str(report)], capture_output=True, text=True)


def test_junit_counts_reads_pytest_totals(tmp_path: Path) -> None:
    got = counts(tmp_path, '<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="3" tests="10">'
                           "</testsuite></testsuites>")
    assert got.returncode == 0
    assert got.stdout.split() == ["4", "3", "2", "1"]


def test_junit_counts_refuses_a_missing_or_broken_report(tmp_path: Path) -> None:
    assert counts(tmp_path, "<testsuites><testsuite").returncode == 1
    missing = subprocess.run([str(VMTEST / "junit-counts"), str(tmp_path / "nope.xml")], capture_output=True,
                             text=True)
    assert missing.returncode == 1
    assert "no usable report" in missing.stderr


def test_run_tests_wants_a_kernel() -> None:
    got = subprocess.run([str(VMTEST / "run-tests")], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert got.returncode == 2
    assert "--kernel is required" in got.stderr


def test_run_tests_rejects_an_unknown_kernel() -> None:
    got = subprocess.run([str(VMTEST / "run-tests"), "--kernel", "9.99"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    assert got.returncode == 2
    assert "no kernel /boot/vmlinuz-9.99" in got.stderr


def _bootable(release: str) -> bool:
    return shutil.which("qemu-system-x86_64") is not None and any(Path("/boot").glob(f"vmlinuz-{release}.*"))


@pytest.mark.slow
def test_run_in_vm_passes_output_and_status_through(tmp_path: Path) -> None:
    if not _bootable("6.1"):
        pytest.skip("no QEMU or Debian 6.1 kernel here: run tools/vmtest/setup (CI does)")
    rw = tmp_path / "rw"
    rw.mkdir()
    script = f'uname -r; echo to-stderr >&2; echo kept > {rw}/out; echo lost > {ROOT}/vmtest-lost; exit 7'
    got = subprocess.run([str(VMTEST / "run-in-vm"), "--kernel", "6.1", "--timeout", "300", "--rw", str(rw), "--",
                          "sh", "-c", script], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert got.returncode == 7, got.stderr
    assert got.stdout.startswith("6.1."), got.stdout
    assert got.stderr.strip() == "to-stderr"
    assert (rw / "out").read_text() == "kept\n"  # --rw writes reach the host
    assert not os.path.exists(ROOT / "vmtest-lost")  # other writes are thrown away
