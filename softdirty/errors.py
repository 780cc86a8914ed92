"""Typed errors, in the spirit of psutil's NoSuchProcess / AccessDenied.

Every error softdirty raises on purpose derives from :class:`SoftDirtyError`.
Bad arguments raise the built-in ``ValueError`` / ``TypeError``.
"""

from __future__ import annotations

import errno as _errno


class SoftDirtyError(Exception):
    """Base class of every error softdirty raises on purpose."""


class NoSuchProcess(SoftDirtyError):
    """The PID names no process (or names a different one than we opened)."""

    def __init__(self, pid: int, msg: str | None = None) -> None:
        self.pid = pid
        super().__init__(msg or f"no process with PID {pid}")


class ProcessGone(NoSuchProcess):
    """The process we had opened exited (or exec'd into a new mm) mid-operation."""

    def __init__(self, pid: int, msg: str | None = None) -> None:
        super().__init__(pid, msg or f"process {pid} exited during the operation")


class AddressSpaceReplaced(ProcessGone):
    """The process exec'd: the address space we were tracking no longer exists."""

    def __init__(self, pid: int, msg: str | None = None) -> None:
        super().__init__(pid, msg or f"process {pid} exec'd a new program: the tracked address space is gone")


class AccessDenied(SoftDirtyError):
    """We may not do this to that process; ``permission`` names what is missing."""

    def __init__(self, pid: int | None, permission: str, msg: str | None = None) -> None:
        self.pid = pid
        self.permission = permission
        target = f"process {pid}" if pid is not None else "this operation"
        super().__init__(msg or f"access to {target} denied: needs {permission}")


class AlreadyTracked(SoftDirtyError):
    """Another soft-dirty tracker already clears this process (one clear_refs per process)."""

    def __init__(self, pid: int, msg: str) -> None:
        self.pid = pid
        super().__init__(msg)


class Unsupported(SoftDirtyError):
    """The kernel (or this host) lacks the feature; ``reason`` says why."""

    def __init__(self, feature: str, reason: str) -> None:
        self.feature = feature
        self.reason = reason
        super().__init__(f"{feature} is not available: {reason}")


# What we ask the kernel for when /proc/PID/{pagemap,maps,clear_refs} refuse us.
PTRACE_READ = "ptrace read access (PTRACE_MODE_READ: same user and dumpable target, or CAP_SYS_PTRACE)"
PTRACE_ATTACH = "ptrace attach access (same user, ptrace_scope permitting, or CAP_SYS_PTRACE)"


CLEAR_REFS_WRITE = "write access to /proc/PID/clear_refs (same user and a dumpable target, or root)"


def from_oserror(exc: OSError, pid: int, what: str, *, opened: bool) -> SoftDirtyError | OSError:
    """Translate an OSError on ``/proc/PID/<what>`` into our typed errors.

    ``opened`` tells whether the process had been opened before: then its
    disappearance is :class:`ProcessGone`, otherwise :class:`NoSuchProcess`.
    Unknown errnos come back unchanged so that nothing is hidden.
    """
    code = exc.errno
    if code in (_errno.ESRCH, _errno.ENOENT):
        if opened:
            return ProcessGone(pid, f"process {pid} exited ({what}: {exc.strerror})")
        return NoSuchProcess(pid, f"no process with PID {pid} ({what}: {exc.strerror})")
    if code in (_errno.EACCES, _errno.EPERM):
        permission = CLEAR_REFS_WRITE if what == "clear_refs" else PTRACE_READ
        why = f"access to process {pid} denied ({what}: {exc.strerror}); needs {permission}"
        return AccessDenied(pid, permission, why)
    return exc
