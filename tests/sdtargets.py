"""Test targets: child processes whose memory we track, dump and compare (shared by tests/ and tests/real/).

:class:`Writer` starts a Python child with a private anonymous buffer of
``pages`` pages, all populated; ``writers`` threads then hammer it: each
store puts an ever-increasing 8-byte counter at the start of the next page
(round robin), so every write changes the page's content.  Page 0 holds, per
writer thread, the number of stores it made (``stores(i)``) and, at offset
2048, a flag set by a SIGUSR1 handler.  ``hot=N`` confines the stores to pages
1..N-1 (a small writable working set in a large process).  ``spawner=True``
adds a thread that keeps creating short-lived threads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import TracebackType

from softdirty import vmio

PAGE = 4096

WRITER = r"""
import ctypes, mmap, signal, sys, threading, time
pages, writers, spawner, pause, hot = (int(a) for a in sys.argv[1:6])
span = (hot or pages) - 1
buf = mmap.mmap(-1, pages * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for p in range(pages):
    buf[p * 4096 + 16] = 1
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
def on_usr1(signo, frame):
    buf[2048] = 1
signal.signal(signal.SIGUSR1, on_usr1)
def hammer(k):
    n = 0
    page = 1 + k
    while True:
        n += 1
        buf[page * 4096 : page * 4096 + 8] = n.to_bytes(8, "little")
        buf[k * 8 : k * 8 + 8] = n.to_bytes(8, "little")
        page = 1 + (page - 1 + writers) % span
        if pause and n % pause == 0:
            time.sleep(0.001)
for k in range(writers):
    threading.Thread(target=hammer, args=(k,), daemon=True).start()
def spawn():
    while True:
        t = threading.Thread(target=time.sleep, args=(0.002,), daemon=True)
        t.start()
        time.sleep(0.001)
if spawner:
    threading.Thread(target=spawn, daemon=True).start()
print(f"ready {addr} {pages}", flush=True)
while True:
    time.sleep(3600)
"""


class Writer:
    def __init__(self, pages: int = 256, writers: int = 1, *, spawner: bool = False, pause_every: int = 0,
                 hot: int = 0) -> None:
        if pages < 2 or not 0 <= hot <= pages or hot == 1:
            raise ValueError("a writer needs at least 2 pages, and a hot set of 0 (all) or 2..pages")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(pages), str(writers), str(int(spawner)), str(pause_every), str(hot)],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            self.proc.kill()
            raise RuntimeError(f"the writer did not start: {line!r}")
        self.addr, self.pages = int(line[1]), int(line[2])
        self.writers = writers

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def end(self) -> int:
        return self.addr + self.pages * PAGE

    def stores(self, k: int = 0) -> int:
        return int.from_bytes(vmio.read(self.pid, self.addr + 8 * k, 8), "little")

    def usr1_seen(self) -> bool:
        return vmio.read(self.pid, self.addr + 2048, 1) == b"\x01"

    def memory(self) -> bytes:
        return vmio.read(self.pid, self.addr, self.pages * PAGE)

    def wait_for(self, cond: object, what: str, timeout: float = 30.0) -> None:
        """Poll until cond() holds (a bound for a hung test, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while not cond():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.005)

    def task_states(self) -> dict[int, str]:
        out = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                    out[int(tid)] = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                pass
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
