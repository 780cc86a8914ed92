"""Direct kernel access for tests that hold softdirty to what the kernel says.

Nothing here imports softdirty: memory is driven with ctypes (mmap, madvise,
mprotect, mremap, sbrk, memset) and bit 55 is read straight from
/proc/PID/pagemap, so a test can compare the library with the kernel.
``Child`` runs a helper Python process that executes commands for a test and
freezes itself (SIGSTOP) after each, so its memory cannot change while it is
being harvested.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import struct
import subprocess
import sys
import time
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
HPAGE = 2 << 20  # x86-64 PMD size

PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
RW = PROT_READ | PROT_WRITE
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTNEED, MADV_HUGEPAGE, MADV_PAGEOUT = 4, 14, 21
MADV_POPULATE_READ, MADV_POPULATE_WRITE = 22, 23

PM_SOFT_DIRTY = 1 << 55
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = [ctypes.c_long]
libc.syscall.restype = ctypes.c_long
MAP_FAILED = ctypes.c_void_p(-1).value


def _err(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def mmap(length: int, prot: int = RW, flags: int = MAP_PRIVATE | MAP_ANONYMOUS, fd: int = -1, addr: int = 0) -> int:
    ret = libc.mmap(addr or None, length, prot, flags, fd, 0)
    if ret is None or ret == MAP_FAILED:
        raise _err("mmap")
    return int(ret)


def munmap(addr: int, length: int) -> None:
    if libc.munmap(addr, length):
        raise _err("munmap")


def mprotect(addr: int, length: int, prot: int) -> None:
    if libc.mprotect(addr, length, prot):
        raise _err("mprotect")


def madvise(addr: int, length: int, advice: int) -> None:
    if libc.madvise(addr, length, advice):
        raise _err(f"madvise({advice})")


def sbrk(increment: int) -> int:
    ret = libc.sbrk(increment)
    if ret is None or ret == MAP_FAILED:
        raise _err("sbrk")
    return int(ret)


def write(addr: int, length: int = 1, value: int = 0x5A) -> None:
    """A real store to our own memory."""
    ctypes.memset(addr, value, length)


def read(addr: int) -> int:
    """A real load from our own memory."""
    return ctypes.c_ubyte.from_address(addr).value


class Region:
    """``pages`` private anonymous RW pages between two PROT_NONE guard pages.

    The guards keep the region a VMA of its own: an mmap by the interpreter
    next to it would otherwise merge with it, and a merged VMA created since
    the checkpoint reads dirty as a whole (VM_SOFTDIRTY).
    """

    def __init__(self, pages: int, *, flags: int = MAP_PRIVATE | MAP_ANONYMOUS, fd: int = -1) -> None:
        self.pages = pages
        self.length = pages * PAGE
        self._outer = mmap(self.length + 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS)
        self.base = self._outer + PAGE
        if fd >= 0 or flags != MAP_PRIVATE | MAP_ANONYMOUS:
            got = mmap(self.length, RW, flags | MAP_FIXED, fd, addr=self.base)
            assert got == self.base
        else:
            mprotect(self.base, self.length, RW)

    def page(self, i: int) -> int:
        if not 0 <= i < self.pages:
            raise IndexError(i)
        return self.base + i * PAGE

    @property
    def end(self) -> int:
        return self.base + self.length

    def close(self) -> None:
        munmap(self._outer, self.length + 2 * PAGE)

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def aligned_huge_region() -> tuple[int, int]:
    """(mapping start, 2 MiB-aligned address inside it): 2 MiB aligned RW anon inside a 6 MiB mapping."""
    outer = mmap(3 * HPAGE)
    return outer, (outer + HPAGE - 1) // HPAGE * HPAGE


# ---- /proc/PID/pagemap and clear_refs, read directly -------------------------------

def pagemap_entries(start: int, pages: int, pid: int | str = "self") -> list[int]:
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        raw = os.pread(fd, 8 * pages, start // PAGE * 8)
    finally:
        os.close(fd)
    assert len(raw) == 8 * pages, "short pagemap read"
    return list(struct.unpack(f"<{pages}Q", raw))


def entry(addr: int, pid: int | str = "self") -> int:
    return pagemap_entries(addr, 1, pid)[0]


def soft_dirty_pages(start: int, pages: int, pid: int | str = "self") -> set[int]:
    """Indexes of the pages in [start, start + pages*PAGE) whose bit 55 is set."""
    return {i for i, e in enumerate(pagemap_entries(start, pages, pid)) if e & PM_SOFT_DIRTY}


def clear_refs(pid: int | str = "self", value: bytes = b"4") -> None:
    with open(f"/proc/{pid}/clear_refs", "wb", buffering=0) as f:
        f.write(value)


def dirty_pages(ds: Any, start: int, pages: int) -> set[int]:
    """Indexes of the pages in [start, start + pages*PAGE) that the DirtySet reports."""
    return {i for i in range(pages) if start + i * PAGE in ds}


def flags_at(ds: Any, addr: int) -> int:
    """The Cause flags of the range holding addr (0 if none), from ds.ranges."""
    for r in ds.ranges:
        if r.start <= addr < r.end:
            return int(r.flags)
    return 0


def maps(pid: int | str = "self") -> list[tuple[int, int, str, str]]:
    """(start, end, perms, name) of each VMA."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return out


