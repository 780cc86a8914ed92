"""2 and 3. Harvest end to end, beside the C reference and the kernel's ceiling.

For each back end that works where we run (uffd on the host; softdirty with
both methods, and uffd, in the VM), the C target maps a region, writes all of
it, and then per repeat: checkpoint (softdirty: ``reset()``; uffd: the
previous harvest re-armed), the target writes 1 % of the region, and one of
three harvesters runs, in rotating order:

* ``python``: ``Tracker.harvest()`` of the library, DirtySet and all;
* ``c_ref``: csrc/bench_ref.c, the same system calls from plain C;
* ``ceiling``: the bare system calls over the same memory with no maps, no
  decoding and no output: pread of every entry of the user VMAs (method
  ``pagemap``), or PAGEMAP_SCAN with the harvest's arguments (``scan``, uffd).

``python / c_ref`` is our Python overhead (target: at most 1.1);
``ceiling / python`` is the share of the kernel's ceiling that a harvest
reaches.  Write patterns: ``isolated`` (every 100th page: one range per page)
and ``clustered`` (64-page runs, one per 6400 pages).

``emulated`` (softdirty.emulator, kernel profile 6.12) runs the library's
harvest over an emulated process: there is no system call to hold it to.
"""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Callable
from pathlib import Path
from typing import Any

import softdirty
from benchmarks.common import PAGE, Context, RefHandle, Target, human, populate, summarize, timed
from softdirty.dirtyset import Cause
from softdirty.maps import parse_maps
from softdirty.pagemap import PageCategory, ScanFlag
from softdirty.process import TASK_SIZE_4LEVEL

SECTION = "harvest"
PATTERNS = {"isolated": (100, 1), "clustered": (6400, 64)}  # (stride, run length) in pages: 1 % written
SD_SCAN = {"mask": int(PageCategory.SOFT_DIRTY), "return_mask": int(PageCategory.PRESENT | PageCategory.SWAPPED)}
UFFD_SCAN = {"flags": int(ScanFlag.WP_MATCHING), "mask": int(PageCategory.WRITTEN),
             "return_mask": int(PageCategory.WRITTEN | PageCategory.PRESENT | PageCategory.SWAPPED
                                | PageCategory.HUGE)}


def user_spans(pid: int) -> list[tuple[int, int]]:
    vmas = parse_maps(Path(f"/proc/{pid}/maps").read_text())
    return [(v.start, v.end) for v in vmas if v.end <= TASK_SIZE_4LEVEL]


def backends_here() -> list[tuple[str, str | None]]:
    caps = softdirty.probe()
    out: list[tuple[str, str | None]] = []
    if caps.soft_dirty.ok:
        if caps.scan_soft_dirty.ok:
            out.append(("softdirty", "scan"))
        out.append(("softdirty", "pagemap"))
    if caps.uffd_wp_async.ok:
        out.append(("uffd", None))
    return out


def label(backend: str, method: str | None) -> str:
    return backend if method is None else f"{backend}/{method}"


class Harvesters:
    """python / c_ref / ceiling for one back end over one target: each returns (seconds, pages)."""

    def __init__(self, tracker: softdirty.Tracker, ref: RefHandle, backend: str, method: str | None,
                 pid: int) -> None:
        self.tracker, self.ref, self.backend, self.method = tracker, ref, backend, method
        self.spans = user_spans(pid)
        if backend == "uffd":
            tracked = tracker.backend.tracked_ranges  # type: ignore[attr-defined]
            self.scan_spans = [(tracked[0][0], tracked[-1][1])] if tracked else []

    def checkpoint(self) -> None:
        if self.backend == "softdirty":
            self.tracker.reset()

    def harvest(self) -> softdirty.DirtySet:
        return self.tracker.harvest() if self.method is None else self.tracker.harvest(method=self.method)

    def python(self) -> tuple[float, int]:
        secs, ds = timed(self.harvest)
        return secs, ds.count(Cause.WRITTEN) + ds.count(Cause.NEW_MAPPING)  # counted outside the timing

    def c_ref(self) -> tuple[float, int]:
        kind = "uffd" if self.backend == "uffd" else f"sd_{self.method}"
        st = self.ref.harvest(kind)
        return st.ns * 1e-9, int(st.pages)

    def ceiling(self) -> tuple[float, int]:
        if self.backend == "uffd":
            st = self.ref.ceiling_scan(self.scan_spans, **UFFD_SCAN)
        elif self.method == "scan":
            st = self.ref.ceiling_scan(self.spans, **SD_SCAN)
        else:
            st = self.ref.ceiling_pread(self.spans)
        return st.ns * 1e-9, -1  # no output is decoded: nothing to count


def profile_python(h: Harvesters, t: Target, rid: int, stride: int, runlen: int, count: int,
                   rounds: int = 5, top: int = 8) -> list[dict[str, Any]]:
    """Where the library's harvest spends its time: cProfile over a few harvests, the functions with the
    most own time (cProfile's own cost inflates Python-side figures: read them as shares)."""
    prof = cProfile.Profile()
    for rep in range(rounds):
        h.checkpoint()
        t.runs(rid, stride, runlen, count, seed=100 + rep)
        prof.enable()
        h.harvest()
        prof.disable()
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
    rows = []
    for (path, line, fn), (_, nc, tt, _, _) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(path).name}:{line}({fn})", "calls": nc // rounds,
                     "own_seconds": tt / rounds, "share": tt / total if total else 0.0})
    rows.sort(key=lambda r: -r["own_seconds"])
    return rows[:top]


