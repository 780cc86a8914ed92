"""What this host can do, found by exercising each feature (as CRIU's kerndat does).

A write of "4" to clear_refs succeeds even where soft-dirty is compiled out,
so return codes prove nothing: every answer here comes from a round trip on a
scratch mapping of our own.  The soft-dirty one runs in a forked child when
this process has a single thread (clear_refs "4" would otherwise clear our
own bits, and with them the checkpoint of anyone tracking us).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import platform
import threading
from dataclasses import dataclass, field

from softdirty import _libc, scanner
from softdirty.answer import Answer
from softdirty.errors import AccessDenied
from softdirty.pagemap import PAGE_SIZE, PM, PageCategory, ScanFlag
from softdirty.uffd_abi import (
    UFFD_API,
    UFFD_FEATURE_WP_ASYNC,
    UFFD_USER_MODE_ONLY,
    UFFDIO_API,
    UFFDIO_API_STRUCT,
    UFFDIO_REGISTER,
    UFFDIO_REGISTER_MODE_WP,
    UFFDIO_REGISTER_STRUCT,
)

FEATURES = ("soft_dirty", "pagemap_scan", "scan_soft_dirty", "scan_guard", "uffd_wp_async", "pfn_visible")


@dataclass(frozen=True)
class Capabilities:
    kernel: str
    arch: str
    soft_dirty: Answer
    pagemap_scan: Answer
    scan_soft_dirty: Answer
    scan_guard: Answer
    uffd_wp_async: Answer
    pfn_visible: Answer
    scanner: scanner.ScannerInfo
    best_backend: str | None
    best_reason: str
    uffd_user_mode_only: bool = field(default=False)

    def answer(self, name: str) -> Answer:
        if name not in FEATURES:
            raise ValueError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
        value: Answer = getattr(self, name)
        return value

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"kernel": self.kernel, "arch": self.arch}
        for name in FEATURES:
            out[name] = self.answer(name).to_dict()
        out["uffd_user_mode_only"] = self.uffd_user_mode_only
        out["scanner"] = {"name": self.scanner.name, "reason": self.scanner.reason}
        out["best_backend"] = {"name": self.best_backend, "reason": self.best_reason}
        return out


class _Scratch:
    """One private anonymous page of our own to experiment on."""

    def __init__(self, pages: int = 1) -> None:
        self.length = pages * PAGE_SIZE
        self.addr = _libc.mmap(self.length)

    def write(self, index: int = 0) -> None:
        _libc.poke(self.addr + index * PAGE_SIZE, 0x5A)

    def close(self) -> None:
        _libc.munmap(self.addr, self.length)

    def __enter__(self) -> _Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _entry(fd: int, addr: int) -> int:
    return int.from_bytes(os.pread(fd, 8, addr // PAGE_SIZE * 8), "little")


def _probe_soft_dirty(pagemap_fd: int) -> tuple[Answer, Answer]:
    """Round trip: write, clear, read (expect clean), write, read (expect dirty), twice."""
    try:
        clear_fd = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        no = Answer(False, f"cannot open /proc/self/clear_refs: {exc.strerror}")
        return no, Answer(False, "not checked: " + no.reason)
    try:
        with _Scratch() as page:
            page.write()
            first = _entry(pagemap_fd, page.addr)
            pfn = Answer(first & (PM.PRESENT) != 0 and first & ((1 << 55) - 1) != 0,
                         "PFNs visible (CAP_SYS_ADMIN)" if first & ((1 << 55) - 1)
                         else "PFNs read as 0: no CAP_SYS_ADMIN (dirty tracking does not need them)")
            for attempt in (1, 2):  # Boehm GC checks twice: one lucky read proves little
                os.write(clear_fd, b"4")
                after_clear = _entry(pagemap_fd, page.addr)
                page.write()
                after_write = _entry(pagemap_fd, page.addr)
                if not after_write & PM.SOFT_DIRTY:
                    return Answer(False, "bit 55 (soft-dirty) stays 0 after a write that follows clear_refs '4': "
                                  "the kernel was built without CONFIG_MEM_SOFT_DIRTY (it accepts '4' and does "
                                  "nothing)"), pfn
                if after_clear & PM.SOFT_DIRTY:
                    return Answer(False, f"clear_refs '4' did not clear bit 55 (attempt {attempt})"), pfn
            return Answer(True, "clear_refs '4' clears bit 55 and a later write sets it again (checked twice)"), pfn
    finally:
        os.close(clear_fd)


def _probe_soft_dirty_in_child() -> tuple[Answer, Answer] | None:
    """The soft-dirty round trip in a forked child, so that our own bits are left alone.

    clear_refs "4" clears every soft-dirty bit of the process: probing in the
    caller itself would wipe the checkpoint of anyone tracking the caller with
    soft-dirty.  A forked child has its own mm.  None when forking is not safe
    (other threads may hold locks the child would need) or fails: the caller
    then probes itself.
    """
    if threading.active_count() != 1 or not hasattr(os, "fork"):
        return None
    rfd, wfd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(rfd)
        os.close(wfd)
        return None
    if pid == 0:  # the child: no Python-level clean-up, just the answer and _exit
        status = 1
        try:
            os.close(rfd)
            fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
            sd, pfn = _probe_soft_dirty(fd)
            os.write(wfd, json.dumps([sd.ok, sd.reason, pfn.ok, pfn.reason]).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(wfd)
    try:
        chunks = []
        while chunk := os.read(rfd, 65536):
            chunks.append(chunk)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    try:
        sd_ok, sd_why, pfn_ok, pfn_why = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return Answer(bool(sd_ok), str(sd_why)), Answer(bool(pfn_ok), str(pfn_why))


def _scan_once(fd: int, addr: int, **kw: int) -> int:
    _, walk_end = scanner.pagemap_scan_ioctl(fd, addr, addr + PAGE_SIZE, vec_len=4, **kw)
    return walk_end


def _probe_scan(pagemap_fd: int) -> tuple[Answer, Answer, Answer]:
    with _Scratch() as page:
        page.write()
        try:
            _scan_once(pagemap_fd, page.addr, category_mask=int(PageCategory.PRESENT),
                       return_mask=int(PageCategory.PRESENT))
        except OSError as exc:
            why = ("the kernel has no PAGEMAP_SCAN ioctl (Linux 6.7+)" if exc.errno == errno.ENOTTY
                   else f"PAGEMAP_SCAN failed: {exc.strerror}")
            no = Answer(False, why)
            return no, Answer(False, "no PAGEMAP_SCAN"), Answer(False, "no PAGEMAP_SCAN")
        answers = []
        for cat, since in ((PageCategory.SOFT_DIRTY, "6.8"), (PageCategory.GUARD, "6.15")):
            try:
                _scan_once(pagemap_fd, page.addr, return_mask=int(cat))
                answers.append(Answer(True, f"PAGEMAP_SCAN accepts PAGE_IS_{cat.name}"))
            except OSError as exc:
                answers.append(Answer(False, f"PAGEMAP_SCAN rejects PAGE_IS_{cat.name} ({exc.strerror}; "
                                             f"needs Linux {since}+)"))
        return Answer(True, "PAGEMAP_SCAN answers on /proc/self/pagemap"), answers[0], answers[1]


def _probe_uffd(pagemap_fd: int, scan: Answer) -> tuple[Answer, bool]:
    """Create a uffd, enable WP_ASYNC, register and arm a page, write it, see it WRITTEN."""
    user_mode_only = False
    try:
        fd = _libc.syscall("userfaultfd", os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.EPERM:
            return Answer(False, f"userfaultfd() failed: {exc.strerror}"), False
        try:  # vm.unprivileged_userfaultfd=0: user-mode-only faults are still allowed
            fd = _libc.syscall("userfaultfd", os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY)
            user_mode_only = True
        except OSError as exc2:
            return Answer(False, f"userfaultfd() refused ({exc2.strerror})"), False
    try:
        api = ctypes.create_string_buffer(UFFDIO_API_STRUCT.pack(UFFD_API, UFFD_FEATURE_WP_ASYNC, 0))
        try:
            _libc.ioctl(fd, UFFDIO_API, api)
        except OSError as exc:
            return Answer(False, f"UFFDIO_API refused UFFD_FEATURE_WP_ASYNC ({exc.strerror}; needs Linux 6.7+)"), \
                user_mode_only
        if not scan.ok:
            return Answer(False, "WP_ASYNC is there but PAGEMAP_SCAN is not: nothing can harvest it"), user_mode_only
        with _Scratch(2) as page:
            reg = ctypes.create_string_buffer(UFFDIO_REGISTER_STRUCT.pack(page.addr, page.length,
                                                                          UFFDIO_REGISTER_MODE_WP, 0))
            try:
                _libc.ioctl(fd, UFFDIO_REGISTER, reg)
            except OSError as exc:
                return Answer(False, f"UFFDIO_REGISTER (WP) failed: {exc.strerror}"), user_mode_only
            written = int(PageCategory.WRITTEN)
            scanner.pagemap_scan_ioctl(pagemap_fd, page.addr, page.addr + page.length,
                                       flags=int(ScanFlag.WP_MATCHING | ScanFlag.CHECK_WPASYNC),
                                       category_mask=written, return_mask=written, vec_len=0)
            page.write(1)
            regions, _ = scanner.pagemap_scan_ioctl(pagemap_fd, page.addr, page.addr + page.length,
                                                    category_mask=written, return_mask=written, vec_len=4)
            got = [(regions[i] - page.addr, regions[i + 1] - page.addr) for i in range(0, len(regions), 3)]
            if got != [(PAGE_SIZE, 2 * PAGE_SIZE)]:
                return Answer(False, f"uffd-wp async round trip reported {got}, expected only the written page"), \
                    user_mode_only
    finally:
        os.close(fd)  # closing the last reference unregisters the range
    mode = " (UFFD_USER_MODE_ONLY: vm.unprivileged_userfaultfd=0)" if user_mode_only else ""
    return Answer(True, "userfaultfd WP_ASYNC: arm, write one page, PAGEMAP_SCAN sees exactly it" + mode), \
        user_mode_only


def _best(sd: Answer, uffd: Answer) -> tuple[str | None, str]:
    if sd.ok:
        return "softdirty", "soft-dirty works: any PID we may trace, no injection needed"
    if uffd.ok:
        return "uffd", f"soft-dirty is missing ({sd.reason}); uffd-wp async + PAGEMAP_SCAN work"
    return None, f"no real back end: soft-dirty: {sd.reason}; uffd: {uffd.reason} (the emulator still works)"


@functools.lru_cache(maxsize=1)
def probe() -> Capabilities:
    """The host's capabilities, each with its reason (computed once per process)."""
    info = scanner.active_scanner()
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        # /proc/self is root's when this process is not dumpable (set-id, or changed credentials).
        raise AccessDenied(None, "read access to /proc/self/pagemap (this process is not dumpable: "
                           "prctl(PR_SET_DUMPABLE, 1) after changing credentials)") from None
    try:
        sd_pfn = _probe_soft_dirty_in_child()
        sd, pfn = sd_pfn if sd_pfn is not None else _probe_soft_dirty(fd)
        scan, scan_sd, scan_guard = _probe_scan(fd)
        uffd, user_only = _probe_uffd(fd, scan)
    finally:
        os.close(fd)
    best, why = _best(sd, uffd)
    return Capabilities(
        kernel=os.uname().release,
        arch=platform.machine(),
        soft_dirty=sd,
        pagemap_scan=scan,
        scan_soft_dirty=scan_sd,
        scan_guard=scan_guard,
        uffd_wp_async=uffd,
        pfn_visible=pfn,
        scanner=info,
        best_backend=best,
        best_reason=why,
        uffd_user_mode_only=user_only,
    )
