"""The C target of the uffd tests (``uffd_target.c``): building it and talking to it."""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("uffd_target.c")
PAGE = 4096


def build(directory: str | os.PathLike[str] | None = None) -> str:
    """Compile the target into a world-readable directory (non-root targets exec it)."""
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is needed to build tests/helpers/uffd_target.c")
    where = tempfile.mkdtemp(prefix="uffd-target-", dir=directory)
    os.chmod(where, 0o755)
    exe = os.path.join(where, "uffd_target")
    subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", exe, str(SOURCE)], check=True)
    return exe


class Target:
    """A running uffd_target: ``cmd()`` sends one line and returns the answer's words."""

    def __init__(self, exe: str, *args: str, popen: subprocess.Popen[str] | None = None, **kw: Any) -> None:
        self.popen = popen or subprocess.Popen([exe, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               text=True, **kw)
        self.ready = self.line()
        if not self.ready.startswith("ready"):
            raise RuntimeError(f"target did not start: {self.ready!r}")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def line(self) -> str:
        assert self.popen.stdout is not None
        return self.popen.stdout.readline().strip()

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def cmd(self, text: str) -> list[str]:
        self.send(text)
        words = self.line().split()
        if not words or words[0] != "ok":
            raise RuntimeError(f"{text!r} -> {words!r}")
        return words[1:]

    def map(self, pages: int, huge: bool = False) -> int:
        return int(self.cmd(f"{'hmap' if huge else 'map'} {pages}")[0], 16)

    def write(self, addr: int, pages: int = 1) -> None:
        self.cmd(f"write {addr:x} {pages}")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        for f in (self.popen.stdin, self.popen.stdout):
            if f is not None:
                f.close()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_in_syscall(pid: int, numbers: Sequence[int], timeout: float = 10.0) -> None:
    """Wait until the main thread sleeps in one of these system calls."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/syscall") as f:
            last = f.read().split(" ", 1)[0].strip()
        if last.isdigit() and int(last) in numbers:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "S":
                    return
        time.sleep(0.002)
    raise TimeoutError(f"process {pid} is not blocked in {list(numbers)} (last: {last})")


HEADER = struct.Struct("<8Q")  # count, base, npages, stop, done, capacity, pad, pad


class WriteLog:
    """The writer's shared log: a header, then one u64 address per write, in order."""

    def __init__(self, path: str, capacity: int) -> None:
        self.path = path
        with open(path, "wb") as f:
            f.truncate(HEADER.size + 8 * capacity)
        self._f = open(path, "r+b")
        self.map = mmap.mmap(self._f.fileno(), 0)

    def field(self, index: int) -> int:
        return int(struct.unpack_from("<Q", self.map, 8 * index)[0])

    @property
    def count(self) -> int:
        return self.field(0)

    @property
    def done(self) -> bool:
        return self.field(4) != 0

    def stop(self) -> None:
        struct.pack_into("<Q", self.map, 24, 1)

    def addresses(self, n: int) -> list[int]:
        return list(struct.unpack_from(f"<{n}Q", self.map, HEADER.size))

    def close(self) -> None:
        self.map.close()
        self._f.close()
