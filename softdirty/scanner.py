"""Turn pagemap entries into ranges, fast: the C scanner and its pure-Python twin.

Two implementations stand behind the same functions and must give identical
results (``tests/test_scanner.py`` holds them against each other and against
a per-entry reference):

* ``c``: ``softdirty/_sdscan.so``, a plain shared library built from
  ``csrc/scanner.c`` and loaded with ctypes (checked at load: ABI version,
  the PAGEMAP_SCAN number it was built with, the sources it was built from
  when we run from a checkout, and a tiny scan compared with the twin);
* ``python``: :mod:`softdirty._scanner_py`, used when the library is missing
  or unusable.

``SOFTDIRTY_SCANNER=python|c`` forces one (``c`` raises
:class:`~softdirty.errors.Unsupported` when it cannot be loaded);
``SOFTDIRTY_SCANNER_LIB`` loads the library from another path.
:func:`active_scanner` says which one runs and why.

Ranges are flat ``array('Q')`` triples ``[start0, end0, key0, start1, ...]``
(``end`` exclusive): never a Python object per page.
"""

from __future__ import annotations

import ctypes
import errno
import os
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from softdirty import _scanner_py
from softdirty.errors import Unsupported
from softdirty.pagemap import ENTRY_SIZE, PAGE_SHIFT, PAGE_SIZE, PAGEMAP_SCAN, PM_SCAN_ARG_FIELDS, U64_MASK

__all__ = [
    "DEFAULT_VEC_LEN",
    "DEFAULT_WINDOW_PAGES",
    "CScanner",
    "PythonScanner",
    "ScanRegions",
    "ScanResult",
    "Scanner",
    "ScannerInfo",
    "active_scanner",
    "implementation",
    "iter_triples",
    "pagemap_scan",
    "pagemap_scan_ioctl",
    "pagemap_scan_loop",
    "scan_entries",
    "scan_fd",
    "scan_reader",
]

DEFAULT_WINDOW_PAGES = 65536  # entries per read: 512 KiB (the kernel's page-types uses 64 Ki too)
MAX_WINDOW_PAGES = 1 << 20
DEFAULT_VEC_LEN = 4096  # page_regions per PAGEMAP_SCAN call: 96 KiB
MAX_VEC_LEN = 1 << 22
_OUT_CAPACITY = 16384  # C side: triples per output buffer before it is drained into the result
_ABI_VERSION = 2  # must match SD_ABI_VERSION in csrc/scanner.h
_SCAN_DONE, _SCAN_OUT_FULL, _SCAN_EOF = 0, 1, 2


