"""Runs as PID 1 of a fresh PID namespace (see test_security_pidreuse.py): forces PID reuse.

Target A is tracked (uffd tracker, and a soft-dirty clear_refs handle), exits and is reaped; then
ns_last_pid is set so that the next fork, target B, gets A's PID.  Every stale handle must refuse
with a typed error, and B must come out untouched: no uffd registration (WPALLOWED), no uffd-wp
bits (57), not traced, and (on a soft-dirty kernel) its soft-dirty bits still set.  To catch an
injection attempt we hold B ptrace-seized ourselves first: any PTRACE_SEIZE/ATTACH on B by the
library would then fail with EPERM and surface as AccessDenied instead of a NoSuchProcess.
Prints one JSON line.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import softdirty  # noqa: E402
from softdirty.answer import Answer  # noqa: E402
from softdirty.errors import AccessDenied, NoSuchProcess  # noqa: E402
from softdirty.process import LiveProcess  # noqa: E402
from stress.targets import stat_state, wp_bits, wp_registered  # noqa: E402

PTRACE_SEIZE = 0x4206
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long


class SoftDirtyAnyway(LiveProcess):
    """On a kernel without soft-dirty, still run the soft-dirty back end's clear_refs path."""

    def feature(self, name: str) -> Answer:
        if name == "soft_dirty":
            return Answer(True, "pretended (host lacks soft-dirty)")
        return super().feature(name)


def soft_dirty_pages(pid: int, addr: int, pages: int) -> int:
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        data = os.pread(fd, pages * 8, addr // 4096 * 8)
    finally:
        os.close(fd)
    return sum(int.from_bytes(data[i : i + 8], "little") >> 55 & 1 for i in range(0, len(data), 8))


def main() -> None:
    victim = sys.argv[1]
    sd_works = softdirty.probe().soft_dirty.ok
    out: dict[str, object] = {"ns_pid": os.getpid(), "soft_dirty": sd_works}
    a = subprocess.Popen([victim, "-2"], stdout=subprocess.PIPE, text=True)
    a.stdout.readline()  # type: ignore[union-attr]
    pid = a.pid
    # 6.1 (a VM run) has no uffd-wp async: there only the soft-dirty half applies.
    uffd_ok = softdirty.probe().uffd_wp_async.ok
    out["uffd"] = uffd_ok
    tracker = softdirty.track(pid, backend="uffd") if uffd_ok else None
    if tracker is not None:
        tracker.reset()
    sd = softdirty.track(SoftDirtyAnyway(pid), backend="softdirty")
    sd.reset()
    stale = LiveProcess(pid)
    a.kill()
    a.wait()
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    b = subprocess.Popen([victim, "-2"], stdout=subprocess.PIPE, text=True)
    addr = int(b.stdout.readline().split()[1])  # type: ignore[union-attr]
    out["reused"] = b.pid == pid
    if b.pid != pid:
        print(json.dumps(out))
        return
    if libc.ptrace(PTRACE_SEIZE, b.pid, None, None) != 0:
        raise OSError(ctypes.get_errno(), "PTRACE_SEIZE on the newcomer")
    before_sd = soft_dirty_pages(b.pid, addr, 64)
    attempts = {
        "softdirty reset (clear_refs)": sd.reset,
        "softdirty harvest": sd.harvest,
        "clear_refs on the stale handle": lambda: stale.write_clear_refs(b"4"),
    }
    if tracker is not None:
        attempts.update({
            "uffd reset": tracker.reset,
            "uffd harvest": tracker.harvest,
            "track(stale handle, uffd): injection": lambda: softdirty.track(stale, backend="uffd"),
            "dump(stale handle)": lambda: __import__("softdirty.dump").dump.dump(stale, tempfile.mkdtemp(),
                                                                                 backend="uffd", compare=False),
        })
    results = {}
    for what, call in attempts.items():
        try:
            call()
            results[what] = "RETURNED (touched or read the newcomer)"
        except AccessDenied as exc:
            results[what] = f"AccessDenied (tried to ptrace the newcomer?): {exc}"
        except NoSuchProcess as exc:
            results[what] = "ok " + type(exc).__name__
        except Exception as exc:
            results[what] = f"UNTYPED {type(exc).__name__}: {exc} {traceback.format_exc(limit=3)}"
    out["attempts"] = results
    out["registered"] = wp_registered(b.pid) if softdirty.probe().pagemap_scan.ok else []
    out["wp_bits"] = wp_bits(b.pid)
    out["soft_dirty_before"] = before_sd
    out["soft_dirty_after"] = soft_dirty_pages(b.pid, addr, 64)
    state, tracer = stat_state(b.pid)
    out["state"], out["tracer_is_us"] = state, tracer == os.getpid()
    for t in (tracker, sd):
        if t is not None:
            t.close()
    b.kill()
    b.wait()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
