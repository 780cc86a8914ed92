"""Bounds: harvest memory does not grow with the address-space size; no fd or thread leaks over
many track/close cycles (/proc/self/fd, /proc/self/task).

Sizes: 10,000 cycles on an emulated process (the cheapest back end path) in CI; live uffd
track/close cycles (ptrace injection each time) 200 in CI, 2,000 with --stress; 10,000 live
LiveProcess open/close cycles in CI."""

from __future__ import annotations

import os
import subprocess
import threading
import tracemalloc

import pytest
from stress.targets import build

import softdirty
from softdirty.answer import Answer
from softdirty.process import LiveProcess

GIB = 1 << 30
BIG_MAP = r"""
import mmap, sys, time
size = int(sys.argv[1])
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)  # MAP_NORESERVE
for off in range(0, size, size // 4096):  # 4096 scattered pages present: many runs, many windows
    m[off] = 1
print("ready", flush=True)
time.sleep(3600)
"""


class PretendSoftDirty(LiveProcess):
    """Soft-dirty's windowed pagemap walk runs here even though the host lacks the bits."""

    def feature(self, name: str) -> Answer:
        if name == "soft_dirty":
            return Answer(True, "pretended: memory use of the walk is under test")
        return super().feature(name)


def peak_harvest_bytes(size: int, backend: str) -> int:
    import sys

    p = subprocess.Popen([sys.executable, "-c", BIG_MAP, str(size)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        target = PretendSoftDirty(p.pid) if backend == "softdirty" else p.pid
        with softdirty.track(target, backend=backend) as t:
            t.reset()
            tracemalloc.start()
            try:
                if backend == "softdirty":
                    t.harvest(method="pagemap")
                else:
                    t.harvest()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        return peak
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("backend", ["softdirty", "uffd"])
def test_harvest_memory_does_not_grow_with_the_address_space(backend: str) -> None:
    small = peak_harvest_bytes(GIB // 16, backend)
    big = peak_harvest_bytes(64 * GIB + (64 << 20), backend)  # 1,024x more address space
    print(f"\n[reliability] harvest peak Python memory, {backend}: 64 MiB mapping {small} B, "
          f"64 GiB mapping {big} B")
    # Reading 64 GiB of pagemap at once would take 128 MiB; a bounded walk stays at its windows.
    assert big < 16 << 20
    assert big < 8 * small + (4 << 20)


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def test_no_leaks_over_10000_emulated_track_cycles() -> None:
    from softdirty.emulator import EmulatedProcess, get_profile

    try:
        proc = EmulatedProcess(get_profile("6.12", soft_dirty=True))
    except (TypeError, ValueError) as exc:
        pytest.skip(f"emulator profile unavailable: {exc}")
    addr = proc.mmap(0, 16 * 4096, 3, 0x22)
    f0, t0, th0 = fds(), tasks(), threading.active_count()
    for i in range(10_000):
        with softdirty.track(proc, backend="softdirty") as t:
            t.reset()
            proc.write(addr + (i % 16) * 4096, b"x")
            assert addr + (i % 16) * 4096 in t.harvest()
    print(f"\n[reliability] 10000 emulated track/close cycles: fds {f0}->{fds()}, tasks {t0}->{tasks()}")
    assert (fds(), tasks(), threading.active_count()) == (f0, t0, th0)


def test_no_leaks_over_10000_live_open_close_cycles() -> None:
    p = subprocess.Popen([build("victim"), "-2"], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None
        p.stdout.readline()
        f0, t0 = fds(), tasks()
        for _ in range(10_000):
            with LiveProcess(p.pid) as proc:
                proc.read_pagemap(0, 8)
        print(f"\n[reliability] 10000 LiveProcess open/close cycles: fds {f0}->{fds()}, tasks {t0}->{tasks()}")
        assert (fds(), tasks()) == (f0, t0)
    finally:
        p.kill()
        p.wait()


@pytest.mark.uffd_wp_async
def test_no_leaks_over_live_uffd_track_cycles(stress: int) -> None:
    n = 200 * stress
    p = subprocess.Popen([build("victim"), "-1"], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None
        p.stdout.readline()
        f0, t0 = fds(), tasks()
        for _ in range(n):
            with softdirty.track(p.pid, backend="uffd") as t:
                t.harvest()
        print(f"\n[reliability] {n} live uffd track/close cycles: fds {f0}->{fds()}, tasks {t0}->{tasks()}; "
              f"target fds {len(os.listdir(f'/proc/{p.pid}/fd'))}")
        assert (fds(), tasks()) == (f0, t0)
        assert len(os.listdir(f"/proc/{p.pid}/fd")) == 3  # no uffd left behind in the target
    finally:
        p.kill()
        p.wait()