@dataclass(frozen=True, slots=True)
class ScannerInfo:
    """Which implementation runs (``"c"`` or ``"python"``), why, and the library path."""

    name: str
    reason: str
    path: str | None = None


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a pagemap scan found.

    ``complete`` is False when the data ended before ``end``: the address
    space ended or the target's mm is gone; ``stopped_at`` then says where
    (it is ``end`` when complete).
    """

    ranges: array[int]  # flat (start, end, key) triples
    pages_matched: int
    entries_read: int
    complete: bool
    stopped_at: int


@dataclass(frozen=True, slots=True)
class ScanRegions:
    """What a looped PAGEMAP_SCAN found: region triples, where the walk stopped, ioctls made."""

    ranges: array[int]  # flat (start, end, categories) triples
    walk_end: int
    calls: int


def iter_triples(ranges: array[int]) -> Iterator[tuple[int, int, int]]:
    """``(start, end, key)`` tuples of a flat triple array (for display and tests)."""
    for i in range(0, len(ranges) - 2, 3):
        yield ranges[i], ranges[i + 1], ranges[i + 2]


# -- argument checks (shared by both implementations) ---------------------------


def _u64(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= U64_MASK:
        raise ValueError(f"{name} must fit in 64 unsigned bits, got {value:#x}")
    return value


def _addr(name: str, value: object) -> int:
    value = _u64(name, value)
    if value % PAGE_SIZE:
        raise ValueError(f"{name} {value:#x} is not a multiple of the page size ({PAGE_SIZE})")
    return value


def _range(start: object, end: object) -> tuple[int, int]:
    s, e = _addr("start", start), _addr("end", end)
    if e < s:
        raise ValueError(f"end {e:#x} is below start {s:#x}")
    return s, e


def _fd(fd: object) -> int:
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"fd must be an int file descriptor, not {type(fd).__name__}")
    if fd < 0:
        raise ValueError(f"fd must be a non-negative file descriptor, got {fd}")
    return fd


def _bounded(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def _masks(match_mask: object, match_value: object, return_mask: object) -> tuple[int, int, int]:
    mm, mv, rm = _u64("match_mask", match_mask), _u64("match_value", match_value), _u64("return_mask", return_mask)
    if mv & ~mm:
        raise ValueError(f"match_value {mv:#x} has bits outside match_mask {mm:#x}: nothing could match")
    return mm, mv, rm


def _byte_view(buf: object) -> memoryview:
    try:
        view = memoryview(buf)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"entries must be a bytes-like buffer, not {type(buf).__name__}") from None
    if not view.c_contiguous:
        raise ValueError("entries must be a contiguous buffer")
    view = view.cast("B")
    if len(view) % ENTRY_SIZE:
        raise ValueError(f"entries are {ENTRY_SIZE} bytes each; got {len(view)} bytes")
    return view


class _ScanArgs:
    __slots__ = ("flags", "inverted", "mask", "anyof", "return_mask", "max_pages", "vec_len")

    def __init__(self, flags: object, inverted: object, mask: object, anyof: object, return_mask: object,
                 max_pages: object, vec_len: object) -> None:
        self.flags = _u64("flags", flags)
        self.inverted = _u64("category_inverted", inverted)
        self.mask = _u64("category_mask", mask)
        self.anyof = _u64("category_anyof_mask", anyof)
        self.return_mask = _u64("return_mask", return_mask)
        self.max_pages = _u64("max_pages", max_pages)
        self.vec_len = _bounded("vec_len", vec_len, 0, MAX_VEC_LEN)


# -- the generic loops ---------------------------------------------------------------


class _Coalescer(Protocol):
    @property
    def entries_seen(self) -> int: ...

    @property
    def pages_matched(self) -> int: ...

    def feed(self, data: bytes, addr: int) -> None: ...

    def finish(self) -> array[int]: ...


def _read_loop(read: Callable[[int, int], bytes], start: int, end: int, co: _Coalescer, window: int) -> ScanResult:
    """Windows of ``read(offset, count)`` fed in order; short reads continue, 0 bytes ends the data."""
    addr = start
    complete = True
    while addr < end:
        want = min(window, (end - addr) >> PAGE_SHIFT) * ENTRY_SIZE
        data = read((addr >> PAGE_SHIFT) * ENTRY_SIZE, want)
        if not isinstance(data, bytes):
            data = bytes(data)
        got = len(data)
        if got == 0:
            complete = False
            break
        if got > want:
            raise ValueError(f"read returned {got} bytes, more than the {want} asked for")
        usable = got - got % ENTRY_SIZE
        if usable == 0:
            raise OSError(errno.EIO, f"pagemap read returned {got} bytes: not a whole entry")
        co.feed(data if usable == got else data[:usable], addr)
        addr += (usable // ENTRY_SIZE) << PAGE_SHIFT
    return ScanResult(co.finish(), co.pages_matched, co.entries_seen, complete, addr)


IoctlOnce = Callable[..., "tuple[array[int], int]"]  # a string: array is not subscriptable before 3.12


def _scan_loop(ioctl_once: IoctlOnce, start: int, end: int, a: _ScanArgs) -> ScanRegions:
    def call(pos: int, max_pages: int, vec_len: int) -> tuple[array[int], int]:
        return ioctl_once(pos, end, flags=a.flags, category_inverted=a.inverted, category_mask=a.mask,
                          category_anyof_mask=a.anyof, return_mask=a.return_mask, max_pages=max_pages,
                          vec_len=vec_len)

    if a.vec_len == 0:  # no output vector: one call (e.g. write-protect all)
        regions, walk_end = call(start, a.max_pages, 0)
        return ScanRegions(array("Q"), walk_end, 1)
    out: array[int] = array("Q")
    pos, calls, pages = start, 0, 0
    while pos < end and not (a.max_pages and pages >= a.max_pages):
        regions, walk_end = call(pos, a.max_pages - pages if a.max_pages else 0, a.vec_len)
        calls += 1
        if a.max_pages:
            pages += sum((regions[i + 1] - regions[i]) >> PAGE_SHIFT for i in range(0, len(regions), 3))
        if regions and out and regions[0] == out[-2] and regions[2] == out[-1]:
            out[-2] = regions[1]  # the batch continues our last region
            out.extend(regions[3:])
        else:
            out.extend(regions)
        if walk_end <= pos:  # no progress (a huge page that max_pages cut)
            break
        pos = walk_end
    return ScanRegions(out, pos, calls)


# -- implementations -------------------------------------------------------------------


class Scanner:
    """One implementation; the module-level functions call the active one."""

    name = ""

    def _coalescer(self, match_mask: int, match_value: int, return_mask: int) -> _Coalescer:
        raise NotImplementedError

    def _feed_buffer(self, co: _Coalescer, view: memoryview, start_addr: int) -> None:
        step = DEFAULT_WINDOW_PAGES * ENTRY_SIZE
        for off in range(0, len(view), step):
            co.feed(bytes(view[off:off + step]), start_addr + (off // ENTRY_SIZE << PAGE_SHIFT))

    def _scan_fd(self, fd: int, start: int, end: int, mm: int, mv: int, rm: int, window: int) -> ScanResult:
        def read(offset: int, count: int) -> bytes:
            return os.pread(fd, count, offset)  # retries EINTR itself (PEP 475)

        return _read_loop(read, start, end, self._coalescer(mm, mv, rm), window)

    def _ioctl(self, fd: int, start: int, end: int, a: _ScanArgs) -> tuple[array[int], int]:
        return _scanner_py.pagemap_scan_ioctl(fd, start, end, a.flags, a.inverted, a.mask, a.anyof, a.return_mask,
                                              a.max_pages, a.vec_len)

    def _pagemap_scan(self, fd: int, start: int, end: int, a: _ScanArgs) -> ScanRegions:
        def once(s: int, e: int, *, flags: int, category_inverted: int, category_mask: int,
                 category_anyof_mask: int, return_mask: int, max_pages: int, vec_len: int) -> tuple[array[int], int]:
            return _scanner_py.pagemap_scan_ioctl(fd, s, e, flags, category_inverted, category_mask,
                                                  category_anyof_mask, return_mask, max_pages, vec_len)

        return _scan_loop(once, start, end, a)

    # -- public API (validated) --

    def scan_entries(self, buf: object, start_addr: int, *, match_mask: int, match_value: int,
                     return_mask: int = 0) -> array[int]:
        view = _byte_view(buf)
        start = _addr("start_addr", start_addr)
        mm, mv, rm = _masks(match_mask, match_value, return_mask)
        if start + (len(view) // ENTRY_SIZE << PAGE_SHIFT) > U64_MASK:
            raise ValueError(f"{len(view) // ENTRY_SIZE} pages from {start:#x} run past the 64-bit address space")
        co = self._coalescer(mm, mv, rm)
        self._feed_buffer(co, view, start)
        return co.finish()

    def scan_reader(self, read: Callable[[int, int], bytes], start: int, end: int, *, match_mask: int,
                    match_value: int, return_mask: int = 0, window_pages: int = DEFAULT_WINDOW_PAGES) -> ScanResult:
        if not callable(read):
            raise TypeError(f"read must be a callable read(offset, count) -> bytes, not {type(read).__name__}")
        s, e = _range(start, end)
        mm, mv, rm = _masks(match_mask, match_value, return_mask)
        window = _bounded("window_pages", window_pages, 1, MAX_WINDOW_PAGES)
        return _read_loop(read, s, e, self._coalescer(mm, mv, rm), window)

    def scan_fd(self, fd: int, start: int, end: int, *, match_mask: int, match_value: int, return_mask: int = 0,
                window_pages: int = DEFAULT_WINDOW_PAGES) -> ScanResult:
        f = _fd(fd)
        s, e = _range(start, end)
        mm, mv, rm = _masks(match_mask, match_value, return_mask)
        window = _bounded("window_pages", window_pages, 1, MAX_WINDOW_PAGES)
        return self._scan_fd(f, s, e, mm, mv, rm, window)

    def pagemap_scan_ioctl(self, fd: int, start: int, end: int, *, flags: int = 0, category_inverted: int = 0,
                           category_mask: int = 0, category_anyof_mask: int = 0, return_mask: int = 0,
                           max_pages: int = 0, vec_len: int = DEFAULT_VEC_LEN) -> tuple[array[int], int]:
        f = _fd(fd)
        s, e = _range(start, end)
        a = _ScanArgs(flags, category_inverted, category_mask, category_anyof_mask, return_mask, max_pages, vec_len)
        return self._ioctl(f, s, e, a)

    def pagemap_scan(self, fd: int, start: int, end: int, *, flags: int = 0, category_inverted: int = 0,
                     category_mask: int = 0, category_anyof_mask: int = 0, return_mask: int = 0, max_pages: int = 0,
                     vec_len: int = DEFAULT_VEC_LEN) -> ScanRegions:
        f = _fd(fd)
        s, e = _range(start, end)
        a = _ScanArgs(flags, category_inverted, category_mask, category_anyof_mask, return_mask, max_pages, vec_len)
        return self._pagemap_scan(f, s, e, a)

    def normalize_disjoint(self, triples: array[int]) -> array[int] | None:
        """DirtySet's normalisation of ``array('Q')`` triples that do not overlap, or None: the caller's
        general path then does it (this implementation has no fast one, ranges overlap or one is bad)."""
        return None


class PythonScanner(Scanner):
    """The pure-Python fallback (:mod:`softdirty._scanner_py`)."""

    name = "python"

    def _coalescer(self, match_mask: int, match_value: int, return_mask: int) -> _Coalescer:
        return _scanner_py.PyCoalescer(match_mask, match_value, return_mask)


class _State(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "run_start", "run_end", "run_key", "run_open", "entries_seen", "pages_matched", "ranges_emitted", "out_len")]


class _FdResult(ctypes.Structure):
    _fields_ = [("stopped_at", ctypes.c_uint64), ("status", ctypes.c_uint64), ("reads", ctypes.c_uint64)]


def _oserror(code: int, what: str) -> OSError:
    return OSError(code, f"{what}: {os.strerror(code)}")


_ZERO = array("Q", [0])


def _zeros(n: int) -> array[int]:
    """``n`` zeroed u64s; repeating one array is ~100x cheaper than array(bytes(...))."""
    return _ZERO * n


class _CCoalescer:
    def __init__(self, lib: ctypes.CDLL, mm: int, mv: int, rm: int, capacity: int,
                 out: array[int] | None = None) -> None:
        self._lib, self._mm, self._mv, self._rm = lib, mm, mv, rm
        self.state = _State()
        self.capacity = capacity
        self.out = _zeros(3 * capacity) if out is None else out
        self.out_ptr = self.out.buffer_info()[0]
        self.result: array[int] = array("Q")

    @property
    def entries_seen(self) -> int:
        return int(self.state.entries_seen)

    @property
    def pages_matched(self) -> int:
        return int(self.state.pages_matched)

    def drain(self) -> None:
        k = self.state.out_len
        if k:
            self.result.frombytes(memoryview(self.out).cast("B")[:3 * ENTRY_SIZE * k])
            self.state.out_len = 0

    def feed_ptr(self, ptr: int, n: int, addr: int) -> None:
        done = 0
        while done < n:
            used = self._lib.sd_scan_buffer(ptr + done * ENTRY_SIZE, n - done, addr + (done << PAGE_SHIFT), self._mm,
                                            self._mv, self._rm, self.out_ptr, self.capacity, ctypes.byref(self.state))
            if used < 0:
                raise _oserror(-used, "sd_scan_buffer")
            done += used
            if done < n:
                self.drain()

    def feed(self, data: bytes, addr: int) -> None:
        ptr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0  # bytes' own storage, no copy
        self.feed_ptr(ptr, len(data) // ENTRY_SIZE, addr)

    def finish(self) -> array[int]:
        while self._lib.sd_scan_flush(ctypes.byref(self.state), self.out_ptr, self.capacity) == -errno.ENOSPC:
            self.drain()
        self.drain()
        return self.result


class CScanner(Scanner):
    """The C library.  ``out_capacity`` (triples per output buffer) is a knob for tests."""

    name = "c"

    def __init__(self, lib: ctypes.CDLL, out_capacity: int = _OUT_CAPACITY) -> None:
        self._lib = lib
        self._capacity = _bounded("out_capacity", out_capacity, 1, 1 << 24)
        # Output buffers (3 * capacity u64, 384 KiB by default) of finished calls, reused: allocating
        # and faulting one in at every call cost more than a small harvest's own system calls.
        # list.pop/append are atomic: threads sharing the scanner never share a buffer.
        self._spare: list[array[int]] = []

    def _take(self) -> array[int]:
        try:
            return self._spare.pop()
        except IndexError:
            return _zeros(3 * self._capacity)

    def _give(self, buf: array[int]) -> None:
        if len(self._spare) < 2:
            self._spare.append(buf)

    @property
    def lib(self) -> ctypes.CDLL:
        """The loaded library (tests drive ``sd_test_set_ioctl_hook`` through it)."""
        return self._lib

    def with_capacity(self, out_capacity: int) -> CScanner:
        """The same library with another output buffer size (tiny ones exercise resuming)."""
        return CScanner(self._lib, out_capacity)

    def _coalescer(self, match_mask: int, match_value: int, return_mask: int) -> _CCoalescer:
        return _CCoalescer(self._lib, match_mask, match_value, return_mask, self._capacity)

    def normalize_disjoint(self, triples: array[int]) -> array[int] | None:
        n = len(triples)
        if n % 3 or triples.typecode != "Q":
            return None
        out = array("Q", triples)
        if not n:
            return out
        k = self._lib.sd_normalize(out.buffer_info()[0], n // 3)
        if k < 0:
            return None
        del out[3 * k:]
        return out

    def _feed_buffer(self, co: _Coalescer, view: memoryview, start_addr: int) -> None:
        assert isinstance(co, _CCoalescer)
        keep: object
        if isinstance(view.obj, bytes) and len(view) == len(view.obj):
            keep = view.obj
            ptr = ctypes.cast(ctypes.c_char_p(view.obj), ctypes.c_void_p).value or 0
        elif not view.readonly and len(view):
            keep = (ctypes.c_char * len(view)).from_buffer(view)
            ptr = ctypes.addressof(keep)
        else:  # read-only and not a whole bytes object: one memcpy
            copy = view.tobytes()
            keep = copy
            ptr = ctypes.cast(ctypes.c_char_p(copy), ctypes.c_void_p).value or 0
        co.feed_ptr(ptr, len(view) // ENTRY_SIZE, start_addr)
        del keep

    def _scan_fd(self, fd: int, start: int, end: int, mm: int, mv: int, rm: int, window: int) -> ScanResult:
        co = _CCoalescer(self._lib, mm, mv, rm, self._capacity, self._take())
        res = _FdResult()
        pos = start
        while True:
            r = self._lib.sd_scan_fd(fd, pos, end, mm, mv, rm, window, co.out_ptr, co.capacity,
                                     ctypes.byref(co.state), ctypes.byref(res))
            if r < 0:
                raise _oserror(-r, "reading pagemap")
            co.drain()
            if res.status != _SCAN_OUT_FULL:
                break
            pos = res.stopped_at
        self._give(co.out)  # drained: what it held is in co.result
        return ScanResult(co.result, co.pages_matched, co.entries_seen, res.status == _SCAN_DONE, int(res.stopped_at))

    def _ioctl(self, fd: int, start: int, end: int, a: _ScanArgs) -> tuple[array[int], int]:
        vec = _zeros(3 * a.vec_len)
        walk_end = ctypes.c_uint64(0)
        r = self._lib.sd_pagemap_scan_once(fd, start, end, a.flags, a.inverted, a.mask, a.anyof, a.return_mask,
                                           a.max_pages, vec.buffer_info()[0] if a.vec_len else None, a.vec_len,
                                           ctypes.byref(walk_end))
        if r < 0:
            raise _oserror(-r, "PAGEMAP_SCAN")
        del vec[3 * r:]
        return vec, int(walk_end.value)

    def _pagemap_scan(self, fd: int, start: int, end: int, a: _ScanArgs) -> ScanRegions:
        walk_end, calls = ctypes.c_uint64(start), ctypes.c_uint64(0)
        if a.vec_len == 0:
            r = self._lib.sd_pagemap_scan(fd, start, end, a.flags, a.inverted, a.mask, a.anyof, a.return_mask,
                                          a.max_pages, 0, None, 0, ctypes.byref(walk_end), ctypes.byref(calls))
            if r < 0:
                raise _oserror(-r, "PAGEMAP_SCAN")
            return ScanRegions(array("Q"), int(walk_end.value), int(calls.value))
        cap = self._capacity
        out = self._take()
        out_ptr = out.buffer_info()[0]
        result: array[int] = array("Q")
        pos, total_calls, pages = start, 0, 0
        while True:
            remaining = a.max_pages - pages if a.max_pages else 0
            r = self._lib.sd_pagemap_scan(fd, pos, end, a.flags, a.inverted, a.mask, a.anyof, a.return_mask,
                                          remaining, a.vec_len, out_ptr, cap, ctypes.byref(walk_end),
                                          ctypes.byref(calls))
            total_calls += calls.value
            if r < 0:
                raise _oserror(-r, "PAGEMAP_SCAN")
            got = out[:3 * r]
            if a.max_pages:
                pages += sum((got[i + 1] - got[i]) >> PAGE_SHIFT for i in range(0, len(got), 3))
            if not result:
                result = got  # a copy already
            elif got and got[0] == result[-2] and got[2] == result[-1]:
                result[-2] = got[1]  # out was full last time: the walk continued our last region
                result.extend(got[3:])
            else:
                result.extend(got)
            pos = int(walk_end.value)
            # Only a full buffer makes the C loop return early; anything else is final.
            if r < cap or pos >= end or (a.max_pages and pages >= a.max_pages):
                break
        self._give(out)  # what it held is copied into result
        return ScanRegions(result, pos, total_calls)


# -- loading and choosing ----------------------------------------------------------------

_u64t, _i64t, _vp = ctypes.c_uint64, ctypes.c_int64, ctypes.c_void_p
_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "sd_abi_version": (_i64t, []),
    "sd_build_id": (ctypes.c_char_p, []),
    "sd_pagemap_scan_cmd": (_u64t, []),
    "sd_scan_buffer": (_i64t, [_vp, _u64t, _u64t, _u64t, _u64t, _u64t, _vp, _u64t, _vp]),
    "sd_scan_flush": (_i64t, [_vp, _vp, _u64t]),
    "sd_scan_fd": (_i64t, [ctypes.c_int, _u64t, _u64t, _u64t, _u64t, _u64t, _u64t, _vp, _u64t, _vp, _vp]),
    "sd_pagemap_scan_once": (_i64t, [ctypes.c_int, *[_u64t] * 8, _vp, _u64t, _vp]),
    "sd_pagemap_scan": (_i64t, [ctypes.c_int, *[_u64t] * 9, _vp, _u64t, _vp, _vp]),
    "sd_normalize": (_i64t, [_vp, _u64t]),
    "sd_test_set_ioctl_hook": (None, [_vp]),
}
# int64_t hook(int fd, struct sd_pm_scan_arg *arg): regions or -errno (tests only).
IOCTL_HOOK = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64 * len(PM_SCAN_ARG_FIELDS)))


def library_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the C library is looked for (``SOFTDIRTY_SCANNER_LIB`` overrides)."""
    from softdirty import _build  # lazily: `python -m softdirty._build` must not find it imported

    env = os.environ if env is None else env
    override = env.get("SOFTDIRTY_SCANNER_LIB")
    return Path(override) if override else Path(__file__).with_name(_build.LIB_NAME)


