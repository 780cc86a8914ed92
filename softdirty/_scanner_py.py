"""The pure-Python twin of ``csrc/scanner.c`` (used when the C library is absent).

No Python object per page: a window of entries is split into its byte lanes
(``data[j::8]``), each lane goes through one ``bytes.translate`` table that
applies the masks, lanes are combined as big integers, and runs are found by
a regular expression over a one-byte-per-entry class string.  Python code
then runs once per *range*, not per entry.  Callers validate arguments.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys
from array import array

from softdirty.pagemap import PAGE_REGION_SIZE, PAGE_SHIFT, PAGEMAP_SCAN, PM_SCAN_ARG_FIELDS, PM_SCAN_ARG_SIZE

# Class string: 0 = entry does not match, 1 = matches with the same key as
# the previous entry, 2 = matches with a new key.  A run is one 1-or-2 then 1s.
_RUN = re.compile(rb"[\x01\x02]\x01*")


def _lane_offset(byte_index: int) -> int:
    """Byte offset inside a native u64 of its bits 8*byte_index .. 8*byte_index+7."""
    return byte_index if sys.byteorder == "little" else 7 - byte_index


def _fold(x: int, ones: int) -> int:
    """Per byte of ``x``: 1 if the byte is nonzero, else 0 (right shifts never mix bytes into bit 0)."""
    x |= x >> 4
    x |= x >> 2
    x |= x >> 1
    return x & ones


class PyCoalescer:
    """Coalesce windows of entries fed in address order; same contract as ``sd_scan_buffer``.

    Per window, each byte lane the masks touch becomes one big integer
    (``int.from_bytes(data[j::8])``, one byte per entry); masks repeated n
    times turn matching and key comparison into a few whole-window integer
    operations, and the resulting class string is split into runs by a regex.
    """

    __slots__ = (
        "_match_spec",
        "_single_lane",
        "_key_spec",
        "_return_mask",
        "_consts",
        "_open",
        "_start",
        "_end",
        "_key",
        "out",
        "entries_seen",
        "pages_matched",
    )

    def __init__(self, match_mask: int, match_value: int, return_mask: int) -> None:
        match_spec: list[tuple[int, int, int]] = []
        key_spec: list[tuple[int, int]] = []
        for j in range(8):
            m, v, r = (match_mask >> 8 * j) & 0xFF, (match_value >> 8 * j) & 0xFF, (return_mask >> 8 * j) & 0xFF
            if m:
                match_spec.append((_lane_offset(j), m, v))
            if r:
                key_spec.append((_lane_offset(j), r))
        self._match_spec = tuple(match_spec)
        self._key_spec = tuple(key_spec)
        # One match lane and no key (e.g. PRESENT alone): a translate table gives the class string directly.
        self._single_lane: tuple[int, bytes] | None = None
        if len(match_spec) == 1:
            off, m, v = match_spec[0]
            self._single_lane = (off, bytes(int((x & m) == v) for x in range(256)))
        self._return_mask = return_mask
        self._consts: tuple[int, int, tuple[tuple[int, int, int], ...], tuple[tuple[int, int], ...]] | None = None
        self._open = False
        self._start = self._end = self._key = 0
        self.out: array[int] = array("Q")
        self.entries_seen = 0
        self.pages_matched = 0

    def _close(self) -> None:
        if self._open:
            self.out.extend((self._start, self._end, self._key))
            self._open = False

    def _window_consts(
        self, n: int
    ) -> tuple[int, int, tuple[tuple[int, int, int], ...], tuple[tuple[int, int], ...]]:
        consts = self._consts
        if consts is None or consts[0] != n:  # windows have one size but the last: cache per size
            ones = int.from_bytes(b"\x01" * n, "little")  # 0x0101...01: times m repeats byte m n times
            consts = self._consts = (
                n,
                ones,
                tuple((off, ones * m, ones * v) for off, m, v in self._match_spec),
                tuple((off, ones * r) for off, r in self._key_spec),
            )
        return consts

    def feed(self, data: bytes, addr: int) -> None:
        """Entries for pages ``addr, addr + 4 KiB, ...``; ``len(data)`` is a multiple of 8."""
        n = len(data) >> 3
        if n == 0:
            return
        self.entries_seen += n
        classes: bytes  # one byte per entry: 0 no match, 1 same key as before, 2 new key
        if not self._key_spec:
            if self._single_lane is not None:
                off, table = self._single_lane
                classes = data[off::8].translate(table)
                if 1 not in classes:  # memchr
                    self._close()
                    return
            elif not self._match_spec:  # everything matches, one key: the whole window is one run
                self.pages_matched += n
                self._extend(addr, addr + (n << PAGE_SHIFT), 0)
                return
            else:
                _, ones, mspec, _ = self._window_consts(n)
                mism = 0
                for off, mrep, vrep in mspec:
                    mism |= (int.from_bytes(data[off::8], "little") & mrep) ^ vrep
                mi = ones ^ _fold(mism, ones)
                if not mi:
                    self._close()
                    return
                classes = mi.to_bytes(n, "little")
        else:
            _, ones, mspec, kspec = self._window_consts(n)
            lanes: dict[int, int] = {}
            for off in {off for off, _, _ in mspec} | {off for off, _ in kspec}:
                lanes[off] = int.from_bytes(data[off::8], "little")
            mi = ones
            if mspec:
                mism = 0
                for off, mrep, vrep in mspec:
                    mism |= (lanes[off] & mrep) ^ vrep
                mi ^= _fold(mism, ones)
                if not mi:
                    self._close()
                    return
            change = 0
            for off, rrep in kspec:
                k = lanes[off] & rrep
                change |= k ^ (k << 8)  # byte i nonzero iff entry i's key byte differs from entry i-1's
            classes = (mi + (mi & _fold(change, ones))).to_bytes(n, "little")  # bytes stay <= 2: no carries

        q = memoryview(data).cast("Q")
        rmask = self._return_mask
        out = self.out
        matched = 0
        is_open, rs, rend, rk = self._open, self._start, self._end, self._key
        for mo in _RUN.finditer(classes):
            s, e = mo.span()
            matched += e - s
            a = addr + (s << PAGE_SHIFT)
            key = q[s] & rmask
            if is_open:
                if a == rend and key == rk:
                    rend = addr + (e << PAGE_SHIFT)
                    continue
                out.extend((rs, rend, rk))
            is_open, rs, rend, rk = True, a, addr + (e << PAGE_SHIFT), key
        self._open, self._start, self._end, self._key = is_open, rs, rend, rk
        self.pages_matched += matched

    def _extend(self, start: int, end: int, key: int) -> None:
        if self._open and self._end == start and self._key == key:
            self._end = end
            return
        self._close()
        self._open, self._start, self._end, self._key = True, start, end, key

    def finish(self) -> array[int]:
        self._close()
        return self.out


# -- PAGEMAP_SCAN through libc.ioctl ------------------------------------------------

_WALK_END = PM_SCAN_ARG_FIELDS.index("walk_end")
_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:  # not glibc: let ctypes find it
            lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        lib.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        lib.ioctl.restype = ctypes.c_int
        _libc = lib
    return _libc


def pagemap_scan_ioctl(
    fd: int,
    start: int,
    end: int,
    flags: int,
    category_inverted: int,
    category_mask: int,
    category_anyof_mask: int,
    return_mask: int,
    max_pages: int,
    vec_len: int,
) -> tuple[array[int], int]:
    """One PAGEMAP_SCAN; (flat region triples, walk_end) or OSError with the kernel's errno."""
    vec = (ctypes.c_uint64 * (3 * vec_len))() if vec_len else None
    values = {
        "size": PM_SCAN_ARG_SIZE,
        "flags": flags,
        "start": start,
        "end": end,
        "vec": ctypes.addressof(vec) if vec is not None else 0,
        "vec_len": vec_len,
        "max_pages": max_pages,
        "category_inverted": category_inverted,
        "category_mask": category_mask,
        "category_anyof_mask": category_anyof_mask,
        "return_mask": return_mask,
    }
    arg = (ctypes.c_uint64 * len(PM_SCAN_ARG_FIELDS))(*(values.get(name, 0) for name in PM_SCAN_ARG_FIELDS))
    ret = _get_libc().ioctl(fd, PAGEMAP_SCAN, ctypes.addressof(arg))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PAGEMAP_SCAN: {os.strerror(err)}")
    regions: array[int] = array("Q")
    if ret and vec is not None:
        regions.frombytes(ctypes.string_at(vec, ret * PAGE_REGION_SIZE))
    return regions, int(arg[_WALK_END])
