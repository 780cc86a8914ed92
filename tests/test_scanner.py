"""The C scanner and its pure-Python twin, against each other and against a per-entry reference.

The C library must be built (``python -m softdirty._build`` in a checkout,
or ``pip install .``).  If it is missing or stale the C tests FAIL, so that
CI cannot pass on the fallback alone; set ``SOFTDIRTY_ALLOW_NO_C=1`` to turn
them into skips (e.g. when checking a no-compiler install on purpose).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import subprocess
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softdirty import scanner
from softdirty.errors import Unsupported
from softdirty.pagemap import PAGE_SIZE, PM, PM_FLAGS_MASK, PM_SCAN_ARG_FIELDS, PageCategory

P, X, F, S, W, G, D = (int(f) for f in (PM.PRESENT, PM.MMAP_EXCLUSIVE, PM.FILE, PM.SWAP, PM.UFFD_WP,
                                         PM.GUARD_REGION, PM.SOFT_DIRTY))
U64_MAX = (1 << 64) - 1
ALLOW_NO_C = os.environ.get("SOFTDIRTY_ALLOW_NO_C") == "1"
Triples = list[tuple[int, int, int]]


def _c_or_fail() -> scanner.CScanner:
    try:
        impl = scanner.implementation("c")
    except Unsupported as exc:
        if ALLOW_NO_C:
            pytest.skip(f"C scanner unavailable and SOFTDIRTY_ALLOW_NO_C=1: {exc.reason}")
        pytest.fail(f"C scanner unavailable: {exc.reason}. Build it (python -m softdirty._build) "
                    "or set SOFTDIRTY_ALLOW_NO_C=1 to skip the C side", pytrace=False)
    assert isinstance(impl, scanner.CScanner)
    return impl


@pytest.fixture(scope="module")
def c_impl() -> scanner.CScanner:
    return _c_or_fail()


@pytest.fixture(scope="module")
def py_impl() -> scanner.Scanner:
    return scanner.implementation("python")


def triples(arr: array[int]) -> Triples:
    assert arr.typecode == "Q" and len(arr) % 3 == 0
    return list(scanner.iter_triples(arr))


def reference(entries: list[int], start: int, mm: int, mv: int, rm: int) -> Triples:
    """One entry at a time: the definition the scanners must meet."""
    out: list[list[int]] = []
    for i, e in enumerate(entries):
        if e & mm != mv:
            continue
        addr, key = start + i * PAGE_SIZE, e & rm
        if out and out[-1][1] == addr and out[-1][2] == key:
            out[-1][1] += PAGE_SIZE
        else:
            out.append([addr, addr + PAGE_SIZE, key])
    return [(a, b, c) for a, b, c in out]


def pack(entries: list[int]) -> bytes:
    return array("Q", entries).tobytes()


# -- strategies ------------------------------------------------------------------------------

PALETTE = [0, P, P | X, P | F, P | X | 0x1234, P | F | 0x245C00, S | 0x20, S | W | 0x40, S | G | 0x9F,
           S | W | 0x3F, W, D, P | X | D, U64_MAX, 1 << 59, 1 << 60]
MASKS = [0, P, P | X, D, P | D, S | W | G, PM_FLAGS_MASK, U64_MAX, 0xFF, 1 << 54 | 1 << 55, 0x00FF00FF00FF00FF]

entry_st = st.one_of(
    st.sampled_from(PALETTE),
    st.integers(0, U64_MAX),
    st.sets(st.integers(0, 63), max_size=6).map(lambda bits: sum(1 << b for b in bits)),
)
# Runs of equal entries, so that coalescing has something to do.
entries_st = st.lists(st.tuples(entry_st, st.integers(1, 40)), max_size=25).map(
    lambda runs: [e for e, n in runs for _ in range(n)])
mask_st = st.one_of(st.sampled_from(MASKS), st.integers(0, U64_MAX))


@st.composite
def scan_case(draw: st.DrawFn) -> tuple[list[int], int, int, int, int]:
    entries = draw(entries_st)
    mm = draw(mask_st)
    # Mostly a value some entry has (so that things match), sometimes any value under the mask.
    source = draw(st.one_of(st.sampled_from(entries or [0]), st.integers(0, U64_MAX)))
    mv = source & mm
    rm = draw(mask_st)
    top = (1 << 52) - 1 - len(entries)  # start + n pages must stay below 2**64
    page = draw(st.one_of(st.integers(0, 1 << 20), st.integers(0, top), st.just(top)))
    return entries, page * PAGE_SIZE, mm, mv, rm


# -- scan_entries ------------------------------------------------------------------------------


@given(case=scan_case(), cap=st.sampled_from([1, 2, 3, 7, 16384]))
def test_scan_entries_c_python_reference(case: tuple[list[int], int, int, int, int], cap: int,
                                         c_impl: scanner.CScanner, py_impl: scanner.Scanner) -> None:
    entries, start, mm, mv, rm = case
    want = reference(entries, start, mm, mv, rm)
    data = pack(entries)
    kw = {"match_mask": mm, "match_value": mv, "return_mask": rm}
    assert triples(py_impl.scan_entries(data, start, **kw)) == want
    # A tiny output buffer fills mid-run: the C side must resume where it stopped.
    assert triples(c_impl.with_capacity(cap).scan_entries(data, start, **kw)) == want
    # Other buffer kinds: writable (no copy), read-only slice (copied), array('Q').
    assert triples(c_impl.scan_entries(bytearray(data), start, **kw)) == want
    assert triples(c_impl.scan_entries(memoryview(b"\0" * 8 + data)[8:], start, **kw)) == want
    assert triples(py_impl.scan_entries(array("Q", entries), start, **kw)) == want


def test_scan_entries_empty_and_all_bits(c_impl: scanner.CScanner, py_impl: scanner.Scanner) -> None:
    for impl in (c_impl, py_impl):
        assert len(impl.scan_entries(b"", 0, match_mask=0, match_value=0)) == 0
        ones = pack([U64_MAX] * 5)
        assert triples(impl.scan_entries(ones, 0x1000, match_mask=U64_MAX, match_value=U64_MAX,
                                         return_mask=U64_MAX)) == [(0x1000, 0x6000, U64_MAX)]
        assert len(impl.scan_entries(ones, 0, match_mask=P, match_value=0)) == 0
        # match_mask 0 matches everything, across a window edge (64 Ki entries) too.
        many = bytes(8 * (scanner.DEFAULT_WINDOW_PAGES + 3))
        assert triples(impl.scan_entries(many, 0, match_mask=0, match_value=0)) == [
            (0, (scanner.DEFAULT_WINDOW_PAGES + 3) * PAGE_SIZE, 0)]


def test_scan_entries_at_the_top_of_the_address_space(c_impl: scanner.CScanner, py_impl: scanner.Scanner) -> None:
    start = (1 << 64) - 3 * PAGE_SIZE
    for impl in (c_impl, py_impl):
        got = impl.scan_entries(pack([P, P]), start, match_mask=P, match_value=P)
        assert triples(got) == [(start, start + 2 * PAGE_SIZE, 0)]
        with pytest.raises(ValueError, match="past the 64-bit"):
            impl.scan_entries(pack([P, P, P]), start, match_mask=P, match_value=P)


# -- scan_reader: windows, short reads, early end ---------------------------------------------------


def make_reader(entries: list[int], start: int, chunks: list[int]) -> Callable[[int, int], bytes]:
    """pread-like reader of ``entries`` at page ``start``; ``chunks`` cap successive reads (short reads)."""
    data = pack(entries)
    base = (start // PAGE_SIZE) * 8
    calls = iter(chunks)

    def read(offset: int, count: int) -> bytes:
        assert offset % 8 == 0 and count % 8 == 0, "the kernel's alignment rule"
        assert offset >= base
        limit = next(calls, count)
        return data[offset - base: offset - base + min(count, limit)]

    return read


@given(case=scan_case(), window=st.integers(1, 9), missing=st.integers(0, 5),
       chunks=st.lists(st.integers(1, 80), max_size=12), cap=st.sampled_from([1, 2, 16384]))
def test_scan_reader_windows_short_reads_and_eof(case: tuple[list[int], int, int, int, int], window: int,
                                                  missing: int, chunks: list[int], cap: int,
                                                  c_impl: scanner.CScanner, py_impl: scanner.Scanner) -> None:
    entries, start, mm, mv, rm = case
    available = entries[:max(0, len(entries) - missing)]  # the data may end before `end`
    end = start + len(entries) * PAGE_SIZE
    want = reference(available, start, mm, mv, rm)
    # Chunk sizes in bytes: some are not a multiple of 8 (whole entries are kept, the rest re-read).
    byte_chunks = [8 + c if c % 3 else 8 * c for c in chunks]
    for impl in (py_impl, c_impl.with_capacity(cap)):
        res = impl.scan_reader(make_reader(available, start, byte_chunks), start, end, match_mask=mm,
                               match_value=mv, return_mask=rm, window_pages=window)
        assert triples(res.ranges) == want
        assert res.pages_matched == sum((b - a) // PAGE_SIZE for a, b, _ in want)
        assert res.entries_read == len(available)
        assert res.complete is (len(available) == len(entries))
        assert res.stopped_at == start + len(available) * PAGE_SIZE


def test_scan_reader_rejects_partial_entry_and_overlong_reads(c_impl: scanner.CScanner,
                                                             py_impl: scanner.Scanner) -> None:
    for impl in (c_impl, py_impl):
        with pytest.raises(OSError) as exc:
            impl.scan_reader(lambda off, n: b"\0" * 5, 0, 4 * PAGE_SIZE, match_mask=0, match_value=0)
        assert exc.value.errno == errno.EIO
        with pytest.raises(ValueError, match="more than"):
            impl.scan_reader(lambda off, n: b"\0" * (n + 8), 0, 4 * PAGE_SIZE, match_mask=0, match_value=0)


# -- scan_fd on a file of packed entries -----------------------------------------------------------------


@contextmanager
def entries_file(entries: list[int], start: int, tail: bytes = b"") -> Iterator[int]:
    """A sparse temp file with the entries where pagemap would have them: offset (start >> 12) * 8."""
    with tempfile.TemporaryFile() as f:
        os.pwrite(f.fileno(), pack(entries) + tail, (start // PAGE_SIZE) * 8)
        yield f.fileno()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=scan_case(), window=st.integers(1, 9), missing=st.integers(0, 4), cap=st.sampled_from([1, 2, 16384]))
def test_scan_fd_file(case: tuple[list[int], int, int, int, int], window: int, missing: int, cap: int,
                      c_impl: scanner.CScanner, py_impl: scanner.Scanner) -> None:
    entries, start, mm, mv, rm = case
    start %= 1 << 40  # keep the sparse file's size sane
    available = entries[:max(0, len(entries) - missing)]
    end = start + len(entries) * PAGE_SIZE
    want = reference(available, start, mm, mv, rm)
    with entries_file(available, start) as fd:
        results = [impl.scan_fd(fd, start, end, match_mask=mm, match_value=mv, return_mask=rm, window_pages=window)
                   for impl in (py_impl, c_impl.with_capacity(cap), c_impl)]
    for res in results:
        assert triples(res.ranges) == want
        assert res.entries_read == len(available)
        assert res.complete is (len(available) == len(entries))
        assert res.stopped_at == start + len(available) * PAGE_SIZE


def test_scan_fd_partial_entry_is_eio(c_impl: scanner.CScanner, py_impl: scanner.Scanner) -> None:
    with entries_file([P, P], 0, tail=b"\1\2\3") as fd:
        for impl in (c_impl, py_impl):
            with pytest.raises(OSError) as exc:
                impl.scan_fd(fd, 0, 4 * PAGE_SIZE, match_mask=P, match_value=P)
            assert exc.value.errno == errno.EIO


def test_scan_fd_bad_fd(c_impl: scanner.CScanner, py_impl: scanner.Scanner) -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    for impl in (c_impl, py_impl):
        with pytest.raises(OSError) as exc:
            impl.scan_fd(fd, 0, PAGE_SIZE, match_mask=0, match_value=0)
        assert exc.value.errno == errno.EBADF


# -- live /proc/self/pagemap -----------------------------------------------------------------------------------

NPAGES = 96
# Page i: 0 untouched, 1 written, 2 read (the shared zero page).
PATTERN = [(0, 1, 1, 2, 0, 1, 2, 2, 1, 0, 0, 1)[i % 12] if i < 80 else 1 for i in range(NPAGES)]


@pytest.fixture(scope="module")
def live_mapping() -> Iterator[tuple[int, int]]:
    """(fd of /proc/self/pagemap, address) of an anonymous mapping touched per PATTERN."""
    m = mmap.mmap(-1, NPAGES * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)  # a THP would make untouched pages present
    anchor = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(anchor)
    for i, kind in enumerate(PATTERN):
        if kind == 1:
            m[i * PAGE_SIZE] = 1
        elif kind == 2:
            assert m[i * PAGE_SIZE] == 0
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd, addr
    finally:
        os.close(fd)
        del anchor
        m.close()


def expected_runs(addr: int, key_of: Callable[[int], int | None]) -> Triples:
    out: list[list[int]] = []
    for i, kind in enumerate(PATTERN):
        key = key_of(kind)
        if key is None:
            continue
        a = addr + i * PAGE_SIZE
        if out and out[-1][1] == a and out[-1][2] == key:
            out[-1][1] += PAGE_SIZE
        else:
            out.append([a, a + PAGE_SIZE, key])
    return [(a, b, c) for a, b, c in out]


def test_scan_fd_live_pagemap(live_mapping: tuple[int, int], c_impl: scanner.CScanner,
                              py_impl: scanner.Scanner) -> None:
    fd, addr = live_mapping
    end = addr + NPAGES * PAGE_SIZE
    # Written pages are present and exclusive; zero-page reads are present, never exclusive.
    want = expected_runs(addr, lambda kind: {0: None, 1: P | X, 2: P}[kind])
    kw = {"match_mask": P, "match_value": P, "return_mask": P | X | F}
    for impl in (py_impl, c_impl, c_impl.with_capacity(1)):
        for window in (1, 7, scanner.DEFAULT_WINDOW_PAGES):
            res = impl.scan_fd(fd, addr, end, window_pages=window, **kw)
            assert triples(res.ranges) == want, (impl.name, window)
            assert res.complete and res.stopped_at == end and res.entries_read == NPAGES
            assert res.pages_matched == sum(1 for k in PATTERN if k)


def test_scan_fd_live_end_of_address_space(c_impl: scanner.CScanner, py_impl: scanner.Scanner) -> None:
    """Reads stop at TASK_SIZE (2**47 - 4096 with 4-level paging): short read, then 0 bytes."""
    top = 1 << 47
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        results = [impl.scan_fd(fd, top - 8 * PAGE_SIZE, top + 8 * PAGE_SIZE, match_mask=0, match_value=0,
                                window_pages=w) for impl in (c_impl, py_impl) for w in (5, 64)]
    finally:
        os.close(fd)
    five_level = "la57" in Path("/proc/cpuinfo").read_text().split()
    for res in results:
        assert res == results[0]
        if not five_level:
            assert not res.complete and res.stopped_at == top - PAGE_SIZE and res.entries_read == 7
            assert triples(res.ranges) == [(top - 8 * PAGE_SIZE, top - PAGE_SIZE, 0)]


@contextmanager
def dead_process_pagemap() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    fd = os.open(f"/proc/{proc.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        proc.kill()
        proc.wait()
        yield fd
    finally:
        os.close(fd)


def test_scan_fd_process_gone(c_impl: scanner.CScanner, py_impl: scanner.Scanner) -> None:
    with dead_process_pagemap() as fd:
        for impl in (c_impl, py_impl):
            res = impl.scan_fd(fd, 0x400000, 0x800000, match_mask=0, match_value=0)
            assert not res.complete and res.stopped_at == 0x400000 and res.entries_read == 0
            assert len(res.ranges) == 0


# -- PAGEMAP_SCAN on the live kernel ---------------------------------------------------------------------------------

PR, WR, PZ = int(PageCategory.PRESENT), int(PageCategory.WRITTEN), int(PageCategory.PFNZERO)


@pytest.mark.pagemap_scan
def test_pagemap_scan_live_loops_agree(live_mapping: tuple[int, int], c_impl: scanner.CScanner,
                                       py_impl: scanner.Scanner) -> None:
    fd, addr = live_mapping
    end = addr + NPAGES * PAGE_SIZE
    want = expected_runs(addr, lambda kind: {0: None, 1: PR | WR, 2: PR | WR | PZ}[kind])
    kw = {"category_mask": PR, "return_mask": PR | WR | PZ}
    single, walk_end = py_impl.pagemap_scan_ioctl(fd, addr, end, vec_len=1024, **kw)
    assert triples(single) == want and walk_end == end
    assert triples(c_impl.pagemap_scan_ioctl(fd, addr, end, vec_len=1024, **kw)[0]) == want
    for impl in (py_impl, c_impl, c_impl.with_capacity(1), c_impl.with_capacity(2)):
        for vec_len in (1, 2, 5, 4096):
            got = impl.pagemap_scan(fd, addr, end, vec_len=vec_len, **kw)
            assert triples(got.ranges) == want, (impl.name, vec_len)
            assert got.walk_end == end
            if vec_len == 1:
                assert got.calls >= len(want)


@pytest.mark.pagemap_scan
@pytest.mark.parametrize("max_pages", [1, 2, 3, 10, 37])
def test_pagemap_scan_live_max_pages(max_pages: int, live_mapping: tuple[int, int], c_impl: scanner.CScanner,
                                     py_impl: scanner.Scanner) -> None:
    fd, addr = live_mapping
    end = addr + NPAGES * PAGE_SIZE
    kw = {"category_mask": PR, "return_mask": PR | WR | PZ, "max_pages": max_pages}
    single, single_end = py_impl.pagemap_scan_ioctl(fd, addr, end, vec_len=1024, **kw)
    assert sum((b - a) // PAGE_SIZE for a, b, _ in triples(single)) == max_pages
    for impl in (py_impl, c_impl, c_impl.with_capacity(1)):
        for vec_len in (1, 3, 4096):
            got = impl.pagemap_scan(fd, addr, end, vec_len=vec_len, **kw)
            assert triples(got.ranges) == triples(single), (impl.name, vec_len)
            assert got.walk_end == single_end


@pytest.mark.pagemap_scan
def test_pagemap_scan_without_vector(live_mapping: tuple[int, int], c_impl: scanner.CScanner,
                                     py_impl: scanner.Scanner) -> None:
    fd, addr = live_mapping
    end = addr + NPAGES * PAGE_SIZE
    for impl in (py_impl, c_impl):
        assert impl.pagemap_scan_ioctl(fd, addr, end, category_mask=PR, vec_len=0) == (array("Q"), end)
        got = impl.pagemap_scan(fd, addr, end, category_mask=PR, vec_len=0)
        assert len(got.ranges) == 0 and got.walk_end == end and got.calls == 1
        empty = impl.pagemap_scan(fd, addr, addr, category_mask=PR)
        assert len(empty.ranges) == 0 and empty.walk_end == addr


def test_pagemap_scan_enotty(c_impl: scanner.CScanner, py_impl: scanner.Scanner) -> None:
    fd = os.open("/proc/self/maps", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for impl in (c_impl, py_impl):
            for call in (impl.pagemap_scan_ioctl, impl.pagemap_scan):
                with pytest.raises(OSError) as exc:
                    call(fd, 0, PAGE_SIZE)
                assert exc.value.errno == errno.ENOTTY, (impl.name, call)
    finally:
        os.close(fd)


@pytest.mark.pagemap_scan
def test_pagemap_scan_esrch(c_impl: scanner.CScanner, py_impl: scanner.Scanner) -> None:
    with dead_process_pagemap() as fd:
        for impl in (c_impl, py_impl):
            for call in (impl.pagemap_scan_ioctl, impl.pagemap_scan):
                with pytest.raises(OSError) as exc:
                    call(fd, 0x400000, 0x800000)
                assert exc.value.errno == errno.ESRCH


@pytest.mark.pagemap_scan
def test_pagemap_scan_kernel_einval(live_mapping: tuple[int, int], c_impl: scanner.CScanner,
                                    py_impl: scanner.Scanner) -> None:
    fd, addr = live_mapping
    for impl in (c_impl, py_impl):
        with pytest.raises(OSError) as exc:  # category bit 9 is unknown to every kernel so far
            impl.pagemap_scan(fd, addr, addr + PAGE_SIZE, category_mask=1 << 9)
        assert exc.value.errno == errno.EINVAL


# -- the loops over a model kernel: batches, merges at batch edges, max_pages -------------------------------------


class ModelKernel:
    """PAGEMAP_SCAN semantics over a list of per-page categories (None: unmapped).

    ``chop`` makes every call stop after walking that many pages, in the middle
    of a region if need be, so that the loops must merge across calls.
    """

    def __init__(self, base: int, cats: list[int | None], chop: int) -> None:
        self.base, self.cats, self.chop = base, cats, chop

    def __call__(self, start: int, end: int, *, flags: int = 0, category_inverted: int = 0, category_mask: int = 0,
                 category_anyof_mask: int = 0, return_mask: int = 0, max_pages: int = 0,
                 vec_len: int = 0) -> tuple[array[int], int]:
        if vec_len == 0:
            return array("Q"), end
        stop = min(end, start + self.chop * PAGE_SIZE) if self.chop else end
        regs: list[list[int]] = []
        pages = 0
        addr = start
        while addr < stop:
            i = (addr - self.base) // PAGE_SIZE
            cat = self.cats[i] if 0 <= i < len(self.cats) else None
            if cat is not None:
                x = cat ^ category_inverted
                if (x & category_mask) == category_mask and (not category_anyof_mask or x & category_anyof_mask):
                    out = cat & return_mask
                    if regs and regs[-1][1] == addr and regs[-1][2] == out:
                        regs[-1][1] += PAGE_SIZE
                    elif len(regs) == vec_len:
                        return array("Q", [v for r in regs for v in r]), addr
                    else:
                        regs.append([addr, addr + PAGE_SIZE, out])
                    pages += 1
                    if max_pages and pages == max_pages:
                        return array("Q", [v for r in regs for v in r]), addr + PAGE_SIZE
            addr += PAGE_SIZE
        return array("Q", [v for r in regs for v in r]), stop


@contextmanager
def c_driven_by(c_impl: scanner.CScanner, model: ModelKernel) -> Iterator[None]:
    fields = {name: i for i, name in enumerate(PM_SCAN_ARG_FIELDS)}

    def hook(fd: int, argp: ctypes._Pointer[ctypes.Array[ctypes.c_uint64]]) -> int:
        arg = argp.contents
        assert arg[fields["size"]] == 96 and fd == 1234
        kw = {k: arg[fields[k]] for k in ("flags", "category_inverted", "category_mask", "category_anyof_mask",
                                          "return_mask", "max_pages", "vec_len")}
        regions, walk_end = model(arg[fields["start"]], arg[fields["end"]], **kw)
        arg[fields["walk_end"]] = walk_end
        if len(regions):
            ctypes.memmove(arg[fields["vec"]], regions.buffer_info()[0], len(regions) * 8)
        return len(regions) // 3

    callback = scanner.IOCTL_HOOK(hook)
    c_impl.lib.sd_test_set_ioctl_hook(callback)
    try:
        yield
    finally:
        c_impl.lib.sd_test_set_ioctl_hook(None)


cats_st = st.lists(st.one_of(st.none(), st.sampled_from([0, PR, PR | WR, WR, PR | PZ, 0x1FF, 16])), max_size=60)


@given(cats=cats_st, chop=st.integers(0, 7), vec_len=st.integers(1, 6), max_pages=st.integers(0, 12),
       mask=st.sampled_from([0, PR, WR, PR | WR]), inverted=st.sampled_from([0, PR, WR]),
       anyof=st.sampled_from([0, PZ | 16, WR]), ret=st.sampled_from([0, PR, PR | WR | PZ, 0x1FF]),
       cap=st.sampled_from([1, 2, 16384]))
def test_loops_over_model_kernel(cats: list[int | None], chop: int, vec_len: int, max_pages: int, mask: int,
                                 inverted: int, anyof: int, ret: int, cap: int, c_impl: scanner.CScanner) -> None:
    base = 0x7F0000000000
    end = base + len(cats) * PAGE_SIZE
    kw = {"category_mask": mask, "category_inverted": inverted, "category_anyof_mask": anyof,
          "return_mask": ret, "max_pages": max_pages}
    whole, whole_end = ModelKernel(base, cats, 0)(base, end, vec_len=10**6, **kw)
    model = ModelKernel(base, cats, chop)
    py = scanner.pagemap_scan_loop(model, base, end, vec_len=vec_len, **kw)
    with c_driven_by(c_impl, model):
        c = c_impl.with_capacity(cap).pagemap_scan(1234, base, end, vec_len=vec_len, **kw)
    assert triples(py.ranges) == triples(c.ranges) == triples(whole)
    assert py.walk_end == c.walk_end == whole_end
    if cap == 16384:
        assert py.calls == c.calls


# -- argument checking --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["c", "python"])
def test_bad_arguments(name: str, c_impl: scanner.CScanner, py_impl: scanner.Scanner) -> None:
    impl = c_impl if name == "c" else py_impl
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    m = {"match_mask": P, "match_value": P}
    try:
        cases: list[tuple[Callable[[], object], type[Exception], str]] = [
            (lambda: impl.scan_fd(fd, 100, PAGE_SIZE, **m), ValueError, "start 0x64 is not a multiple"),
            (lambda: impl.scan_fd(fd, 0, PAGE_SIZE + 1, **m), ValueError, "end 0x1001 is not a multiple"),
            (lambda: impl.scan_fd(fd, 2 * PAGE_SIZE, PAGE_SIZE, **m), ValueError, "below start"),
            (lambda: impl.scan_fd(fd, -PAGE_SIZE, PAGE_SIZE, **m), ValueError, "64 unsigned bits"),
            (lambda: impl.scan_fd(fd, 0, 1 << 64, **m), ValueError, "64 unsigned bits"),
            (lambda: impl.scan_fd(fd, 0.0, PAGE_SIZE, **m), TypeError, "start must be an int"),  # type: ignore
            (lambda: impl.scan_fd(fd, True, PAGE_SIZE, **m), TypeError, "start must be an int"),
            (lambda: impl.scan_fd("3", 0, PAGE_SIZE, **m), TypeError, "fd must be an int"),  # type: ignore
            (lambda: impl.scan_fd(-1, 0, PAGE_SIZE, **m), ValueError, "non-negative"),
            (lambda: impl.scan_fd(fd, 0, PAGE_SIZE, match_mask=P, match_value=X), ValueError, "outside match_mask"),
            (lambda: impl.scan_fd(fd, 0, PAGE_SIZE, window_pages=0, **m), ValueError, "window_pages"),
            (lambda: impl.scan_fd(fd, 0, PAGE_SIZE, return_mask=None, **m), TypeError,  # type: ignore
             "return_mask must be an int"),
            (lambda: impl.scan_entries(b"\0" * 12, 0, **m), ValueError, "8 bytes each"),
            (lambda: impl.scan_entries([1, 2], 0, **m), TypeError, "bytes-like"),
            (lambda: impl.scan_entries(b"", 1, **m), ValueError, "not a multiple of the page size"),
            (lambda: impl.scan_reader(b"", 0, PAGE_SIZE, **m), TypeError, "callable"),  # type: ignore
            (lambda: impl.pagemap_scan(fd, 1, PAGE_SIZE), ValueError, "start 0x1 is not a multiple"),
            (lambda: impl.pagemap_scan(fd, PAGE_SIZE, 0), ValueError, "below start"),
            (lambda: impl.pagemap_scan_ioctl(fd, 0, PAGE_SIZE, vec_len=-1), ValueError, "vec_len"),
            (lambda: impl.pagemap_scan_ioctl(fd, 0, PAGE_SIZE, flags=-1), ValueError, "flags"),
            (lambda: impl.pagemap_scan_ioctl(fd, 0, PAGE_SIZE, category_mask="8"), TypeError,  # type: ignore
             "category_mask must be an int"),
        ]
        for call, error, message in cases:
            with pytest.raises(error, match=message):
                call()
    finally:
        os.close(fd)
    with pytest.raises(TypeError, match="callable"):
        scanner.pagemap_scan_loop(None, 0, PAGE_SIZE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="below start"):
        scanner.pagemap_scan_loop(ModelKernel(0, [], 0), PAGE_SIZE, 0)


# -- choosing the implementation -------------------------------------------------------------------------------------


def test_choose_forced_and_missing(tmp_path: Path, c_impl: scanner.CScanner) -> None:
    impl, info = scanner._choose({"SOFTDIRTY_SCANNER": "python"})
    assert isinstance(impl, scanner.PythonScanner) and info.name == "python" and "forced" in info.reason
    impl, info = scanner._choose({"SOFTDIRTY_SCANNER": "c"})
    assert isinstance(impl, scanner.CScanner) and info.name == "c" and info.path
    impl, info = scanner._choose({})
    assert info.name == "c"
    missing = {"SOFTDIRTY_SCANNER_LIB": str(tmp_path / "nope.so")}
    impl, info = scanner._choose(missing)
    assert info.name == "python" and "does not exist" in info.reason and info.path is None
    with pytest.raises(Unsupported, match="does not exist"):
        scanner._choose({**missing, "SOFTDIRTY_SCANNER": "c"})
    not_a_lib = tmp_path / "junk.so"
    not_a_lib.write_bytes(b"not an ELF file")
    impl, info = scanner._choose({"SOFTDIRTY_SCANNER_LIB": str(not_a_lib)})
    assert info.name == "python" and "cannot load" in info.reason
    with pytest.raises(ValueError, match="SOFTDIRTY_SCANNER"):
        scanner._choose({"SOFTDIRTY_SCANNER": "fortran"})


def test_active_scanner_is_frozen_info() -> None:
    info = scanner.active_scanner()
    assert info.name in ("c", "python") and info.reason
    with pytest.raises(AttributeError):
        info.name = "x"  # type: ignore[misc]
    if not ALLOW_NO_C and os.environ.get("SOFTDIRTY_SCANNER") != "python":
        assert info.name == "c", info.reason  # the C library is there: it must be the one in use


def test_module_functions_use_the_active_scanner(c_impl: scanner.CScanner) -> None:
    data = pack([P, P, 0, P | X])
    got = scanner.scan_entries(data, 0, match_mask=P, match_value=P, return_mask=X)
    assert triples(got) == [(0, 2 * PAGE_SIZE, 0), (3 * PAGE_SIZE, 4 * PAGE_SIZE, X)]
    res = scanner.scan_reader(make_reader([P, P, 0, P | X], 0, []), 0, 4 * PAGE_SIZE, match_mask=P, match_value=P)
    assert triples(res.ranges) == [(0, 2 * PAGE_SIZE, 0), (3 * PAGE_SIZE, 4 * PAGE_SIZE, 0)] and res.complete
