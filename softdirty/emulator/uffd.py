"""An emulated userfaultfd bound to an emulated mm (fs/userfaultfd.c, mm/userfaultfd.c, spec section 6).

Implements :class:`softdirty.process.UffdInterface`.  Failures raise
``OSError`` with the kernel's errno.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from softdirty.emulator.constants import (
    UFFD_API_RANGE_IOCTLS,
    UFFD_API_RANGE_IOCTLS_BASIC,
    UFFDIO_CONTINUE_BIT,
    UFFDIO_REGISTER_MODE_MINOR,
    UFFDIO_WRITEPROTECT_BIT,
    VM_MAYWRITE,
    VM_UFFD_FLAGS,
    VM_UFFD_MINOR,
    VM_UFFD_MISSING,
    VM_UFFD_WP,
)
from softdirty.emulator.pagetable import PMD_SIZE
from softdirty.emulator.vma import UFFD_FEATURE_WP_UNPOPULATED, EVma, UffdCtx
from softdirty.pagemap import PAGE_SIZE
from softdirty.uffd_abi import (
    UFFD_API,
    UFFD_FEATURE_WP_ASYNC,
    UFFDIO_REGISTER_MODE_MISSING,
    UFFDIO_REGISTER_MODE_WP,
)

if TYPE_CHECKING:
    from softdirty.emulator.process import EmulatedProcess

_REGISTER_MODES = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP | UFFDIO_REGISTER_MODE_MINOR


def _err(code: int, why: str) -> OSError:
    return OSError(code, f"{errno.errorcode.get(code, code)}: {why}")


class EmulatedUffd:
    """A userfaultfd file on an emulated process's mm."""

    def __init__(self, proc: EmulatedProcess) -> None:
        self.proc = proc
        self.ctx: UffdCtx | None = None
        self.closed = False
        self.supported = proc.profile.uffd_features
        proc.uffds.append(self)

    @property
    def features(self) -> int:
        """The features this context has (requested plus implied ones)."""
        return self.ctx.features if self.ctx is not None else 0

    def api(self, features: int, api: int = UFFD_API) -> int:
        """UFFDIO_API: returns what the kernel writes back (every supported feature)."""
        self._check()
        if self.ctx is not None:
            raise _err(errno.EINVAL, "UFFDIO_API was already done on this userfaultfd")
        if api != UFFD_API:
            raise _err(errno.EINVAL, f"api {api:#x} is not UFFD_API")
        if features & ~self.supported:
            raise _err(errno.EINVAL, f"unsupported features {features & ~self.supported:#x} "
                                     f"(Linux {self.proc.profile.release})")
        if features & UFFD_FEATURE_WP_ASYNC:
            features |= UFFD_FEATURE_WP_UNPOPULATED  # WP_ASYNC relies on it
        self.ctx = UffdCtx(features)
        return self.supported

    def _check(self) -> None:
        if self.closed:
            raise _err(errno.EBADF, "the userfaultfd is closed")
        self.proc.ensure_alive()

    def _ready(self) -> UffdCtx:
        self._check()
        if self.ctx is None:
            raise _err(errno.EINVAL, "UFFDIO_API has not been done")
        return self.ctx

    def _range(self, start: int, length: int) -> int:
        if start % PAGE_SIZE or length % PAGE_SIZE:
            raise _err(errno.EINVAL, "range not page aligned")
        if length <= 0:
            raise _err(errno.EINVAL, "empty range")
        end = start + length
        if start < 0x10000 and start != 0 or end > self.proc.task_size:
            raise _err(errno.EINVAL, "range outside the user address space")
        return end

    @staticmethod
    def _can_userfault(v: EVma, vm_flags: int, wp_async: bool) -> bool:
        """vma_can_userfault()."""
        vm_flags &= VM_UFFD_FLAGS
        shmem = v.file is not None and v.file.shmem
        if vm_flags & VM_UFFD_MINOR and not (v.hugetlb or shmem):
            return False
        if wp_async and vm_flags == VM_UFFD_WP:
            return True  # WP-only async registration: any memory type
        return v.anonymous or v.hugetlb or shmem

    def register(self, start: int, length: int, mode: int) -> int:
        ctx = self._ready()
        if not mode or mode & ~_REGISTER_MODES:
            raise _err(errno.EINVAL, f"bad register mode {mode:#x}")
        vm_flags = 0
        if mode & UFFDIO_REGISTER_MODE_MISSING:
            vm_flags |= VM_UFFD_MISSING
        if mode & UFFDIO_REGISTER_MODE_WP:
            vm_flags |= VM_UFFD_WP
        if mode & UFFDIO_REGISTER_MODE_MINOR:
            vm_flags |= VM_UFFD_MINOR
        end = self._range(start, length)
        proc = self.proc
        vmas = proc._vmas_in(start, end)
        if not vmas:
            raise _err(errno.EINVAL, "no mapping in the range")
        basic = False
        for v in vmas:
            if not self._can_userfault(v, vm_flags, ctx.wp_async):
                raise _err(errno.EINVAL, f"mapping at {v.start:#x} cannot be registered")
            if not v.flags & VM_MAYWRITE:
                raise _err(errno.EPERM, "mapping is not writable")
            if v.hugetlb:
                basic = True
                if (start > v.start and start % PMD_SIZE) or (end < v.end and end % PMD_SIZE):
                    raise _err(errno.EINVAL, "hugetlb range not huge-page aligned")
            if v.uffd is not None and v.uffd is not ctx:
                raise _err(errno.EBUSY, "already registered on another userfaultfd")
        cur = start
        for v in proc._vmas_in(start, end):
            s, e = max(cur, v.start), min(v.end, end)
            new = (v.flags & ~VM_UFFD_FLAGS) | vm_flags
            if v.uffd is ctx and new == v.flags:
                cur = e
                continue
            proc._modify(v, s, e, new, ctx, reset_flags=False)
            cur = e
        ioctls = UFFD_API_RANGE_IOCTLS_BASIC if basic else UFFD_API_RANGE_IOCTLS
        if not mode & UFFDIO_REGISTER_MODE_WP:
            ioctls &= ~UFFDIO_WRITEPROTECT_BIT
        if not mode & UFFDIO_REGISTER_MODE_MINOR:
            ioctls &= ~UFFDIO_CONTINUE_BIT
        return ioctls

    def unregister(self, start: int, length: int) -> None:
        ctx = self._ready()
        end = self._range(start, length)
        proc = self.proc
        vmas = proc._vmas_in(start, end)
        if not vmas:
            raise _err(errno.EINVAL, "no mapping in the range")
        if vmas[0].hugetlb and start % PMD_SIZE:
            raise _err(errno.EINVAL, "hugetlb range not huge-page aligned")
        for v in vmas:
            if v.uffd is None and proc.profile.unregister_unregistered_ok:
                continue  # observed on Debian 6.12.117 (CI's VM run): a never-registered file VMA -> 0
            if not self._can_userfault(v, v.flags, ctx.wp_async):
                raise _err(errno.EINVAL, f"mapping at {v.start:#x} cannot be (un)registered")
        for v in list(proc._vmas_in(start, end)):
            if v.uffd is None:
                continue
            s, e = max(start, v.start), min(v.end, end)
            self._clear(v, s, e)

    def _clear(self, v: EVma, s: int, e: int) -> None:
        """userfaultfd_clear_vma(): resolve uffd-wp, drop the flags and the context."""
        proc = self.proc
        if v.uffd_wp:
            proc._change_protection(v, s, e, uffd_resolve=True)
        proc._modify(v, s, e, v.flags & ~VM_UFFD_FLAGS, None, reset_flags=False)

    def writeprotect(self, start: int, length: int, protect: bool) -> None:
        """UFFDIO_WRITEPROTECT (mode WP when ``protect``, else resolve)."""
        self._ready()
        end = self._range(start, length)
        proc = self.proc
        vmas = proc._vmas_in(start, end)
        if not vmas:
            raise _err(errno.ENOENT, "no mapping in the range")
        for v in vmas:
            # mwriteprotect_range(): VMA by VMA; an earlier VMA stays changed when a later one fails.
            if not v.uffd_wp:
                raise _err(errno.ENOENT, f"mapping at {v.start:#x} is not registered for WP")
            if v.hugetlb and (start % PMD_SIZE or length % PMD_SIZE):
                raise _err(errno.EINVAL, "hugetlb range not huge-page aligned")
            s, e = max(start, v.start), min(v.end, end)
            try_writable = not protect and bool(v.flags & 0x2) and (
                proc._wants_writenotify(v) if v.shared else True)
            proc._change_protection(v, s, e, uffd_wp=protect, uffd_resolve=not protect, try_writable=try_writable)

    def close(self) -> None:
        """Closing the fd: every VMA registered on it is cleared."""
        if self.closed:
            return
        self.closed = True
        ctx = self.ctx
        proc = self.proc
        if self in proc.uffds:
            proc.uffds.remove(self)
        if ctx is None or not proc.alive:
            return
        ctx.released = True
        for v in list(proc.vmas):
            if v.uffd is ctx and v in proc.vmas:
                self._clear(v, v.start, v.end)

    def __enter__(self) -> EmulatedUffd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EmulatedUffd pid={self.proc.pid} features={self.features:#x}{' closed' if self.closed else ''}>"