def _self_check(scanner: CScanner) -> str | None:
    """A tiny scan with a known answer (catches a wrong ABI that still links)."""
    present, excl = 1 << 63, 1 << 56
    entries = [present, present, 0, present | excl, present | excl, 1 << 62, present | 5, present | 5]
    got = scanner.scan_entries(array("Q", entries).tobytes(), 0x10000, match_mask=present, match_value=present,
                               return_mask=excl | 7)
    want = array("Q", [0x10000, 0x12000, 0, 0x13000, 0x15000, excl, 0x16000, 0x18000, 5])
    if got != want:
        return f"self-check failed: got {list(got)}, expected {list(want)}"
    return None


def _load_c(path: Path) -> tuple[CScanner | None, str]:
    from softdirty import _build

    if not path.exists():
        return None, (f"{path} does not exist "
                      "(installed without a C compiler? in a checkout: python -m softdirty._build)")
    try:
        lib = ctypes.CDLL(str(path))
        for fname, (restype, argtypes) in _PROTOTYPES.items():
            func = getattr(lib, fname)
            func.restype = restype
            func.argtypes = argtypes
    except (OSError, AttributeError) as exc:
        return None, f"cannot load {path}: {exc}"
    abi = lib.sd_abi_version()
    if abi != _ABI_VERSION:
        return None, f"{path} has ABI version {abi}, this softdirty needs {_ABI_VERSION}: rebuild it"
    cmd = lib.sd_pagemap_scan_cmd()
    if cmd != PAGEMAP_SCAN:
        return None, f"{path} was built from another pagemap_abi.h (PAGEMAP_SCAN {cmd:#x}): rebuild it"
    build_id = (lib.sd_build_id() or b"").decode("ascii", "replace")
    sources = _build.source_hash(Path(__file__).resolve().parent.parent)
    if sources is not None and build_id != sources:
        return None, (f"{path} is stale: built from sources {build_id}, csrc/ is now {sources} "
                      "(rebuild: python -m softdirty._build)")
    scanner = CScanner(lib)
    failure = _self_check(scanner)
    if failure is not None:
        return None, f"{path}: {failure}"
    return scanner, f"C scanner {path} (build {build_id})"


