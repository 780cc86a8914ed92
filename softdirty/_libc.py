"""The few libc calls we make through ctypes (no compiler needed for these)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_NORESERVE, MAP_POPULATE, MAP_HUGETLB, MAP_FIXED_NOREPLACE = 0x4000, 0x8000, 0x40000, 0x100000
MAP_FAILED = ctypes.c_void_p(-1).value
MADV_DONTNEED, MADV_FREE, MADV_REMOVE = 4, 8, 9
MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT = 14, 15, 21
MADV_POPULATE_READ, MADV_POPULATE_WRITE = 22, 23
MADV_GUARD_INSTALL, MADV_GUARD_REMOVE = 102, 103
MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4

libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
libc.syscall.restype = ctypes.c_long
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.ioctl.restype = ctypes.c_int

# System call numbers we need that the os module does not wrap.
_SYSCALLS = {
    "x86_64": {"userfaultfd": 323, "pidfd_getfd": 438, "process_madvise": 440},
    "aarch64": {"userfaultfd": 282, "pidfd_getfd": 438, "process_madvise": 440},
}
SYSCALLS = _SYSCALLS.get(platform.machine(), {})


def _check(ret: int, what: str) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def mmap(length: int, prot: int = PROT_READ | PROT_WRITE, flags: int = MAP_PRIVATE | MAP_ANONYMOUS,
         fd: int = -1, offset: int = 0, addr: int = 0) -> int:
    ret = libc.mmap(addr or None, length, prot, flags, fd, offset)
    if ret is None or ret == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap: {os.strerror(err)}")
    return int(ret)


def munmap(addr: int, length: int) -> None:
    _check(libc.munmap(addr, length), "munmap")


def madvise(addr: int, length: int, advice: int) -> None:
    _check(libc.madvise(addr, length, advice), "madvise")


def mprotect(addr: int, length: int, prot: int) -> None:
    _check(libc.mprotect(addr, length, prot), "mprotect")


def mremap(addr: int, old: int, new: int, flags: int, new_addr: int = 0) -> int:
    ret = libc.mremap(addr, old, new, flags, new_addr or None)
    if ret is None or ret == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mremap: {os.strerror(err)}")
    return int(ret)


def ioctl(fd: int, request: int, arg: ctypes.Array[ctypes.c_char] | int | None) -> int:
    ptr: object = ctypes.addressof(arg) if isinstance(arg, ctypes.Array) else arg
    return _check(libc.ioctl(fd, request, ptr), f"ioctl {request:#x}")


def syscall(name: str, *args: int) -> int:
    nr = SYSCALLS.get(name)
    if nr is None:
        raise OSError(38, f"{name}: no system call number known for {platform.machine()}")
    return _check(libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args)), name)


def poke(addr: int, value: int = 1, length: int = 1) -> None:
    """Write ``length`` bytes at ``addr`` in this process (a real store)."""
    ctypes.memset(addr, value, length)


def peek(addr: int) -> int:
    """Read one byte at ``addr`` (a real load)."""
    return ctypes.c_ubyte.from_address(addr).value
