"""6. Pre-copy: the final round's freeze time vs a plain stop-and-copy.

The C target writes its whole region, then runs a paced writer that dirties
1 %, 5 % or 20 % of the region per second (distinct pages in a fixed order;
a frozen writer does not catch up afterwards).  While it runs,
``softdirty.dump.dump()`` (the library's pre-copy: round 0 copies
everything, dirty rounds copy what was written, the last round freezes every
thread with ptrace, harvests, copies the rest into memory and lets go) dumps
it into a scratch image directory, and also times a stop-and-copy of the same
process (freeze, read all memory, let go) just before its last round.

Figures: ``final_freeze`` (the last round, from the freeze until the
threads are let go) and ``stop_and_copy``; the claim is their ratio.  Host
only: under QEMU TCG a "per second" rate means nothing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import softdirty
from benchmarks.common import PAGE, Context, Target, human, populate, summarize

SECTION = "precopy"


def run(ctx: Context) -> None:
    res = ctx.results
    if ctx.env != "host":
        res.skip(SECTION, "not run in the VM: a writer's rate per second means nothing under QEMU TCG")
        return
    try:
        from softdirty import dump as dump_mod
    except ImportError as exc:
        res.skip(SECTION, f"softdirty.dump is not available: {exc}")
        return
    caps = softdirty.probe()
    backend = caps.best_backend
    if backend is None:
        res.skip(SECTION, "no back end works here")
        return
    res.note(SECTION, f"softdirty.dump.dump(backend={backend!r}) with its default StopRule, image in a scratch "
                      "directory on disk; stop_and_copy = softdirty.dump.stop_and_copy of the same process, timed "
                      "by dump() just before its last round (compare=True).")
    scratch = Path(tempfile.mkdtemp(prefix="softdirty-bench-dump-"))
    repeats = min(ctx.repeats, 3 if ctx.plan.mode == "full" else 2)  # a dump takes seconds
    try:
        for size in ctx.plan.precopy_sizes:
            if size > ctx.plan.max_populate:
                continue
            pages = size // PAGE
            for rate in ctx.plan.precopy_rates:
                final: list[float] = []
                stop_copy: list[float] = []
                info: list[dict[str, Any]] = []
                for rep in range(repeats):
                    with Target(ctx.target_exe) as t:
                        rid, _ = t.map(size)
                        populate(t, rid, size, "w")
                        t.send(f"rate {rid} {rate * pages:.0f} 3600")
                        image = scratch / f"img-{rep}"
                        try:
                            report = dump_mod.dump(t.pid, image, backend=backend, compare=True)
                        finally:
                            t.stop_loop()
                            writes = int(t.reply()[0])
                            shutil.rmtree(image, ignore_errors=True)
                    assert report.stop_and_copy_seconds is not None
                    final.append(report.final_freeze_seconds)
                    stop_copy.append(report.stop_and_copy_seconds)
                    last = report.rounds[-1]
                    info.append({"rounds": len(report.rounds), "final_pages": last.pages_copied,
                                 "stop_reason": report.stop_reason, "writer_writes": writes,
                                 "stop_and_copy_bytes": report.stop_and_copy_bytes,
                                 "total_bytes": report.total_bytes, "seconds": report.seconds,
                                 "acquire_seconds": report.final_freeze_acquire_seconds})
                case = {"size": size, "rate": rate, "backend": backend}
                res.add(SECTION, case, "final_freeze", "seconds", final, runs=info)
                res.add(SECTION, case, "stop_and_copy", "seconds", stop_copy)
                f, s = summarize(final)["median"], summarize(stop_copy)["median"]
                ctx.log(f"precopy {human(size):>7} {rate:4.0%}/s final freeze {f * 1e3:.1f} ms vs stop-and-copy "
                        f"{s * 1e3:.1f} ms ({f / s:.2f}x); rounds {[i['rounds'] for i in info]}, final pages "
                        f"{[i['final_pages'] for i in info]}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