def _choose(env: Mapping[str, str] | None = None) -> tuple[Scanner, ScannerInfo]:
    env = os.environ if env is None else env
    want = env.get("SOFTDIRTY_SCANNER", "").strip().lower() or "auto"
    if want not in ("auto", "c", "python"):
        raise ValueError(f"SOFTDIRTY_SCANNER must be 'c' or 'python' (or unset), not {want!r}")
    if want == "python":
        return PythonScanner(), ScannerInfo("python", "pure-Python scanner forced by SOFTDIRTY_SCANNER=python")
    path = library_path(env)
    scanner, why = _load_c(path)
    if scanner is not None:
        forced = " (forced by SOFTDIRTY_SCANNER=c)" if want == "c" else ""
        return scanner, ScannerInfo("c", why + forced, str(path))
    if want == "c":
        raise Unsupported("the C scanner (SOFTDIRTY_SCANNER=c)", why)
    return PythonScanner(), ScannerInfo("python", f"pure-Python fallback: {why}")


_active_pair: tuple[Scanner, ScannerInfo] | None = None


def _active() -> Scanner:
    global _active_pair
    if _active_pair is None:
        _active_pair = _choose()
    return _active_pair[0]


def active_scanner() -> ScannerInfo:
    """Which implementation the functions of this module use, and why (chosen once per process)."""
    _active()
    assert _active_pair is not None
    return _active_pair[1]


