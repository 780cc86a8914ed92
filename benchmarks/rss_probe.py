"""One harvest in a fresh process, with its peak memory (run by bench_memory).

    python -m benchmarks.rss_probe --pid PID --how HOW

Sets up the harvester, checkpoints, prints ``armed``, waits for a line on
stdin (meanwhile the parent makes the target write), harvests once and prints
one JSON line.  Peak memory is measured two ways: ``ru_maxrss`` before and
after (what getrusage reports: a high-water mark since exec, which may
include the parent's memory at vfork time), and the growth of this mm's
``VmHWM`` over the harvest after resetting it with ``clear_refs`` "5"
(the harvest's own peak, the figure we report).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

HOWS = ("uffd", "softdirty-scan", "softdirty-pagemap", "pagemap-c", "pagemap-python", "whole-read")


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--how", choices=HOWS, required=True)
    args = ap.parse_args(argv)
    if args.how == "pagemap-python":
        os.environ["SOFTDIRTY_SCANNER"] = "python"  # before softdirty chooses its scanner
    import softdirty
    from softdirty import scanner
    from softdirty.maps import parse_maps
    from softdirty.pagemap import PM
    from softdirty.process import TASK_SIZE_4LEVEL

    # One-time set-up (probe, loading the scanner library) is not the harvest's: do it now.
    softdirty.probe()
    scanner.active_scanner()
    tracker = None
    if args.how == "uffd":
        tracker = softdirty.track(args.pid, backend="uffd")
    elif args.how.startswith("softdirty-"):
        tracker = softdirty.track(args.pid, backend="softdirty", method=args.how.split("-")[1])
    elif args.how in ("pagemap-c", "pagemap-python"):
        from benchmarks.bench_scaling import forced_pagemap_tracker

        tracker = forced_pagemap_tracker(args.pid)
    if tracker is not None:
        tracker.reset()
    print("armed", flush=True)
    sys.stdin.readline()

    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    rss0 = status_kib("VmRSS")
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if tracker is not None:
        ds = tracker.harvest()
        pages, ranges = ds.page_count, len(ds)
    else:  # whole-read: every entry of every user VMA in one buffer, then decoded
        fd = os.open(f"/proc/{args.pid}/pagemap", os.O_RDONLY)
        pages = ranges = 0
        try:
            for v in parse_maps(Path(f"/proc/{args.pid}/maps").read_text()):
                if v.end > TASK_SIZE_4LEVEL:
                    continue
                n = (v.end - v.start) // 4096
                data = os.pread(fd, n * 8, (v.start // 4096) * 8)
                got = scanner.scan_entries(data, v.start, match_mask=int(PM.PRESENT), match_value=int(PM.PRESENT))
                ranges += len(got) // 3
                pages += sum(got[i + 1] - got[i] for i in range(0, len(got), 3)) // 4096
                del data, got
        finally:
            os.close(fd)
    secs = time.perf_counter() - t0
    hwm = status_kib("VmHWM")
    maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "how": args.how, "seconds": secs, "pages": pages, "ranges": ranges,
        "rss_before": rss0 * 1024, "hwm_after": hwm * 1024, "peak_growth": (hwm - rss0) * 1024,
        "ru_maxrss_before": maxrss0 * 1024, "ru_maxrss_after": maxrss1 * 1024,
        "scanner": scanner.active_scanner().name,
    }), flush=True)
    if tracker is not None:
        tracker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
