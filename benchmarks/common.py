"""What every benchmark shares: the plan (sizes per mode), statistics, results,
the C target process, and the C reference harvester."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4096
SCHEMA = 1


def human(nbytes: int | float) -> str:
    """64 MiB, 1 GiB, 1.5 GiB: sizes as the tables print them."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if nbytes >= unit:
            v = nbytes / unit
            return f"{v:.0f} {name}" if v == int(v) else f"{v:.3g} {name}"
    return f"{int(nbytes)} B"


# -- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Sizes and repeats of one mode.  ``max_populate`` caps what we fault in at once."""

    mode: str
    repeats: int
    max_populate: int
    decode_sizes: tuple[int, ...]
    decode_real_max: int  # populated bytes up to which decode reads a real process's pagemap
    naive_max: int  # largest span the per-entry Python decoders are timed on
    harvest_sizes: tuple[int, ...]
    scaling_sizes: tuple[int, ...]
    scaling_fractions: tuple[float, ...]
    memory_sizes: tuple[int, ...]
    memory_pages: int  # pages written in the sparse mapping
    precopy_sizes: tuple[int, ...]
    precopy_rates: tuple[float, ...]  # fraction of the region dirtied per second
    tracking_sizes: tuple[int, ...]
    tracking_intervals: tuple[float, ...]
    tracking_seconds: float
    emulated_pages: tuple[int, ...]
    vm_mem: str
    vm_harvest_sizes: tuple[int, ...]
    vm_patterns: tuple[str, ...]  # harvest write patterns run in the VM
    vm_scaling_sizes: tuple[int, ...]
    vm_scaling_fractions: tuple[float, ...]
    vm_max_ranges: int  # scaling cases with more written ranges are left out in the VM (Python under TCG is slow)
    vm_memory_sizes: tuple[int, ...]
    vm_tracking_sizes: tuple[int, ...]
    vm_repeats: int
    vm_timeout: int


PLANS = {
    "quick": Plan(
        mode="quick", repeats=5, max_populate=1 * GiB,
        decode_sizes=(64 * MiB, 1 * GiB), decode_real_max=1 * GiB, naive_max=1 * GiB,
        harvest_sizes=(64 * MiB, 1 * GiB),
        scaling_sizes=(256 * MiB, 1 * GiB), scaling_fractions=(0.001, 0.01, 0.1),
        memory_sizes=(1 * GiB, 64 * GiB), memory_pages=4096,
        precopy_sizes=(64 * MiB,), precopy_rates=(0.01, 0.05, 0.2),
        tracking_sizes=(256 * MiB,), tracking_intervals=(0.1,), tracking_seconds=1.0,
        emulated_pages=(1024,),
        vm_mem="2G", vm_harvest_sizes=(16 * MiB,), vm_patterns=("isolated",), vm_scaling_sizes=(64 * MiB,),
        vm_scaling_fractions=(0.001, 0.01), vm_max_ranges=2000,
        vm_memory_sizes=(), vm_tracking_sizes=(), vm_repeats=3, vm_timeout=240,
    ),
    "full": Plan(
        mode="full", repeats=7, max_populate=4 * GiB,
        decode_sizes=(64 * MiB, 256 * MiB, 1 * GiB, 4 * GiB, 16 * GiB), decode_real_max=4 * GiB, naive_max=16 * GiB,
        harvest_sizes=(64 * MiB, 1 * GiB, 4 * GiB),
        scaling_sizes=(1 * GiB, 4 * GiB, 16 * GiB), scaling_fractions=(0.001, 0.01, 0.1),
        memory_sizes=(1 * GiB, 8 * GiB, 64 * GiB), memory_pages=4096,
        # dump()'s last round holds what it copies in memory: region + copy stays within ~4 GiB
        precopy_sizes=(1 * GiB, 2 * GiB), precopy_rates=(0.01, 0.05, 0.2),
        tracking_sizes=(256 * MiB, 1 * GiB), tracking_intervals=(0.01, 0.1, 1.0), tracking_seconds=3.0,
        emulated_pages=(1024, 8192),
        vm_mem="4G", vm_harvest_sizes=(64 * MiB, 256 * MiB), vm_patterns=("isolated", "clustered"),
        vm_scaling_sizes=(256 * MiB, 1 * GiB, 4 * GiB),
        vm_scaling_fractions=(0.001, 0.01, 0.1), vm_max_ranges=12000, vm_memory_sizes=(1 * GiB, 64 * GiB),
        vm_tracking_sizes=(64 * MiB,),
        vm_repeats=5, vm_timeout=3600,
    ),
    # For tests/test_benchmarks_smoke.py: the quick suite's code paths on tiny sizes.
    "tiny": Plan(
        mode="tiny", repeats=2, max_populate=64 * MiB,
        decode_sizes=(4 * MiB, 16 * MiB), decode_real_max=8 * MiB, naive_max=16 * MiB,
        harvest_sizes=(4 * MiB,),
        scaling_sizes=(16 * MiB,), scaling_fractions=(0.01, 0.1),
        memory_sizes=(64 * MiB, 1 * GiB), memory_pages=64,
        precopy_sizes=(8 * MiB,), precopy_rates=(0.2,),
        tracking_sizes=(8 * MiB,), tracking_intervals=(0.05,), tracking_seconds=0.3,
        emulated_pages=(128,),
        vm_mem="1G", vm_harvest_sizes=(4 * MiB,), vm_patterns=("isolated",), vm_scaling_sizes=(16 * MiB,),
        vm_scaling_fractions=(0.1,), vm_max_ranges=2000,
        vm_memory_sizes=(), vm_tracking_sizes=(), vm_repeats=2, vm_timeout=240,
    ),
}