def implementation(name: str) -> Scanner:
    """A specific implementation (``"c"`` or ``"python"``), e.g. to compare them; ``c`` may raise Unsupported."""
    if name == "python":
        return PythonScanner()
    if name == "c":
        scanner, why = _load_c(library_path())
        if scanner is None:
            raise Unsupported("the C scanner", why)
        return scanner
    raise ValueError(f"scanner implementation must be 'c' or 'python', not {name!r}")


# -- the public functions ---------------------------------------------------------------


def scan_entries(buf: object, start_addr: int, *, match_mask: int, match_value: int,
                 return_mask: int = 0) -> array[int]:
    """Coalesce a buffer of packed entries (page ``start_addr`` first) into flat ``(start, end, key)`` triples.

    An entry matches if ``entry & match_mask == match_value``; consecutive
    matching pages with equal ``entry & return_mask`` form one range.
    """
    return _active().scan_entries(buf, start_addr, match_mask=match_mask, match_value=match_value,
                                  return_mask=return_mask)


def scan_reader(read: Callable[[int, int], bytes], start: int, end: int, *, match_mask: int, match_value: int,
                return_mask: int = 0, window_pages: int = DEFAULT_WINDOW_PAGES) -> ScanResult:
    """Scan ``[start, end)`` through ``read(offset_bytes, count_bytes) -> bytes`` (a back end without an fd)."""
    return _active().scan_reader(read, start, end, match_mask=match_mask, match_value=match_value,
                                 return_mask=return_mask, window_pages=window_pages)