def measure(ctx: Context, size: int, backend: str, method: str | None, pattern: str, profile: bool = False) -> None:
    res = ctx.results
    stride, runlen = PATTERNS[pattern]
    pages = size // PAGE
    count = pages // stride
    opts: dict[str, Any] = {} if method is None else {"method": method}
    with Target(ctx.target_exe) as t:
        rid, _ = t.map(size)
        populate(t, rid, size, "w")
        with softdirty.track(t.pid, backend=backend, **opts) as tracker:
            tracker.reset()
            ref = ctx.ref.open(t.pid)
            try:
                h = Harvesters(tracker, ref, backend, method, t.pid)
                variants: dict[str, Callable[[], tuple[float, int]]] = {
                    "python": h.python, "c_ref": h.c_ref, "ceiling": h.ceiling}
                names = list(variants)
                samples: dict[str, list[float]] = {n: [] for n in names}
                found: dict[str, list[int]] = {n: [] for n in names}
                for rep in range(ctx.repeats + 1):  # the first round warms caches and is dropped
                    order = names[rep % 3:] + names[:rep % 3]
                    for name in order:
                        h.checkpoint()
                        written = t.runs(rid, stride, runlen, count, seed=rep)
                        secs, got = variants[name]()
                        if rep:
                            samples[name].append(secs)
                            found[name].append(got)
                prof = profile_python(h, t, rid, stride, runlen, count) if profile else None
            finally:
                ref.close()
    case = {"backend": label(backend, method), "size": size, "pattern": pattern}
    added = {name: res.add(SECTION, case, name, "seconds", samples[name], written_pages=written,
                           pages_found=found[name], ranges_written=count) for name in names}
    if prof is not None:
        added["python"].extra["profile"] = prof
    for name in ("python", "c_ref"):
        low = min(found[name])
        if low < written:
            res.note(SECTION, f"{label(backend, method)} {human(size)} {pattern}: {name} reported {low} pages, "
                              f"fewer than the {written} written")
    py, c, ceil = (summarize(samples[n])["median"] for n in names)
    ctx.log(f"harvest {ctx.env} {label(backend, method):18} {human(size):>7} {pattern:9} python={py * 1e3:.2f}ms "
            f"c_ref={c * 1e3:.2f}ms ceiling={ceil * 1e3:.2f}ms  python/c_ref={py / c:.2f}x ceiling/python="
            f"{ceil / py:.0%}")


def measure_emulated(ctx: Context, pages: int, backend: str) -> None:
    from softdirty.emulator import EmulatedProcess

    res = ctx.results
    stride = PATTERNS["isolated"][0]
    proc = EmulatedProcess("6.12")
    addr = proc.mmap(0, pages * PAGE, 3, 0x22)  # PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS
    proc.touch(addr, pages * PAGE)
    samples: list[float] = []
    found: list[int] = []
    with softdirty.track(proc, backend=backend) as tracker:
        tracker.reset()
        for rep in range(ctx.repeats + 1):
            if backend == "softdirty":
                tracker.reset()
            for i in range(rep % stride, pages, stride):
                proc.touch(addr + i * PAGE, PAGE)
            secs, ds = timed(tracker.harvest)
            if rep:
                samples.append(secs)
                found.append(ds.count(Cause.WRITTEN))
    case = {"backend": f"emulated-{backend}", "size": pages * PAGE, "pattern": "isolated"}
    res.add(SECTION, case, "python", "seconds", samples, pages_found=found, kernel_profile="6.12")
    ctx.log(f"harvest emulated {backend:9} {human(pages * PAGE):>7} python={summarize(samples)['median'] * 1e3:.2f}ms")


def run(ctx: Context) -> None:
    res = ctx.results
    res.note(SECTION, "python = Tracker.harvest() (maps, scans, DirtySet); c_ref = csrc/bench_ref.c making the same "
                      "system calls, timed inside C; ceiling = the bare pread/PAGEMAP_SCAN over the same memory, no "
                      "maps, no decoding. 1 % of the region written per harvest; region written whole beforehand.")
    found = backends_here()
    if not found:
        res.skip(SECTION, "no back end works on this kernel")
    planned = ctx.plan.harvest_sizes if ctx.env == "host" else ctx.plan.vm_harvest_sizes
    sizes = [s for s in planned if s <= ctx.plan.max_populate]
    patterns = list(PATTERNS) if ctx.env == "host" else list(ctx.plan.vm_patterns)
    for size in sizes:
        for backend, method in found:
            for pattern in patterns:
                measure(ctx, size, backend, method, pattern, profile=size == sizes[-1] and pattern == "isolated")
    if ctx.env == "host":
        for backend in ("softdirty", "uffd"):
            for pages in ctx.plan.emulated_pages:
                try:
                    measure_emulated(ctx, pages, backend)
                except Exception as exc:  # the emulator is someone else's work in progress: say why, go on
                    res.skip(SECTION, f"emulated {backend}: {type(exc).__name__}: {exc}")
