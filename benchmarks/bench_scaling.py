"""4. How harvest cost grows: PAGEMAP_SCAN ranges vs full pagemap reads.

The C target maps 1 to 16 GiB with MAP_NORESERVE and writes a fraction of
its pages (0.1 %, 1 %, 10 %; isolated pages, so one range per written page:
the worst case for range output).  Two layouts of the rest of the mapping:

* ``populated``: every page read once first, which maps the shared zero
  page: page tables and present entries for all of it at no memory cost.
  The kernel must then look at every PTE, whichever way we ask;
* ``sparse``: only the written pages were ever touched; the rest has no
  page tables, which PAGEMAP_SCAN skips a PMD or more at a time.

Variants, per repeat after the same pages were written again:

* host (no soft-dirty): ``scan`` = the uffd back end's harvest
  (PAGEMAP_SCAN, cost should follow the ranges); ``pagemap`` = the softdirty
  back end's ``pagemap`` method forced on this host (the library's windowed
  pread + C scanner over every entry; bit 55 never sets here, so its
  decoding finds nothing: a lower bound of that method's cost);
* VM (soft-dirty kernel): the softdirty back end's two methods, ``scan``
  and ``pagemap``, giving the same answer;
* ``ceiling_scan`` / ``ceiling_pread``: the bare system calls from C.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import softdirty
from benchmarks.bench_harvest import SD_SCAN, UFFD_SCAN, user_spans
from benchmarks.common import PAGE, Context, Target, human, populate, summarize, timed
from softdirty.answer import Answer
from softdirty.backends.softdirty import SoftDirtyBackend
from softdirty.dirtyset import Cause
from softdirty.process import LiveProcess
from softdirty.tracker import Tracker

SECTION = "scaling"


class ClaimsSoftDirty(LiveProcess):
    """A live process whose kernel is said to have soft-dirty: runs the pagemap method's code on this host."""

    def feature(self, name: str) -> Answer:
        if name == "soft_dirty":
            return Answer(True, "claimed by the benchmark to time the pagemap method's reads")
        return super().feature(name)


def forced_pagemap_tracker(pid: int) -> Tracker:
    proc = ClaimsSoftDirty(pid)
    return Tracker(proc, SoftDirtyBackend(proc, method="pagemap"), owns_process=True)


