"""1. Decode: turning pagemap entries into ranges, entries per second.

Four decoders get the same windows of 64 Ki entries (512 KiB, the library's
pread window) and must produce identical ranges (checked):

* ``c``: the C scanner (``softdirty.scanner.implementation("c")``) through
  ``scan_reader``, the library path for back ends without an fd;
* ``python``: the pure-Python fallback, same call;
* ``naive_struct``: a Python loop, ``Struct.unpack_from`` per entry;
* ``naive_object``: a Python object per page (flags and PFN decoded, as the
  Rust procfs crate's ``PageInfo``), then a loop over the objects.

The task is the soft-dirty harvest's: match bit 55, ranges keyed by
present/swapped.  Layouts: ``dense`` (every page present) and ``sparse``
(every 16th page present: a range per present page, the worst case for
run-based decoders).  Entries come from a real process's pagemap (the C
target, populated) while the populated memory stays under the plan's cap,
with bit 55 set on every present entry because this host's kernel has no
soft-dirty (decoders only look at which entries match and at their keys);
beyond the cap they are synthetic, generated in memory.
"""

from __future__ import annotations

import os
import struct
import time
from array import array
from collections.abc import Callable

from benchmarks.common import PAGE, Context, Target, human, populate, summarize
from softdirty import scanner
from softdirty.pagemap import PM

SECTION = "decode"
WINDOW = scanner.DEFAULT_WINDOW_PAGES
SD, PRESENT, SWAP = int(PM.SOFT_DIRTY), int(PM.PRESENT), int(PM.SWAP)
KEY = PRESENT | SWAP
SPARSE_STRIDE = 16
_TOP_BIT = bytes(x & 0x80 for x in range(256))

Windows = list[bytes]


def with_soft_dirty(data: bytes) -> bytes:
    """Set bit 55 (top bit of byte 6) on every entry whose bit 63 (top bit of byte 7) is set."""
    n = len(data) // 8
    out = bytearray(data)
    b6 = int.from_bytes(data[6::8], "little") | int.from_bytes(data[7::8].translate(_TOP_BIT), "little")
    out[6::8] = b6.to_bytes(n, "little")
    return bytes(out)


