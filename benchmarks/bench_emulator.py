"""Emulator speed: a pagemap read of 1 GiB fully populated, and 10^6 write faults.

    python benchmarks/bench_emulator.py [--gib 1] [--faults 1000000] [--repeat 5] [--quick|--full] [--json PATH]

Not a test (timings vary with the machine); it prints what it measured and,
with --json, writes rows (case, variant, metric, samples) for benchmarks/run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from softdirty.emulator import EmulatedProcess, get_profile  # noqa: E402
from softdirty.emulator.constants import MADV_NOHUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE  # noqa: E402

PAGE = 4096


ROWS: list[dict[str, object]] = []


def row(case: dict[str, object], variant: str, metric: str, samples: list[float]) -> None:
    ROWS.append({"case": case, "variant": variant, "metric": metric, "samples": samples})


def best(fn, repeat: int) -> tuple[float, float, list[float]]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gib", type=float, default=1.0, help="size of the populated mapping (GiB)")
    ap.add_argument("--faults", type=int, default=1_000_000, help="write faults to take")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a quarter GiB and 250,000 faults")
    ap.add_argument("--full", action="store_true", help="the defaults (1 GiB, 10^6 faults)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as rows to PATH")
    args = ap.parse_args()
    if args.quick:
        args.gib, args.faults, args.repeat = 0.25, 250_000, 3
    pages = int(args.gib * (1 << 30)) // PAGE

    for soft_dirty in (True, False):
        p = EmulatedProcess(get_profile("6.18", soft_dirty=soft_dirty, thp="never"))
        a = p.mmap(0, pages * PAGE, 3, MAP_PRIVATE | MAP_ANONYMOUS)
        p.madvise(a, pages * PAGE, MADV_NOHUGEPAGE)
        t0 = time.perf_counter()
        p.touch(a, pages * PAGE, write=True)
        populate = time.perf_counter() - t0
        off = (a // PAGE) * 8

        def read(p: EmulatedProcess = p, off: int = off) -> None:
            data = p.read_pagemap(off, pages * 8)
            assert len(data) == pages * 8

        lo, med, samples = best(read, args.repeat)
        row({"entries": pages, "soft_dirty": soft_dirty}, "pagemap read", "seconds", samples)
        sd = "soft-dirty on (VM_SOFTDIRTY OR-ed in)" if soft_dirty else "soft-dirty off"
        print(f"pagemap read, {pages} entries ({args.gib:g} GiB populated), {sd}: "
              f"best {lo * 1000:.1f} ms, median {med * 1000:.1f} ms "
              f"({pages / lo / 1e6:.1f} M entries/s); populating by {pages} write faults took {populate:.2f} s")
        if soft_dirty:
            p.write_clear_refs(b"4")
            lo, med, samples = best(read, args.repeat)
            row({"entries": pages, "soft_dirty": True, "after_clear": True}, "pagemap read", "seconds", samples)
            print(f"pagemap read after clear_refs 4 (no VM_SOFTDIRTY): best {lo * 1000:.1f} ms, "
                  f"median {med * 1000:.1f} ms")

    # 10^6 write faults: first touches, then clear_refs 4 + rewrite rounds (write-protect faults, reuse).
    p = EmulatedProcess(get_profile("6.18", soft_dirty=True, thp="never"))
    n = min(pages, args.faults)
    a = p.mmap(0, n * PAGE, 3, MAP_PRIVATE | MAP_ANONYMOUS)
    done = 0
    kinds = []
    t0 = time.perf_counter()
    while done < args.faults:
        chunk = min(n, args.faults - done)
        if done:
            p.write_clear_refs(b"4")
        t1 = time.perf_counter()
        p.touch(a, chunk * PAGE, write=True)
        kinds.append(("first-touch" if not done else "write-protect (reuse)", chunk, time.perf_counter() - t1))
        done += chunk
    total = time.perf_counter() - t0
    fault_time = sum(t for _, _, t in kinds)
    print(f"{done} write faults over {n} pages: {fault_time:.2f} s in faults "
          f"({done / fault_time / 1e3:.0f} k faults/s), {total:.2f} s with the clear_refs in between")
    row({"faults": done, "pages": n}, "write faults", "faults/s", [done / fault_time])
    for kind, cnt, t in kinds:
        print(f"    {cnt} {kind} faults: {t:.2f} s ({t / cnt * 1e6:.2f} us each)")
    # write() with data: the same faults plus byte storage
    q = EmulatedProcess(get_profile("6.18", soft_dirty=True, thp="never"))
    m = 100_000
    b = q.mmap(0, m * PAGE, 3, MAP_PRIVATE | MAP_ANONYMOUS)
    t1 = time.perf_counter()
    for i in range(m):
        q.write(b + i * PAGE, 1)
    t = time.perf_counter() - t1
    print(f"{m} write() calls of one byte, each a first-touch fault: {t:.2f} s ({t / m * 1e6:.2f} us each)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this benchmark: {rss:.0f} MiB")
    row({"calls": m}, "write() one byte, first touch", "seconds", [t / m])
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": ROWS}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
