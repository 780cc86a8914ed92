"""5. Memory: the peak RSS of one harvest stays flat as the mapping grows to 64 GiB.

The C target maps 1 to 64 GiB (MAP_NORESERVE) and writes the same number of
pages spread evenly over it (4096 in quick and full mode), so the ranges out
are the same and only the mapping grows.  Each harvest runs in a fresh
Python process (benchmarks/rss_probe.py); its peak growth is VmHWM after the
harvest minus VmRSS before it, with VmHWM reset just before (clear_refs "5");
ru_maxrss before/after is recorded too.

Harvesters: ``uffd`` (host) and ``softdirty-scan`` / ``softdirty-pagemap``
(VM); on the host also the pagemap method forced (``pagemap-c``,
``pagemap-python``: the library's streaming reads, every entry of the 64 GiB
read in 512 KiB windows) and, for contrast, ``whole-read``: every entry of a
VMA read into one buffer and then decoded, as a per-range API that returns a
vector of all entries (the Rust procfs crate's ``get_range_info``) does.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import softdirty
from benchmarks.common import PAGE, Context, MiB, Target, human, summarize

SECTION = "memory"
ROOT = Path(__file__).resolve().parent.parent


def hows(env: str) -> list[str]:
    caps = softdirty.probe()
    out = []
    if caps.soft_dirty.ok:
        if caps.scan_soft_dirty.ok:
            out.append("softdirty-scan")
        out.append("softdirty-pagemap")
    if caps.uffd_wp_async.ok:
        out.append("uffd")
    if env == "host":
        out += ["pagemap-c", "pagemap-python", "whole-read"]
    return out


def probe_once(ctx: Context, target: Target, rid: int, how: str, stride: int, count: int,
               seed: int) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen([ctx.python, "-m", "benchmarks.rss_probe", "--pid", str(target.pid), "--how", how],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(ROOT), env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if line.strip() != "armed":
            raise RuntimeError(f"rss_probe {how}: {line.strip() or proc.stderr.read() if proc.stderr else ''}")
        target.runs(rid, stride, 1, count, seed)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"rss_probe {how} failed: {proc.stderr.read() if proc.stderr else ''}")
        result: dict[str, float] = json.loads(line)
    finally:
        proc.stdin.close()
        proc.wait(timeout=600)
    return result


def run(ctx: Context) -> None:
    res = ctx.results
    res.note(SECTION, "peak growth = VmHWM after the harvest - VmRSS before it (VmHWM reset with clear_refs 5), in a "
                      "fresh Python process per harvest; the same number of written pages at every mapping size.")
    sizes = ctx.plan.memory_sizes if ctx.env == "host" else ctx.plan.vm_memory_sizes
    count = ctx.plan.memory_pages
    repeats = min(ctx.repeats, 3)
    for size in sizes:
        pages = size // PAGE
        stride = pages // count
        with Target(ctx.target_exe) as t:
            rid, _ = t.map(size)
            t.runs(rid, stride, 1, count)
            for how in hows(ctx.env):
                got = [probe_once(ctx, t, rid, how, stride, count, seed=0) for _ in range(repeats)]
                growth = [g["peak_growth"] for g in got]
                res.add(SECTION, {"size": size, "how": how}, how, "bytes", growth,
                        seconds=[g["seconds"] for g in got], pages=[g["pages"] for g in got],
                        ranges=[g["ranges"] for g in got], rss_before=[g["rss_before"] for g in got],
                        ru_maxrss_before=[g["ru_maxrss_before"] for g in got],
                        ru_maxrss_after=[g["ru_maxrss_after"] for g in got], written_pages=count)
                ctx.log(f"memory {ctx.env} {human(size):>7} {how:18} peak growth "
                        f"{summarize(growth)['median'] / MiB:7.2f} MiB  (rss before {got[0]['rss_before'] / MiB:.1f} "
                        f"MiB, {summarize([g['seconds'] for g in got])['median'] * 1e3:.1f} ms, "
                        f"{got[0]['ranges']} ranges)")
    if not sizes:
        res.skip(SECTION, f"no sizes planned for {ctx.env} in {ctx.plan.mode} mode")
