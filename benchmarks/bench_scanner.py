"""Entries per second of the C scanner vs the pure-Python fallback.

    python benchmarks/bench_scanner.py            # 16 Mi entries per case
    python benchmarks/bench_scanner.py --mi 4     # smaller

Synthetic pagemap images (packed u64, built once with a seeded RNG) go
through ``scan_entries``; then ``scan_fd`` reads the same image from a file
(page cache) and a sparse 64 GiB mapping from /proc/self/pagemap.
Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from array import array
from collections.abc import Callable

from softdirty import _libc, scanner
from softdirty.pagemap import PAGE_SIZE, PM

P, X, F, S, D = (int(f) for f in (PM.PRESENT, PM.MMAP_EXCLUSIVE, PM.FILE, PM.SWAP, PM.SOFT_DIRTY))


def runs_image(n: int, seed: int, mean_run: int, palette: list[int], pfn: bool) -> bytes:
    """Runs of equal flags with geometric lengths; present pages carry distinct PFNs if ``pfn``."""
    rng = random.Random(seed)
    out = array("Q")
    frame = 0x100000
    while len(out) < n:
        flags = rng.choice(palette)
        length = min(n - len(out), 1 + int(rng.expovariate(1 / mean_run)))
        if pfn and flags & P:
            out.extend(flags | (frame + i) for i in range(length))
            frame += length
        else:
            out.extend([flags] * length)
    return out.tobytes()


def best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mi", type=int, default=16, help="Mi entries per case")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.mi << 20
    impls = [scanner.implementation("c"), scanner.implementation("python")]
    palette = [0, P | X, P | X, P, P | F, S | 0x20, P | X | D, D]
    cases = [
        ("runs of ~64, PFNs, match PRESENT, key EXCL|FILE", runs_image(n, 1, 64, palette, True), P, P, X | F),
        ("runs of ~64, match SOFT_DIRTY, key PRESENT|EXCL|FILE", runs_image(n, 2, 64, palette, True), D, D, P | X | F),
        ("runs of ~4096 (big VMAs), match PRESENT, no key", runs_image(n, 3, 4096, palette, False), P, P, 0),
        ("all zero (unpopulated), match PRESENT", bytes(8 * n), P, P, 0),
        ("alternating P/0: one range per 2 pages (worst case)", array("Q", [P, 0] * (n // 2)).tobytes(), P, P, 0),
    ]
    print(f"{args.mi} Mi entries per case, best of {args.repeat}; scanner.active_scanner() = "
          f"{scanner.active_scanner().name}")
    print(f"{'case':58} {'impl':7} {'M entries/s':>12} {'ranges':>10}")
    for title, image, mm, mv, rm in cases:
        results = []
        for impl in impls:
            def run(impl: scanner.Scanner = impl, image: bytes = image, mm: int = mm, mv: int = mv,
                    rm: int = rm) -> array[int]:
                return impl.scan_entries(image, 0, match_mask=mm, match_value=mv, return_mask=rm)

            secs, got = best(run, args.repeat)
            assert isinstance(got, array)
            results.append(got)
            print(f"{title:58} {impl.name:7} {n / secs / 1e6:12.1f} {len(got) // 3:10}")
        assert results[0] == results[1], "C and Python disagree"
    # scan_fd over a file (page cache): read + scan.
    image = cases[0][1]
    with tempfile.TemporaryFile() as f:
        f.write(image)
        f.flush()
        for impl in impls:
            def from_file(impl: scanner.Scanner = impl, fd: int = f.fileno()) -> object:
                return impl.scan_fd(fd, 0, n * PAGE_SIZE, match_mask=P, match_value=P, return_mask=X | F)

            secs, _ = best(from_file, args.repeat)
            print(f"{'scan_fd, file in page cache (case 1)':58} {impl.name:7} {n / secs / 1e6:12.1f}")
    # Live pagemap of an unpopulated mapping: the kernel's cost dominates.
    length = n * PAGE_SIZE
    addr = _libc.mmap(length, _libc.PROT_NONE, _libc.MAP_PRIVATE | _libc.MAP_ANONYMOUS | _libc.MAP_NORESERVE)
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        for impl in impls:
            def live(impl: scanner.Scanner = impl) -> object:
                return impl.scan_fd(fd, addr, addr + length, match_mask=P, match_value=P)

            secs, _ = best(live, args.repeat)
            print(f"{'scan_fd, /proc/self/pagemap, unpopulated mapping':58} {impl.name:7} {n / secs / 1e6:12.1f}")
    finally:
        os.close(fd)
        _libc.munmap(addr, length)


if __name__ == "__main__":
    main()
