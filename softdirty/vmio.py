"""Reading (and, for tests, writing) another process's memory: ``process_vm_readv`` via ctypes.

Many ranges go out in one system call (up to ``IOV_MAX`` remote iovecs into
one local buffer).  The kernel copies page by page and stops at the first
page it cannot pin, returning what it copied: we then step over unreadable
pages one by one ([vvar], guard regions, I/O mappings) and go on, so an
unreadable page is reported, never fatal.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence

from softdirty import _libc
from softdirty.errors import AccessDenied, ProcessGone
from softdirty.pagemap import PAGE_SIZE

IOV_MAX = 1024
PTRACE_ATTACH_ACCESS = "ptrace attach access (PTRACE_MODE_ATTACH: same user and ptrace_scope permitting, " \
                       "or CAP_SYS_PTRACE)"


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


for _name in ("process_vm_readv", "process_vm_writev"):
    _fn = getattr(_libc.libc, _name)
    _fn.restype = ctypes.c_ssize_t
    _fn.argtypes = [ctypes.c_int, ctypes.POINTER(Iovec), ctypes.c_ulong, ctypes.POINTER(Iovec), ctypes.c_ulong,
                    ctypes.c_ulong]


def _call(name: str, pid: int, local: ctypes.Array[Iovec], nlocal: int, remote: ctypes.Array[Iovec],
          nremote: int) -> int:
    ret = int(getattr(_libc.libc, name)(pid, local, nlocal, remote, nremote, 0))
    if ret < 0:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise ProcessGone(pid, f"process {pid} exited while its memory was being copied")
        if err == errno.EPERM:
            raise AccessDenied(pid, PTRACE_ATTACH_ACCESS, f"{name} on process {pid} refused; needs "
                                                          f"{PTRACE_ATTACH_ACCESS}")
        return -err
    return ret


def _address(buf: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf)) if len(buf) else 0


def read_into(pid: int, spans: Sequence[tuple[int, int]], buf: bytearray | memoryview) -> list[tuple[int, int]]:
    """Copy the page-aligned ``spans`` [(start, end)] of ``pid`` into ``buf``, back to back.

    Returns the unreadable (start, end) ranges, coalesced; their bytes in
    ``buf`` are zero.  ``buf`` must hold the sum of the span lengths.
    """
    view = memoryview(buf).cast("B")
    total = sum(e - s for s, e in spans)
    if len(view) < total:
        raise ValueError(f"buffer of {len(view)} bytes cannot hold {total}")
    bad: list[tuple[int, int]] = []
    off = 0
    i = 0
    while i < len(spans):
        batch = spans[i : i + IOV_MAX]
        size = sum(e - s for s, e in batch)
        remote = (Iovec * len(batch))(*(Iovec(s, e - s) for s, e in batch))
        local = (Iovec * 1)(Iovec(_address(view[off:]), size))
        n = _call("process_vm_readv", pid, local, 1, remote, len(batch)) if size else 0
        if n == size:
            off += size
            i += len(batch)
            continue
        # Somewhere in this batch a page is unreadable: whole spans before it are done.
        done = max(n, 0)
        for s, e in batch:
            if done >= e - s:
                done -= e - s
                off += e - s
                i += 1
                continue
            _read_span(pid, s, e, view[off : off + (e - s)], done - done % PAGE_SIZE, bad)
            off += e - s
            i += 1
            break
    return _coalesce(bad)


def _read_span(pid: int, start: int, end: int, view: memoryview, done: int, bad: list[tuple[int, int]]) -> None:
    """Read [start + done, end) of one span, stepping over unreadable pages."""
    pos = start + done
    while pos < end:
        size = end - pos
        local = (Iovec * 1)(Iovec(_address(view[pos - start :]), size))
        remote = (Iovec * 1)(Iovec(pos, size))
        n = _call("process_vm_readv", pid, local, 1, remote, 1)
        if n > 0:
            pos += n - n % PAGE_SIZE if n >= PAGE_SIZE else n
            continue
        # Nothing copied: the page at pos cannot be read.  (Should the kernel ever
        # refuse a whole iovec for a later page, reading page by page still works.)
        local = (Iovec * 1)(Iovec(_address(view[pos - start :]), PAGE_SIZE))
        remote = (Iovec * 1)(Iovec(pos, PAGE_SIZE))
        if _call("process_vm_readv", pid, local, 1, remote, 1) == PAGE_SIZE:
            pos += PAGE_SIZE
            continue
        view[pos - start : pos - start + PAGE_SIZE] = bytes(PAGE_SIZE)
        bad.append((pos, pos + PAGE_SIZE))
        pos += PAGE_SIZE


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def read(pid: int, start: int, length: int) -> bytes:
    """``length`` bytes at ``start`` (all must be readable)."""
    buf = bytearray(length)
    view = memoryview(buf)
    local = (Iovec * 1)(Iovec(_address(view), length))
    remote = (Iovec * 1)(Iovec(start, length))
    n = _call("process_vm_readv", pid, local, 1, remote, 1)
    if n != length:
        raise OSError(errno.EFAULT, f"process {pid}: {start:#x}+{length} readable only for {max(n, 0)} bytes "
                                    f"({os.strerror(-n) if n < 0 else 'short read'})")
    return bytes(buf)


def write(pid: int, start: int, data: bytes) -> None:
    """Write ``data`` at ``start`` in process ``pid`` (tests use it to change memory behind our back)."""
    buf = bytearray(data)
    view = memoryview(buf)
    local = (Iovec * 1)(Iovec(_address(view), len(buf)))
    remote = (Iovec * 1)(Iovec(start, len(buf)))
    n = _call("process_vm_writev", pid, local, 1, remote, 1)
    if n != len(buf):
        raise OSError(errno.EFAULT, f"process {pid}: wrote {max(n, 0)} of {len(buf)} bytes at {start:#x}")