def measure(ctx: Context, size: int, fraction: float, layout: str) -> None:
    res = ctx.results
    pages = size // PAGE
    stride = round(1 / fraction)
    count = pages // stride
    vm = ctx.env != "host"
    with Target(ctx.target_exe) as t:
        rid, _ = t.map(size)
        if layout == "populated":
            populate(t, rid, size, "r")
        t.runs(rid, stride, 1, count)
        ref = ctx.ref.open(t.pid)
        trackers: list[Tracker] = []
        try:
            variants: dict[str, Callable[[], tuple[float, int]]] = {}
            spans = user_spans(t.pid)
            if vm:
                sd = softdirty.track(t.pid, backend="softdirty")
                trackers.append(sd)

                def checkpoint() -> None:
                    sd.reset()

                def lib(method: str) -> Callable[[], tuple[float, int]]:
                    def go() -> tuple[float, int]:
                        secs, ds = timed(lambda: sd.harvest(method=method))
                        return secs, ds.count(Cause.WRITTEN)
                    return go

                variants["scan"] = lib("scan")
                variants["pagemap"] = lib("pagemap")
                scan_spans, scan_args = spans, SD_SCAN
            else:
                uf = softdirty.track(t.pid, backend="uffd")
                trackers.append(uf)
                uf.reset()
                pm = forced_pagemap_tracker(t.pid)
                trackers.append(pm)

                def checkpoint() -> None:
                    pass  # uffd re-arms at every harvest; the forced pagemap method has nothing to clear

                def scan() -> tuple[float, int]:
                    secs, ds = timed(uf.harvest)
                    return secs, ds.count(Cause.WRITTEN)

                def pagemap() -> tuple[float, int]:
                    secs, ds = timed(pm.harvest)
                    return secs, -1  # nothing matches without soft-dirty

                variants["scan"] = scan
                variants["pagemap"] = pagemap
                tracked = uf.backend.tracked_ranges  # type: ignore[attr-defined]
                scan_spans, scan_args = [(tracked[0][0], tracked[-1][1])], UFFD_SCAN

            def ceiling_scan() -> tuple[float, int]:
                st = ref.ceiling_scan(scan_spans, **scan_args)
                return st.ns * 1e-9, -1

            def ceiling_pread() -> tuple[float, int]:
                st = ref.ceiling_pread(spans)
                return st.ns * 1e-9, -1

            variants["ceiling_scan"] = ceiling_scan
            variants["ceiling_pread"] = ceiling_pread
            names = list(variants)
            samples: dict[str, list[float]] = {n: [] for n in names}
            found: dict[str, list[int]] = {n: [] for n in names}
            for rep in range(ctx.repeats + 1):  # round 0 warms up and is dropped
                order = names[rep % len(names):] + names[:rep % len(names)]
                for name in order:
                    checkpoint()
                    t.runs(rid, stride, 1, count)  # the same pages every time
                    secs, got = variants[name]()
                    if rep:
                        samples[name].append(secs)
                        found[name].append(got)
        finally:
            for tr in trackers:
                tr.close()
            ref.close()
    case: dict[str, Any] = {"size": size, "fraction": fraction, "layout": layout}
    for name in names:
        res.add(SECTION, case, name, "seconds", samples[name], ranges_written=count, pages_found=found[name])
    if min(found["scan"]) < count:
        res.note(SECTION, f"{human(size)} {fraction:.1%} {layout}: scan found {min(found['scan'])} of {count} pages")
    med = {n: summarize(samples[n])["median"] for n in names}
    ctx.log(f"scaling {ctx.env} {human(size):>7} {fraction:6.1%} {layout:9} ranges={count:<7} "
            + " ".join(f"{n}={med[n] * 1e3:.2f}ms" for n in names)
            + f"  pagemap/scan={med['pagemap'] / med['scan']:.1f}x")


def run(ctx: Context) -> None:
    res = ctx.results
    caps = softdirty.probe()
    if ctx.env == "host" and not caps.uffd_wp_async.ok:
        res.skip(SECTION, f"uffd-wp async missing: {caps.uffd_wp_async.reason}")
        return
    if ctx.env != "host" and not caps.scan_soft_dirty.ok:
        res.skip(SECTION, f"PAGEMAP_SCAN with PAGE_IS_SOFT_DIRTY missing: {caps.scan_soft_dirty.reason}")
        return
    res.note(SECTION, "Isolated written pages (one range each). populated: the whole mapping read-faulted (zero "
                      "page) so every PTE exists; sparse: only the written pages exist.")
    if ctx.env == "host":
        res.note(SECTION, "host: scan = uffd harvest (PAGEMAP_SCAN WP_MATCHING); pagemap = the softdirty back end's "
                          "pagemap method forced on this host (reads and decodes every entry; none matches here).")
    else:
        res.note(SECTION, "VM: scan and pagemap = the softdirty back end's two methods (same answer).")
    sizes = ctx.plan.scaling_sizes if ctx.env == "host" else ctx.plan.vm_scaling_sizes
    fractions = ctx.plan.scaling_fractions if ctx.env == "host" else ctx.plan.vm_scaling_fractions
    for size in sizes:
        for fraction in fractions:
            if size * fraction > ctx.plan.max_populate:
                continue
            if ctx.env != "host" and size // PAGE // round(1 / fraction) > ctx.plan.vm_max_ranges:
                res.note(SECTION, f"VM: {human(size)} at {fraction:.1%} left out: more than {ctx.plan.vm_max_ranges} "
                                  "ranges take minutes per harvest in Python under TCG")
                continue
            for layout in ("populated", "sparse"):
                measure(ctx, size, fraction, layout)