def vma_named(name: str, pid: int | str = "self") -> tuple[int, int]:
    for lo, hi, _, n in maps(pid):
        if n == name:
            return lo, hi
    raise LookupError(f"no {name} VMA in /proc/{pid}/maps")


def vma_at(addr: int, pid: int | str = "self") -> tuple[int, int]:
    for lo, hi, _, _ in maps(pid):
        if lo <= addr < hi:
            return lo, hi
    raise LookupError(f"no VMA holds {addr:#x} in /proc/{pid}/maps")


# ---- independent feature checks (what the probe must agree with) --------------------

def kernel_version() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def raw_soft_dirty_works() -> bool:
    """Write, clear_refs 4, expect bit 55 clear, write, expect it set."""
    with Region(1) as r:
        write(r.base)
        clear_refs()
        cleared = not entry(r.base) & PM_SOFT_DIRTY
        write(r.base)
        return cleared and bool(entry(r.base) & PM_SOFT_DIRTY)


PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg)
PAGE_IS_PRESENT, PAGE_IS_SOFT_DIRTY = 1 << 3, 1 << 7


def raw_pagemap_scan(return_mask: int = PAGE_IS_PRESENT) -> bool:
    """Issue PAGEMAP_SCAN over one written page of ours; False on ENOTTY/EINVAL."""
    with Region(1) as r:
        write(r.base)
        vec = ctypes.create_string_buffer(24 * 4)
        arg = bytearray(struct.pack("<12Q", 96, 0, r.base, r.end, 0, ctypes.addressof(vec), 4, 0, 0, 0, 0,
                                    return_mask))
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL):
                return False
            raise
        finally:
            os.close(fd)
        return int(n) >= 1


UFFDIO_API = 0xC018AA3F
UFFD_API = 0xAA
UFFD_FEATURE_WP_ASYNC = 1 << 15
SYS_userfaultfd = 323  # x86-64


def raw_uffd_wp_async() -> bool:
    """userfaultfd accepts UFFD_FEATURE_WP_ASYNC (and PAGEMAP_SCAN is there to harvest it)."""
    fd = libc.syscall(ctypes.c_long(SYS_userfaultfd), ctypes.c_long(os.O_CLOEXEC | os.O_NONBLOCK))
    if fd < 0:
        return False
    try:
        api = bytearray(struct.pack("<3Q", UFFD_API, UFFD_FEATURE_WP_ASYNC, 0))
        try:
            fcntl.ioctl(fd, UFFDIO_API, api)
        except OSError:
            return False
    finally:
        os.close(fd)
    return raw_pagemap_scan()


# ---- a helper process that runs commands and freezes between them ------------------

_CHILD = r"""
import os, signal, sys, traceback
sys.path.insert(0, sys.argv[1])
import rawkernel as rk
ns = {"rk": rk, "os": os}
out = sys.stdout
print("ready", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
for line in sys.stdin:
    try:
        exec(eval(line), ns)
        reply = "ok " + repr(ns.get("_"))
    except BaseException:
        reply = "err " + repr(traceback.format_exc())
    out.write(reply + "\n")
    out.flush()
    os.kill(os.getpid(), signal.SIGSTOP)
"""


class Child:
    """A Python child that runs ``code`` sent by ``run()`` and then stops itself.

    Between commands it is stopped (SIGSTOP), so nothing in it writes memory
    while a test resets or harvests it.  ``run("_ = expr")`` returns the
    repr-evaluable value of ``_``.
    """

    def __init__(self) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, here],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.pid = self.proc.pid
        assert self._readline() == "ready"
        self._wait_stopped()

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.pid} died (exit status {self.proc.poll()})")
        return line.rstrip("\n")

    def _wait_stopped(self) -> None:
        deadline = time.monotonic() + 120  # generous: TCG guests are slow
        while time.monotonic() < deadline:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state in ("T", "t"):
                return
            if state in ("Z", "X"):
                raise RuntimeError(f"child {self.pid} exited")
            time.sleep(0.002)
        raise RuntimeError(f"child {self.pid} did not stop")

    def run(self, code: str) -> Any:
        assert self.proc.stdin is not None
        os.kill(self.pid, signal.SIGCONT)
        self.proc.stdin.write(repr(code) + "\n")
        self.proc.stdin.flush()
        reply = self._readline()
        self._wait_stopped()
        kind, _, value = reply.partition(" ")
        if kind == "err":
            raise RuntimeError(f"child command {code!r} failed:\n{eval(value)}")
        return eval(value)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL also ends a stopped process
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