# -- statistics and results -----------------------------------------------------------------------


def summarize(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        raise ValueError("no samples")
    return {"min": min(samples), "median": statistics.median(samples), "max": max(samples), "n": len(samples)}


@dataclass
class Row:
    """One measured figure: ``samples`` of ``metric`` for one variant of one case."""

    section: str
    env: str  # "host" or "vm-<kernel>"
    case: dict[str, Any]
    variant: str
    metric: str  # "seconds", "entries/s", "bytes", "writes/s", ...
    samples: list[float]
    stats: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.stats:
            self.stats = summarize(self.samples)


class Results:
    """Rows, ratios, notes and skips of one run (or of the VM part of it)."""

    def __init__(self, env: str) -> None:
        self.env = env
        self.rows: list[Row] = []
        self.notes: dict[str, list[str]] = {}
        self.skipped: list[dict[str, str]] = []

    def add(self, section: str, case: dict[str, Any], variant: str, metric: str, samples: Sequence[float],
            **extra: Any) -> Row:
        row = Row(section, self.env, dict(case), variant, metric, [float(x) for x in samples], extra=extra)
        self.rows.append(row)
        return row

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, [])
        if text not in self.notes[section]:
            self.notes[section].append(text)

    def skip(self, section: str, why: str) -> None:
        self.skipped.append({"section": section, "env": self.env, "reason": why})

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "notes": self.notes, "skipped": self.skipped}

    def merge(self, data: dict[str, Any]) -> None:
        for r in data.get("rows", []):
            self.rows.append(Row(**r))
        for section, texts in data.get("notes", {}).items():
            for t in texts:
                self.note(section, t)
        self.skipped.extend(data.get("skipped", []))


def find(rows: Sequence[Row], section: str, variant: str, **case: Any) -> Row | None:
    for r in rows:
        if r.section == section and r.variant == variant and all(r.case.get(k) == v for k, v in case.items()):
            return r
    return None


def ratio(num: Row, den: Row) -> dict[str, float]:
    """num/den of medians, and of mins (best against best)."""
    return {"median": num.stats["median"] / den.stats["median"], "min": num.stats["min"] / den.stats["min"]}