def scan_fd(fd: int, start: int, end: int, *, match_mask: int, match_value: int, return_mask: int = 0,
            window_pages: int = DEFAULT_WINDOW_PAGES) -> ScanResult:
    """Scan ``[start, end)`` of a pagemap fd with pread windows (OSError carries the errno)."""
    return _active().scan_fd(fd, start, end, match_mask=match_mask, match_value=match_value,
                             return_mask=return_mask, window_pages=window_pages)


def pagemap_scan_ioctl(fd: int, start: int, end: int, *, flags: int = 0, category_inverted: int = 0,
                       category_mask: int = 0, category_anyof_mask: int = 0, return_mask: int = 0,
                       max_pages: int = 0, vec_len: int = DEFAULT_VEC_LEN) -> tuple[array[int], int]:
    """ONE PAGEMAP_SCAN ioctl: (flat ``(start, end, categories)`` triples, walk_end); OSError with the errno."""
    return _active().pagemap_scan_ioctl(fd, start, end, flags=flags, category_inverted=category_inverted,
                                        category_mask=category_mask, category_anyof_mask=category_anyof_mask,
                                        return_mask=return_mask, max_pages=max_pages, vec_len=vec_len)


def pagemap_scan(fd: int, start: int, end: int, *, flags: int = 0, category_inverted: int = 0,
                 category_mask: int = 0, category_anyof_mask: int = 0, return_mask: int = 0, max_pages: int = 0,
                 vec_len: int = DEFAULT_VEC_LEN) -> ScanRegions:
    """PAGEMAP_SCAN looped over ``[start, end)`` in batches of ``vec_len`` regions, merged at batch edges.

    Stops at ``end`` or after ``max_pages`` pages (0: no limit); ``walk_end``
    says where (``< end`` only when max_pages cut the walk).
    """
    return _active().pagemap_scan(fd, start, end, flags=flags, category_inverted=category_inverted,
                                  category_mask=category_mask, category_anyof_mask=category_anyof_mask,
                                  return_mask=return_mask, max_pages=max_pages, vec_len=vec_len)


def normalize_disjoint(triples: array[int]) -> array[int] | None:
    """:func:`softdirty.dirtyset.normalize` of ``array('Q')`` triples that do not overlap, by the C library;
    None when it cannot (the pure-Python scanner, overlapping or bad ranges): use the general path."""
    return _active().normalize_disjoint(triples)


def pagemap_scan_loop(ioctl_once: IoctlOnce, start: int, end: int, *, flags: int = 0, category_inverted: int = 0,
                      category_mask: int = 0, category_anyof_mask: int = 0, return_mask: int = 0,
                      max_pages: int = 0, vec_len: int = DEFAULT_VEC_LEN) -> ScanRegions:
    """:func:`pagemap_scan` over any ``ioctl_once(start, end, *, flags=..., ..., vec_len=...)``
    with the signature of :func:`pagemap_scan_ioctl` minus the fd (e.g. the emulator's)."""
    if not callable(ioctl_once):
        raise TypeError(f"ioctl_once must be callable, not {type(ioctl_once).__name__}")
    s, e = _range(start, end)
    a = _ScanArgs(flags, category_inverted, category_mask, category_anyof_mask, return_mask, max_pages, vec_len)
    return _scan_loop(ioctl_once, s, e, a)