def real_windows(ctx: Context, span: int, layout: str) -> tuple[int, Windows]:
    stride = 1 if layout == "dense" else SPARSE_STRIDE
    with Target(ctx.target_exe) as t:
        rid, addr = t.map(span)
        populate(t, rid, span, "w", stride)
        fd = os.open(f"/proc/{t.pid}/pagemap", os.O_RDONLY)
        try:
            windows = []
            pages = span // PAGE
            for first in range(0, pages, WINDOW):
                n = min(WINDOW, pages - first)
                data = os.pread(fd, n * 8, ((addr // PAGE) + first) * 8)
                if len(data) != n * 8:
                    raise RuntimeError(f"short pagemap read: {len(data)} of {n * 8} bytes")
                windows.append(with_soft_dirty(data))
        finally:
            os.close(fd)
    return addr, windows


def synthetic_windows(span: int, layout: str) -> tuple[int, Windows]:
    """Distinct windows (no shared buffer that would sit in cache), PFNs counting up."""
    addr = 0x7F0000000000
    pages = span // PAGE
    windows = []
    for first in range(0, pages, WINDOW):
        n = min(WINDOW, pages - first)
        if layout == "dense":
            b = bytearray(array("Q", range(0x100000 + first, 0x100000 + first + n)).tobytes())
            b[6::8] = b"\x80" * n  # bit 55 soft-dirty
            b[7::8] = b"\x81" * n  # bit 63 present, bit 56 exclusive
        else:
            b = bytearray(8 * n)
            k = len(range(0, n, SPARSE_STRIDE))
            step = 8 * SPARSE_STRIDE
            b[0::step] = bytes((first + i) & 0xFF for i in range(k))
            b[6::step] = b"\x80" * k
            b[7::step] = b"\x81" * k
        windows.append(bytes(b))
    return addr, windows


def reader(addr: int, windows: Windows) -> Callable[[int, int], bytes]:
    base = (addr // PAGE) * 8
    size = WINDOW * 8

    def read(offset: int, count: int) -> bytes:
        i, rem = divmod(offset - base, size)
        w = windows[i]
        return w if rem == 0 and count == len(w) else w[rem:rem + count]

    return read


_IMPLS: dict[str, scanner.Scanner] = {}


def impl(name: str) -> scanner.Scanner:
    """Loaded once: implementation() loads and self-checks the library each call."""
    if name not in _IMPLS:
        _IMPLS[name] = scanner.implementation(name)
    return _IMPLS[name]


def decode_lib(name: str, addr: int, windows: Windows) -> array[int]:
    lib = impl(name)
    span = sum(len(w) for w in windows) // 8 * PAGE
    return lib.scan_reader(reader(addr, windows), addr, addr + span, match_mask=SD, match_value=SD,
                            return_mask=KEY).ranges


def decode_naive_struct(addr: int, windows: Windows) -> array[int]:
    out: array[int] = array("Q")
    unpack = struct.Struct("<Q").unpack_from
    is_open, rs, re, rk = False, 0, 0, 0
    a = addr
    for w in windows:
        for off in range(0, len(w), 8):
            (e,) = unpack(w, off)
            if e & SD:
                k = e & KEY
                if is_open and a == re and k == rk:
                    re += PAGE
                else:
                    if is_open:
                        out.extend((rs, re, rk))
                    is_open, rs, re, rk = True, a, a + PAGE, k
            a += PAGE
    if is_open:
        out.extend((rs, re, rk))
    return out


class PageInfo:
    """One page as the Rust procfs crate's ``PageInfo`` decodes it: flags and a frame number."""

    __slots__ = ("present", "swapped", "file_or_shared", "exclusive", "soft_dirty", "pfn")

    def __init__(self, e: int) -> None:
        self.present = bool(e >> 63 & 1)
        self.swapped = bool(e >> 62 & 1)
        self.file_or_shared = bool(e >> 61 & 1)
        self.exclusive = bool(e >> 56 & 1)
        self.soft_dirty = bool(e >> 55 & 1)
        self.pfn = e & ((1 << 55) - 1)


def decode_naive_object(addr: int, windows: Windows) -> array[int]:
    out: array[int] = array("Q")
    is_open, rs, re, rk = False, 0, 0, 0
    a = addr
    for w in windows:
        pages = [PageInfo(e) for e in array("Q", w)]  # a Vec<PageInfo> per window
        for p in pages:
            if p.soft_dirty:
                k = (PRESENT if p.present else 0) | (SWAP if p.swapped else 0)
                if is_open and a == re and k == rk:
                    re += PAGE
                else:
                    if is_open:
                        out.extend((rs, re, rk))
                    is_open, rs, re, rk = True, a, a + PAGE, k
            a += PAGE
    if is_open:
        out.extend((rs, re, rk))
    return out


DECODERS: dict[str, Callable[[int, Windows], array[int]]] = {
    "c": lambda a, w: decode_lib("c", a, w),
    "python": lambda a, w: decode_lib("python", a, w),
    "naive_struct": decode_naive_struct,
    "naive_object": decode_naive_object,
}


def run(ctx: Context) -> None:
    plan = ctx.plan
    res = ctx.results
    res.note(SECTION, "Entries/s of each decoder over the same windows (64 Ki entries each), same ranges out "
                      "(checked). Task: match bit 55, key present/swapped (the soft-dirty harvest's).")
    res.note(SECTION, "real = the C target's own pagemap, populated (dense: every page; sparse: every 16th), with "
                      "bit 55 set on present entries (this host has no soft-dirty); synthetic = generated in memory "
                      "(used where the populated memory would exceed the mode's cap).")
    try:
        impl("c")
    except Exception as exc:  # Unsupported: no C library here
        res.skip(SECTION, f"C scanner unavailable: {exc}")
    for span in plan.decode_sizes:
        for layout in ("dense", "sparse"):
            populated = span if layout == "dense" else span // SPARSE_STRIDE
            if populated <= plan.decode_real_max:
                source = "real"
                addr, windows = real_windows(ctx, span, layout)
            else:
                source = "synthetic"
                addr, windows = synthetic_windows(span, layout)
            entries = span // PAGE
            names = [n for n in DECODERS if not (n.startswith("naive") and span > plan.naive_max)]
            if "c" not in names or any(s["section"] == SECTION and "C scanner" in s["reason"] for s in res.skipped):
                names = [n for n in names if n != "c"]
            samples: dict[str, list[float]] = {n: [] for n in names}
            reference = None
            for rep in range(plan.repeats):
                order = names[rep % len(names):] + names[:rep % len(names)]  # rotate: no decoder always first
                for name in order:
                    if name.startswith("naive") and len(samples[name]) >= 3:
                        continue  # seconds per run at large sizes: three runs say enough
                    decoder = DECODERS[name]
                    t0 = time.perf_counter_ns()
                    got = decoder(addr, windows)
                    secs = (time.perf_counter_ns() - t0) * 1e-9
                    samples[name].append(entries / secs)
                    if reference is None:
                        reference = got
                    elif got != reference:
                        raise AssertionError(f"decoder {name} disagrees on {human(span)} {layout}")
            assert reference is not None
            ranges = len(reference) // 3
            case = {"span": span, "layout": layout, "source": source}
            for name in names:
                res.add(SECTION, case, name, "entries/s", samples[name], entries=entries, ranges=ranges)
            c = summarize(samples["c"])["median"] if "c" in samples else float("nan")
            ctx.log(f"decode {human(span):>8} {layout:6} {source:9} ranges={ranges:<8} "
                    + " ".join(f"{n}={summarize(samples[n])['median'] / 1e6:.1f}M/s" for n in names)
                    + (f" (c/python {c / summarize(samples['python'])['median']:.1f}x)" if "c" in samples else ""))