# -- the machine ---------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * KiB
    except OSError:
        pass
    hypervisor = "none"
    try:
        if " hypervisor" in Path("/proc/cpuinfo").read_text():
            hypervisor = "yes (a virtual machine)"
    except OSError:
        pass
    import softdirty

    caps = softdirty.probe()
    return {
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "arch": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory": mem,
        "hypervisor": hypervisor,
        "python": sys.version.split()[0],
        "softdirty": softdirty.__version__,
        "scanner": caps.scanner.name,
        "scanner_reason": caps.scanner.reason,
        "soft_dirty": caps.soft_dirty.ok,
        "pagemap_scan": caps.pagemap_scan.ok,
        "uffd_wp_async": caps.uffd_wp_async.ok,
        "thp": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "unknown"


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KiB


# -- the target ----------------------------------------------------------------------------------------


class TargetError(RuntimeError):
    pass


class Target:
    """The C target (benchmarks/target.c) driven over its stdin/stdout line protocol."""

    def __init__(self, exe: Path) -> None:
        self.proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1)
        self.pid = self.proc.pid
        self._pending = False
        hello = self._line(timeout=30)
        if not hello.startswith("ready"):
            raise TargetError(f"target said {hello!r}")

    def _line(self, timeout: float | None = None) -> str:
        assert self.proc.stdout is not None
        if timeout is not None:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                raise TargetError(f"target {self.pid} did not answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise TargetError(f"target {self.pid} exited (status {self.proc.poll()})")
        return line.strip()

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        if self._pending:
            raise TargetError("a command is still running")
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        self._pending = True

    def poll_reply(self, timeout: float) -> list[str] | None:
        """The reply of the running command, or None if it has not come within ``timeout``."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0.0))
        if not ready:
            return None
        return self.reply()

    def reply(self, timeout: float | None = 600) -> list[str]:
        line = self._line(timeout)
        self._pending = False
        words = line.split()
        if not words or words[0] != "ok":
            raise TargetError(f"target: {line}")
        return words[1:]

    def call(self, cmd: str, timeout: float | None = 600) -> list[str]:
        self.send(cmd)
        return self.reply(timeout)

    def map(self, nbytes: int) -> tuple[int, int]:
        rid, addr = self.call(f"map {nbytes}")
        return int(rid), int(addr)

    def unmap(self, rid: int) -> None:
        self.call(f"unmap {rid}")

    def touch(self, rid: int, first: int, stride: int, count: int, mode: str = "w") -> None:
        if count:
            self.call(f"touch {rid} {first} {stride} {count} {mode}")

    def runs(self, rid: int, stride: int, runlen: int, count: int, seed: int = 0) -> int:
        return int(self.call(f"runs {rid} {stride} {runlen} {count} {seed}")[0]) if count else 0

    def stop_loop(self) -> None:
        os.kill(self.pid, signal.SIGUSR1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def populate(target: Target, rid: int, nbytes: int, mode: str = "w", stride: int = 1) -> None:
    """Fault in every ``stride``-th page of region ``rid`` in slices (keeps each reply prompt)."""
    pages = nbytes // PAGE
    step = 1 << 16
    first = 0
    while first < pages:
        count = min(step, (pages - first + stride - 1) // stride)
        target.touch(rid, first, stride, count, mode)
        first += count * stride


# -- the C reference --------------------------------------------------------------------------------------


class RefStats(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("ns", "ranges", "pages", "syscalls", "vmas")]


class RefLib:
    """csrc/bench_ref.c, loaded with ctypes; each call returns the C side's own timing."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path), use_errno=True)
        vp, u64, i64 = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64
        lib.ref_open.restype = vp
        lib.ref_open.argtypes = [ctypes.c_int]
        lib.ref_close.argtypes = [vp]
        for name in ("ref_harvest_sd_pagemap", "ref_harvest_sd_scan", "ref_harvest_uffd"):
            fn = getattr(lib, name)
            fn.restype = i64
            fn.argtypes = [vp, ctypes.POINTER(RefStats)]
        lib.ref_ceiling_pread.restype = i64
        lib.ref_ceiling_pread.argtypes = [vp, vp, u64, ctypes.POINTER(RefStats)]
        lib.ref_ceiling_scan.restype = i64
        lib.ref_ceiling_scan.argtypes = [vp, vp, u64, u64, u64, u64, u64, ctypes.POINTER(RefStats)]
        self.lib = lib

    def open(self, pid: int) -> RefHandle:
        h = self.lib.ref_open(pid)
        if not h:
            err = ctypes.get_errno()
            raise OSError(err, f"ref_open({pid}): {os.strerror(err)}")
        return RefHandle(self.lib, h)


class RefHandle:
    def __init__(self, lib: ctypes.CDLL, h: int) -> None:
        self.lib, self.h = lib, h

    def _check(self, r: int, what: str, st: RefStats) -> RefStats:
        if r < 0:
            raise OSError(-r, f"{what}: {os.strerror(-r)}")
        return st

    def harvest(self, kind: str) -> RefStats:
        """kind: sd_pagemap, sd_scan or uffd."""
        st = RefStats()
        fn = getattr(self.lib, f"ref_harvest_{kind}")
        return self._check(fn(self.h, ctypes.byref(st)), kind, st)

    def ceiling_pread(self, spans: Sequence[tuple[int, int]]) -> RefStats:
        arr = (ctypes.c_uint64 * (2 * len(spans)))(*[x for s in spans for x in s])
        st = RefStats()
        return self._check(self.lib.ref_ceiling_pread(self.h, arr, len(spans), ctypes.byref(st)), "pread", st)

    def ceiling_scan(self, spans: Sequence[tuple[int, int]], *, flags: int = 0, inverted: int = 0, mask: int = 0,
                     return_mask: int = 0) -> RefStats:
        arr = (ctypes.c_uint64 * (2 * len(spans)))(*[x for s in spans for x in s])
        st = RefStats()
        r = self.lib.ref_ceiling_scan(self.h, arr, len(spans), flags, inverted, mask, return_mask, ctypes.byref(st))
        return self._check(r, "PAGEMAP_SCAN", st)

    def close(self) -> None:
        if self.h:
            self.lib.ref_close(self.h)
            self.h = 0


# -- running -------------------------------------------------------------------------------------------------


@dataclass
class Context:
    plan: Plan
    results: Results
    target_exe: Path
    ref: RefLib
    env: str
    log: Callable[[str], None]
    out_dir: Path
    python: str = sys.executable

    @property
    def repeats(self) -> int:
        return self.plan.vm_repeats if self.env != "host" else self.plan.repeats


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter_ns()
    value = fn()
    return (time.perf_counter_ns() - t0) * 1e-9, value


def dump_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
