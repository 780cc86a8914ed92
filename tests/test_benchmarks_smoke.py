"""The benchmark suite runs end to end (tiny sizes, no VM) and writes sane results.

No wall-clock thresholds: we check the shape of the JSON, that every figure
is a positive number with min <= median <= max, that each harvester found
the pages the target wrote (the C reference and the library did the same
work), and that the Markdown and the log were written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import softdirty

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = "decode,harvest,scaling,memory,precopy,tracking,emulator"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if shutil.which(os.environ.get("CC") or "gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler: the suite builds its target and C reference with gcc")
    if os.geteuid() != 0:
        pytest.skip("the suite ptraces its target and injects a userfaultfd into it: run as root (as tools/test does)")
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--no-vm", "--no-plots", "--out", str(out),
                           "--only", SECTIONS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data: dict[str, object] = json.loads((out / "tiny.json").read_text())
    data["_md"] = (out / "tiny.md").read_text()
    data["_log"] = (out / "tiny.log").read_text()
    return data


def rows(data: dict[str, object], section: str) -> list[dict[str, object]]:
    all_rows = data["rows"]
    assert isinstance(all_rows, list)
    return [r for r in all_rows if r["section"] == section]


def test_shape(results: dict[str, object]) -> None:
    assert results["schema"] == 1
    assert results["mode"] == "tiny"
    assert results["errors"] == []
    machine = results["machine"]
    assert isinstance(machine, dict) and machine["kernel"] and machine["cpus"]
    assert results["vm"] == {"skipped": "--no-vm"}
    for row in results["rows"]:  # type: ignore[attr-defined]
        assert set(row) >= {"section", "env", "case", "variant", "metric", "samples", "stats"}
        samples, stats = row["samples"], row["stats"]
        assert samples and stats["n"] == len(samples)
        assert stats["min"] <= stats["median"] <= stats["max"]
        if row["metric"] == "bytes":  # memory growth may be 0: nothing allocated that was not there
            assert all(x >= 0 for x in samples), row
        else:
            assert all(x > 0 for x in samples), row


def test_decode(results: dict[str, object]) -> None:
    got = rows(results, "decode")
    variants = {r["variant"] for r in got}
    assert {"python", "naive_struct", "naive_object"} <= variants
    assert {r["case"]["layout"] for r in got} == {"dense", "sparse"}  # type: ignore[index]
    for r in got:
        assert r["metric"] == "entries/s"
        assert r["extra"]["entries"] > 0  # type: ignore[index]


def test_harvest_same_work(results: dict[str, object]) -> None:
    got = [r for r in rows(results, "harvest") if not r["case"]["backend"].startswith("emulated")]  # type: ignore
    if not softdirty.probe().uffd_wp_async.ok:
        assert any(s["section"] == "harvest" for s in results["skipped"]), "no back end and no reason"  # type: ignore
        return
    assert {r["variant"] for r in got} == {"python", "c_ref", "ceiling"}
    for r in got:
        extra = r["extra"]
        assert isinstance(extra, dict)
        if r["variant"] in ("python", "c_ref"):
            # Both saw at least what the target wrote (plus its own stack and data writes).
            assert min(extra["pages_found"]) >= extra["written_pages"], r


def test_scaling_and_memory(results: dict[str, object]) -> None:
    if not softdirty.probe().uffd_wp_async.ok:
        pytest.skip(f"the host part of these sections needs uffd-wp async: {softdirty.probe().uffd_wp_async.reason}")
    sc = rows(results, "scaling")
    assert {r["variant"] for r in sc} == {"scan", "pagemap", "ceiling_scan", "ceiling_pread"}
    for r in sc:
        if r["variant"] == "scan":
            assert min(r["extra"]["pages_found"]) >= r["extra"]["ranges_written"]  # type: ignore[index]
    mem = rows(results, "memory")
    assert {"uffd", "pagemap-c", "whole-read"} <= {r["variant"] for r in mem}
    for r in mem:
        assert min(r["extra"]["rss_before"]) > 0  # type: ignore[index]


def test_precopy_and_tracking(results: dict[str, object]) -> None:
    if softdirty.probe().best_backend is None:
        pytest.skip("no tracking back end on this host")
    pc = rows(results, "precopy")
    assert {r["variant"] for r in pc} == {"final_freeze", "stop_and_copy"}
    tr = rows(results, "tracking")
    assert "untracked" in {r["variant"] for r in tr}
    assert any(r["variant"] != "untracked" for r in tr)


def test_emulator_rows(results: dict[str, object]) -> None:
    """benchmarks/bench_emulator.py's figures land as rows (tiny: 64 MiB populated, 20,000 faults)."""
    em = rows(results, "emulator")
    reads = [r for r in em if r["variant"] == "pagemap read"]
    assert {r["case"]["entries"] for r in reads} == {(64 << 20) // 4096}  # type: ignore[index]
    faults = [r for r in em if r["variant"] == "write faults"]
    assert len(faults) == 1 and faults[0]["metric"] == "faults/s"
    assert faults[0]["case"]["faults"] == 20_000  # type: ignore[index]
    assert "emulator: pagemap read of 64 MiB fully populated (16,384 entries)" in str(results["_md"])


def test_report_written(results: dict[str, object]) -> None:
    md = results["_md"]
    assert isinstance(md, str)
    for heading in ("### Summary", "### 1. Decode", "### 2–3. Harvest", "### 4. Cost growth", "### 5. Peak memory",
                    "### 8. Emulator"):
        assert heading in md
    assert "wrote" in str(results["_log"])
