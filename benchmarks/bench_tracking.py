"""7. Tracking cost to the target: a write-heavy workload untracked vs tracked.

The C target's ``run`` loop visits every page of its region in turn and
writes into it, for a fixed time, and reports 8-byte writes per second.  Two
workloads: ``word`` (one 8-byte write per page visited: every write may
fault, the worst case) and ``page`` (the whole 4 KiB page, 512 writes:
a fault is shared by 512 writes).  Variants, in rotating order per repeat:

* ``untracked``;
* ``<backend>@<interval>``: tracked, and harvested every ``interval`` seconds
  while the loop runs (uffd re-arms at each harvest; softdirty harvests with
  ``reset=True``, i.e. clear_refs after each read), so every page the loop
  writes after a harvest takes one write-protect fault again.

The claim is throughput tracked / untracked.  In the VM (QEMU TCG) the
ratio is reported but the emulated CPU makes fault costs relative to plain
stores unlike hardware: treat it as a sign, not a figure.
"""

from __future__ import annotations

from typing import Any

import softdirty
from benchmarks.common import Context, Target, human, populate, summarize

SECTION = "tracking"
WORKLOADS = {"word": 1, "page": 512}  # 8-byte words written per page visited


def tracked_backends() -> list[str]:
    caps = softdirty.probe()
    out = []
    if caps.soft_dirty.ok:
        out.append("softdirty")
    if caps.uffd_wp_async.ok:
        out.append("uffd")
    return out


def one(t: Target, rid: int, seconds: float, words: int, backend: str | None,
        interval: float) -> tuple[float, dict[str, Any]]:
    tracker = None
    if backend is not None:
        tracker = softdirty.track(t.pid, backend=backend)
        tracker.reset()
    harvests = 0
    pages = 0
    try:
        t.send(f"run {rid} {seconds} {words}")
        while True:
            got = t.poll_reply(interval if tracker is not None else seconds + 60)
            if got is not None:
                break
            if tracker is not None:
                ds = tracker.harvest(reset=True) if backend == "softdirty" else tracker.harvest()
                harvests += 1
                pages += ds.page_count
    finally:
        if tracker is not None:
            tracker.close()
    writes, ns = int(got[0]), int(got[1])
    return writes / (ns * 1e-9), {"harvests": harvests, "pages_harvested": pages}


def run(ctx: Context) -> None:
    res = ctx.results
    backends = tracked_backends()
    sizes = ctx.plan.tracking_sizes if ctx.env == "host" else ctx.plan.vm_tracking_sizes
    if not sizes:
        res.skip(SECTION, f"no sizes planned for {ctx.env} in {ctx.plan.mode} mode")
        return
    res.note(SECTION, "8-byte writes/s of the target's loop over its working set (word: one write per page visited; "
                      "page: 512, the whole page); tracked variants harvest every interval while it runs (softdirty: "
                      "harvest(reset=True); uffd: harvest re-arms).")
    seconds = ctx.plan.tracking_seconds
    for size in sizes:
        if size > ctx.plan.max_populate:
            continue
        variants: list[tuple[str, str | None, float]] = [("untracked", None, 0.0)]
        for b in backends:
            for iv in ctx.plan.tracking_intervals:
                variants.append((f"{b}@{iv:g}s", b, iv))
        with Target(ctx.target_exe) as t:
            rid, _ = t.map(size)
            populate(t, rid, size, "w")
            for workload, words in WORKLOADS.items():
                samples: dict[str, list[float]] = {v[0]: [] for v in variants}
                extra: dict[str, list[dict[str, Any]]] = {v[0]: [] for v in variants}
                for rep in range(min(ctx.repeats, 5 if ctx.plan.mode == "full" else 3)):
                    order = variants[rep % len(variants):] + variants[:rep % len(variants)]
                    for name, backend, iv in order:
                        rate, info = one(t, rid, seconds, words, backend, iv)
                        samples[name].append(rate)
                        extra[name].append(info)
                base = summarize(samples["untracked"])["median"]
                for name, _, iv in variants:
                    res.add(SECTION, {"size": size, "workload": workload, "seconds": seconds}, name, "writes/s",
                            samples[name], interval=iv, runs=extra[name])
                    m = summarize(samples[name])["median"]
                    ctx.log(f"tracking {ctx.env} {human(size):>7} {workload:5} {name:16} {m / 1e6:8.1f} M writes/s "
                            f"({m / base:.2f}x of untracked)")
