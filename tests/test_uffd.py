"""The uffd back end on the real kernel: three ways to get a uffd, causes, errors, cleanup,
and a concurrent logging writer that must never lose a write."""

from __future__ import annotations

import bisect
import errno
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from helpers.uffd_programs import PAGE, Target, WriteLog, build

import softdirty
from softdirty import _libc, scanner
from softdirty.backends.uffd import UffdBackend
from softdirty.dirtyset import Cause, DirtySet
from softdirty.errors import PTRACE_ATTACH, PTRACE_READ, AccessDenied, AddressSpaceReplaced, ProcessGone
from softdirty.pagemap import PM, PageCategory
from softdirty.process import TASK_SIZE_4LEVEL, LiveProcess
from softdirty.spawn import spawn
from softdirty.uffd_live import LiveUffd

pytestmark = pytest.mark.uffd_wp_async


@pytest.fixture(scope="module")
def exe() -> Iterator[str]:
    path = build()  # in a world-readable directory of its own: a target may run as nobody
    yield path
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


@pytest.fixture
def ctl(exe: str) -> Iterator[Target]:
    with Target(exe, "ctl") as t:
        yield t


def pages(ds: DirtySet, start: int, npages: int) -> dict[int, Cause]:
    """Page index -> causes, for the reported pages of [start, start + npages pages)."""
    out: dict[int, Cause] = {}
    end = start + npages * PAGE
    for r in ds:
        if r.end <= start or r.start >= end:
            continue
        for a in range(max(r.start, start), min(r.end, end), PAGE):
            out[(a - start) // PAGE] = r.flags
    return out


def written(ds: DirtySet, start: int, npages: int) -> set[int]:
    return {i for i, f in pages(ds, start, npages).items() if f == Cause.WRITTEN}


def wp_bits(pid: int, start: int, end: int) -> int:
    """How many pagemap entries of [start, end) in ``pid`` carry the uffd-wp bit (57)."""
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        got = scanner.scan_fd(fd, start, end, match_mask=int(PM.UFFD_WP), match_value=int(PM.UFFD_WP))
    finally:
        os.close(fd)
    r = got.ranges
    return sum(r[i + 1] - r[i] for i in range(0, len(r), 3)) // PAGE


def wp_allowed_pages(pid: int) -> int:
    """Pages of ``pid`` in VMAs registered in uffd-wp async mode (PAGEMAP_SCAN's WPALLOWED)."""
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        got = scanner.pagemap_scan(fd, 0, TASK_SIZE_4LEVEL, category_mask=int(PageCategory.WPALLOWED), return_mask=0)
    finally:
        os.close(fd)
    r = got.ranges
    return sum(r[i + 1] - r[i] for i in range(0, len(r), 3)) // PAGE


def user_wp_bits(pid: int) -> int:
    with LiveProcess(pid) as proc:
        return sum(wp_bits(pid, v.start, v.end) for v in proc.read_maps() if v.end <= TASK_SIZE_4LEVEL)


class OwnBuffer:
    """Anonymous memory of the test process itself, 4 KiB pages (no THP)."""

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.addr = _libc.mmap(npages * PAGE)
        _libc.madvise(self.addr, npages * PAGE, _libc.MADV_NOHUGEPAGE)

    def write(self, *indexes: int) -> None:
        for i in indexes:
            _libc.poke(self.addr + i * PAGE, 0x5A)

    def close(self) -> None:
        _libc.munmap(self.addr, self.npages * PAGE)


# -- the three ways ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["self", "spawn", "inject"])
def test_each_way_reports_exactly_the_written_pages_and_rearms(exe: str, how: str) -> None:
    if how == "self":
        buf = OwnBuffer(32)
        try:
            with softdirty.track(os.getpid(), backend="uffd") as t:
                t.reset()
                buf.write(1, 2, 9, 31)
                first = t.harvest()
                second = t.harvest()
                buf.write(2)
                third = t.harvest()
        finally:
            buf.close()
        addr = buf.addr
    else:
        child = spawn([exe, "ctl"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) \
            if how == "spawn" else None
        target = Target(exe, "ctl", popen=child.popen if child else None)
        try:
            addr = target.map(32)
            with softdirty.track(child if child else target.pid, backend="uffd") as t:
                t.reset()
                target.write(addr + PAGE, 2)
                target.write(addr + 9 * PAGE)
                target.write(addr + 31 * PAGE)
                first = t.harvest()
                second = t.harvest()
                target.write(addr + 2 * PAGE)
                third = t.harvest()
                assert isinstance(t.backend, UffdBackend)
        finally:
            target.close()
            if child:
                child.close()
    assert pages(first, addr, 32) == {1: Cause.WRITTEN, 2: Cause.WRITTEN, 9: Cause.WRITTEN, 31: Cause.WRITTEN}
    assert pages(second, addr, 32) == {}  # the harvest re-armed them
    assert pages(third, addr, 32) == {2: Cause.WRITTEN}
    assert first.backend == "uffd" and (first.epoch, second.epoch, third.epoch) == (1, 2, 3)


def test_injection_leaves_fds_and_execution_as_they_were(exe: str) -> None:
    with Target(exe, "spin") as target:
        counter = int(target.ready.split()[2], 16)
        fds = sorted(os.listdir(f"/proc/{target.pid}/fd"))

        def count() -> int:
            with open(f"/proc/{target.pid}/mem", "rb") as mem:
                mem.seek(counter)
                return int.from_bytes(mem.read(8), "little")

        with softdirty.track(target.pid, backend="uffd") as t:
            assert sorted(os.listdir(f"/proc/{target.pid}/fd")) == fds  # its copy is closed
            t.reset()
            before = count()
            deadline = time.monotonic() + 10
            while count() == before and time.monotonic() < deadline:
                time.sleep(0.001)
            ds = t.harvest()
            assert counter in ds and ds.flags_at(counter) == Cause.WRITTEN  # it kept counting
        assert count() != before and target.alive()


def test_spawned_child_is_tracked_from_its_first_instruction(exe: str) -> None:
    with spawn([exe, "ctl"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, suspended=True) as child:
        assert child.suspended and child.poll() is None
        with open(f"/proc/{child.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "t"  # held at the exec stop
        with softdirty.track(child, backend="uffd") as t:
            t.reset()
            at_exec = {(v.start, v.end): v for v in t.proc.read_maps()}
            child.resume()
            target = Target(exe, popen=child.popen)
            ds = t.harvest()
        # The loader and libc start-up wrote into memory that existed at exec
        # (stack, the loader's data): reported as written, not as new mappings.
        stack = [v for v in at_exec.values() if v.path == "[stack]"]
        loader = [v for v in at_exec.values() if "ld-linux" in v.path and v.writable]
        assert stack and loader
        for v in stack + loader:
            assert ds.pages_in(v.start, v.end) > 0, v
            assert all(r.flags == Cause.WRITTEN for r in ds if v.start <= r.start < v.end), v
        assert target.cmd("getpid") == [str(child.pid)]
        assert child.take_uffd_fd() is None  # the tracker took it


def test_spawn_handle(exe: str) -> None:
    with pytest.raises(TypeError):
        spawn("ls")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        spawn([exe, "ctl"], preexec_fn=lambda: None)
    child = spawn([exe, "nanosleep", "1"], stdout=subprocess.PIPE, text=True)
    assert child.wait(timeout=30) == 0 and child.returncode == 0
    assert child.stdout is not None and child.stdout.read().split()[0] == "ready"
    child.close()
    with spawn([exe, "ctl"], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        pid = child.pid
    assert child.returncode == -signal.SIGKILL  # leaving the block killed it
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, 0)
    with pytest.raises(FileNotFoundError):
        spawn(["/nonexistent/program"])


# -- causes ---------------------------------------------------------------------------------


def test_new_moved_dontneed_protnone_and_fork(ctl: Target) -> None:
    a = ctl.map(16)
    with softdirty.track(ctl.pid, backend="uffd") as t:
        t.reset()
        b = ctl.map(8)  # new: reported whole although only one page is written
        ctl.write(b)
        ds = t.harvest()
        assert pages(ds, b, 8) == {i: Cause.NEW_MAPPING for i in range(8)}
        assert pages(ds, a, 16) == {}
        # Moved by mremap: the kernel drops the registration at the destination.
        dest = b + (1 << 30)
        assert int(ctl.cmd(f"remap {a:x} 16 {dest:x}")[0], 16) == dest
        ds = t.harvest()
        assert pages(ds, dest, 16) == {i: Cause.MOVED for i in range(16)}
        assert pages(t.harvest(), dest, 16) == {}  # registered and armed again
        # Zapped pages lost their protection and read as zeros now.
        ctl.cmd(f"dontneed {dest + 4 * PAGE:x} 3")
        ctl.cmd(f"touch {dest + 6 * PAGE:x} 1")  # now the unprotected zero page: still not a write
        assert pages(t.harvest(), dest, 16) == {i: Cause.PROTECTION_LOST for i in (4, 5, 6)}
        # mprotect keeps the registration; PROT_NONE memory cannot be written.
        ctl.cmd(f"protect {dest:x} 16 0")
        assert pages(t.harvest(), dest, 16) == {}
        ctl.cmd(f"protect {dest:x} 16 3")
        ctl.write(dest + 7 * PAGE)
        assert pages(t.harvest(), dest, 16) == {7: Cause.WRITTEN}
        # A fork (no EVENT_FORK) strips the child, not us.
        child = int(ctl.cmd("fork")[0])
        try:
            ctl.write(dest + 3 * PAGE)
            assert pages(t.harvest(), dest, 16) == {3: Cause.WRITTEN}
            assert wp_allowed_pages(child) == 0
        finally:
            os.kill(child, signal.SIGKILL)
        # The heap grows by a new VMA (the registered one cannot merge with it).
        ctl.cmd("sbrk 1")
        t.harvest()
        old = int(ctl.cmd("sbrk 8")[0], 16)
        ctl.write(old + 2 * PAGE)
        assert pages(t.harvest(), old, 8) == {i: Cause.NEW_MAPPING for i in range(8)}
        assert pages(t.harvest(), old, 8) == {}
        # The stack grows in place: registered, but the new part was never armed.
        stack = next(v for v in t.proc.read_maps() if v.path == "[stack]")
        low = int(ctl.cmd("stack 100")[0], 16)
        grown = (stack.start - low) // PAGE
        assert grown > 0
        got = pages(t.harvest(), low, grown)
        assert len(got) == grown and all(f & Cause.NEW_MAPPING for f in got.values())
        assert pages(t.harvest(), low, grown) == {}
        # An unmapped range is simply gone.
        ctl.cmd(f"unmap {dest:x} 16")
        assert pages(t.harvest(), dest, 16) == {}


def test_untrackable_mappings_are_reported_untracked() -> None:
    with softdirty.track(os.getpid(), backend="uffd") as t:
        t.reset()
        ds = t.harvest()
        specials = [v for v in ds.vma_list if v.path in ("[vvar]", "[vsyscall]", "[vdso]")]
        assert specials  # x86-64 always has a vDSO
        for v in specials:
            assert ds.pages_in(v.start, v.end) == v.pages
            assert ds.flags_at(v.start) & Cause.UNTRACKED
        assert any("[vdso]" in note and "untracked" in note for note in ds.notes)
        assert ds.count(Cause.UNTRACKED) >= sum(v.pages for v in specials)


def test_shared_and_file_mappings_are_tracked(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "file")
    with open(path, "wb") as f:
        f.truncate(8 * PAGE)
    with open(path, "r+b") as f:
        fmap = mmap.mmap(f.fileno(), 8 * PAGE)
    shm = mmap.mmap(-1, 8 * PAGE)
    try:
        fbase = _libc.ctypes.addressof(_libc.ctypes.c_char.from_buffer(fmap))
        sbase = _libc.ctypes.addressof(_libc.ctypes.c_char.from_buffer(shm))
        with softdirty.track(os.getpid(), backend="uffd") as t:
            t.reset()
            fmap[3 * PAGE] = 1
            shm[5 * PAGE] = 1
            _ = shm[6 * PAGE]  # a read is not a write
            ds = t.harvest()
        assert pages(ds, fbase, 8) == {3: Cause.WRITTEN}
        assert pages(ds, sbase, 8) == {5: Cause.WRITTEN}
    finally:
        fmap.close()
        shm.close()


def test_armed_thp_reports_4k_and_nohugepage_is_applied(ctl: Target) -> None:
    a = ctl.map(1024, huge=True)  # 4 MiB, 2 MiB aligned, MADV_HUGEPAGE
    ctl.write(a, 1024)  # THPs where the kernel could make them
    with softdirty.track(ctl.pid, backend="uffd") as t:
        t.reset()
        ctl.write(a + 700 * PAGE)
        ctl.write(a + 3 * PAGE)
        got = pages(t.harvest(), a, 1024)
    # A write to an armed huge page splits it and unprotects only 4 KiB.
    assert got == {3: Cause.WRITTEN, 700: Cause.WRITTEN}
    b = ctl.map(1024, huge=True)
    with softdirty.track(ctl.pid, backend="uffd", nohugepage=True) as t:
        t.reset()
        with open(f"/proc/{ctl.pid}/smaps") as f:
            text = f.read()
        block = text[text.index(f"{b:x}-"):]
        flags = block[block.index("VmFlags:"):].split("\n", 1)[0].split()
        assert "nh" in flags and "hg" not in flags  # MADV_NOHUGEPAGE replaced MADV_HUGEPAGE
        ctl.write(b + 10 * PAGE, 3)
        assert wp_bits(ctl.pid, b, b + 1024 * PAGE) == 1024 - 3  # everything else stayed protected
        assert pages(t.harvest(), b, 1024) == {i: Cause.WRITTEN for i in (10, 11, 12)}
        assert wp_bits(ctl.pid, b, b + 1024 * PAGE) == 1024  # and the harvest re-armed those three


@pytest.mark.skipif(os.environ.get("SOFTDIRTY_IN_VM") != "1" and not os.path.exists("/proc/sys/vm/nr_hugepages"),
                    reason="needs hugetlb")
def test_hugetlb_is_reported_huge() -> None:
    free = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("HugePages_Free")))
    if free < 1:
        if os.environ.get("SOFTDIRTY_IN_VM") != "1":
            pytest.skip("no free huge pages (reserved only in the VM: SOFTDIRTY_IN_VM=1)")
        with open("/proc/sys/vm/nr_hugepages", "w") as f:
            f.write("2")
    size = 2 << 20
    addr = _libc.mmap(size, flags=_libc.MAP_PRIVATE | _libc.MAP_ANONYMOUS | _libc.MAP_HUGETLB)
    try:
        _libc.poke(addr)
        with softdirty.track(os.getpid(), backend="uffd") as t:
            t.reset()
            assert pages(t.harvest(), addr, 512) == {}
            _libc.poke(addr + 100 * PAGE)
            got = pages(t.harvest(), addr, 512)
        assert got == {i: Cause.WRITTEN | Cause.HUGE for i in range(512)}
    finally:
        _libc.munmap(addr, size)


# -- errors ----------------------------------------------------------------------------------


class KillMidHarvest(LiveProcess):
    """A live process whose k-th PAGEMAP_SCAN of a harvest first kills it."""

    def __init__(self, target: Target, kill_at: int, reap: bool) -> None:
        super().__init__(target.pid)
        self.target, self.kill_at, self.reap = target, kill_at, reap
        self.calls = -1  # counting starts with armed()

    def arm(self) -> None:
        self.calls = 0

    def pagemap_fileno(self) -> None:  # type: ignore[override]
        return None  # the back end then goes through pagemap_scan_ioctl

    def pagemap_scan_ioctl(self, start: int, end: int, **kw: int):  # type: ignore[no-untyped-def,override]
        if self.calls >= 0:
            self.calls += 1
            if self.calls == self.kill_at:
                os.kill(self.pid, signal.SIGKILL)
                if self.reap:
                    self.target.popen.wait()
                else:
                    while open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                        time.sleep(0.001)
        try:
            return scanner.pagemap_scan_ioctl(LiveProcess.pagemap_fileno(self), start, end, **kw)
        except OSError as exc:
            raise self.scan_error(exc) from None


@pytest.mark.parametrize("kill_at", [1, 2, 3])
@pytest.mark.parametrize("reap", [True, False])
def test_target_killed_mid_harvest_is_process_gone(exe: str, kill_at: int, reap: bool) -> None:
    with Target(exe, "ctl") as target:
        proc = KillMidHarvest(target, kill_at, reap)
        with softdirty.track(proc, backend="uffd") as t:
            t.reset()
            target.write(target.map(4))
            proc.arm()
            with pytest.raises(ProcessGone) as info:
                t.harvest()
        proc.close()
        assert proc.calls >= kill_at and not isinstance(info.value, AddressSpaceReplaced)
        assert info.value.pid == target.pid


def test_target_gone_before_harvest(ctl: Target) -> None:
    with softdirty.track(ctl.pid, backend="uffd") as t:
        t.reset()
        ctl.popen.kill()
        ctl.popen.wait()
        with pytest.raises(ProcessGone):
            t.harvest()


def test_exec_in_target_is_address_space_replaced(ctl: Target) -> None:
    with softdirty.track(ctl.pid, backend="uffd") as t:
        t.reset()
        ctl.send("exec")
        assert ctl.line().startswith("ready")
        with pytest.raises(AddressSpaceReplaced):
            t.harvest()
        assert ctl.alive()


def test_already_traced_target_is_access_denied(exe: str, ctl: Target) -> None:
    with Target(exe, "seize", str(ctl.pid)) as tracer:
        with pytest.raises(AccessDenied) as info:
            softdirty.track(ctl.pid, backend="uffd")
        assert info.value.permission == PTRACE_ATTACH
        assert f"already traced by process {tracer.pid}" in str(info.value)
    assert ctl.cmd("getpid") == [str(ctl.pid)]


def test_unprivileged_target_gets_user_mode_only_when_the_sysctl_says_so(exe: str) -> None:
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        unprivileged_allowed = f.read().strip() == "1"
    if os.getuid() != 0:
        pytest.skip("starting a target as another user needs root")
    with Target(exe, "ctl", user=65534, group=65534) as target:
        a = target.map(8)
        with softdirty.track(target.pid, backend="uffd") as t:
            t.reset()
            target.write(a + 2 * PAGE)
            assert pages(t.harvest(), a, 8) == {2: Cause.WRITTEN}
            assert isinstance(t.backend, UffdBackend) and isinstance(t.backend.uffd, LiveUffd)
            assert t.backend.uffd.user_mode_only is (not unprivileged_allowed)


UNPRIVILEGED = """
import json, os, subprocess, sys, softdirty
from softdirty import _libc
exe, root_pid, out = sys.argv[1], int(sys.argv[2]), {}
a = _libc.mmap(8 * 4096)
with softdirty.track(os.getpid(), backend="uffd") as t:
    t.reset()
    _libc.poke(a + 4096)
    ds = t.harvest()
    out["self"] = [[(r.start - a) // 4096 for r in ds if a <= r.start < a + 8 * 4096], t.backend.uffd.user_mode_only]
p = subprocess.Popen([exe, "ctl"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
p.stdout.readline()
p.stdin.write("map 8\\n"); p.stdin.flush()
b = int(p.stdout.readline().split()[1], 16)
with softdirty.track(p.pid, backend="uffd") as t:
    t.reset()
    p.stdin.write(f"write {b + 3 * 4096:x} 1\\n"); p.stdin.flush(); p.stdout.readline()
    ds = t.harvest()
    out["child"] = [[(r.start - b) // 4096 for r in ds if b <= r.start < b + 8 * 4096], t.backend.uffd.user_mode_only]
p.kill()
try:
    softdirty.track(root_pid, backend="uffd")
except softdirty.AccessDenied as exc:
    out["root"] = exc.permission
print(json.dumps(out))
"""


def nobody_python() -> str | None:
    """An interpreter that can import this softdirty as uid 65534 (ours may live under /root)."""
    tree = os.path.dirname(os.path.dirname(softdirty.__file__))
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            ok = subprocess.run([python, "-c", "import softdirty"], user=65534, group=65534,
                                env={"PYTHONPATH": tree}, capture_output=True, cwd="/")
        except OSError:  # not even executable for that user
            continue
        if ok.returncode == 0:
            return python
    return None


def test_unprivileged_tracker(exe: str, ctl: Target) -> None:
    if os.getuid() != 0:
        pytest.skip("switching to an unprivileged user needs root")
    python = nobody_python()
    if python is None:
        pytest.skip("no interpreter that uid 65534 may run can import softdirty from this tree")
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        user_mode_only = f.read().strip() == "0"
    tree = os.path.dirname(os.path.dirname(softdirty.__file__))
    got = subprocess.run([python, "-c", UNPRIVILEGED, exe, str(ctl.pid)], user=65534, group=65534,
                         env={"PYTHONPATH": tree}, capture_output=True, text=True, cwd="/")
    assert got.returncode == 0, got.stderr
    result = json.loads(got.stdout)
    assert result["self"] == [[1], user_mode_only]  # our own uffd: UFFD_USER_MODE_ONLY when the sysctl says 0
    assert result["child"] == [[3], user_mode_only]  # injected into a same-user process
    assert result["root"] in (PTRACE_ATTACH, PTRACE_READ)  # a root process: refused, and it says what is missing


def test_bad_options() -> None:
    with pytest.raises(TypeError):
        softdirty.track(os.getpid(), backend="uffd", nohugepage=1)
    with pytest.raises(ValueError):
        softdirty.track(os.getpid(), backend="uffd", max_vma_bytes=0)
    with pytest.raises(TypeError):
        softdirty.track(os.getpid(), backend="uffd", no_such_option=True)


def test_large_vma_is_untracked_not_armed() -> None:
    size = 64 * PAGE
    addr = _libc.mmap(size)
    try:
        with softdirty.track(os.getpid(), backend="uffd", max_vma_bytes=32 * PAGE) as t:
            t.reset()
            ds = t.harvest()
            assert pages(ds, addr, 64) == {i: Cause.UNTRACKED for i in range(64)}
            assert wp_bits(os.getpid(), addr, addr + size) == 0
    finally:
        _libc.munmap(addr, size)


# -- cleanup -----------------------------------------------------------------------------------


def test_close_unregisters_and_unprotects(ctl: Target) -> None:
    a = ctl.map(16)
    ctl.write(a, 16)
    t = softdirty.track(ctl.pid, backend="uffd")
    t.reset()
    assert wp_bits(ctl.pid, a, a + 16 * PAGE) == 16 and wp_allowed_pages(ctl.pid) > 0
    t.close()
    assert user_wp_bits(ctl.pid) == 0 and wp_allowed_pages(ctl.pid) == 0
    ctl.write(a, 16)
    assert ctl.cmd(f"touch {a:x} 16") == [str(16 * 2)]


TRACKER = """
import sys, time, softdirty
t = softdirty.track(int(sys.argv[1]), backend="uffd")
t.reset()
print("armed", flush=True)
time.sleep(600)
"""


def test_sigkilled_tracker_leaves_target_running_and_unregistered(ctl: Target) -> None:
    a = ctl.map(16)
    ctl.write(a, 16)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(softdirty.__file__)))
    tracker = subprocess.Popen([sys.executable, "-c", TRACKER, str(ctl.pid)], stdout=subprocess.PIPE, text=True,
                               env=env)
    try:
        assert tracker.stdout is not None and tracker.stdout.readline().strip() == "armed"
        assert wp_bits(ctl.pid, a, a + 16 * PAGE) == 16 and wp_allowed_pages(ctl.pid) > 0
        ctl.write(a + PAGE)  # the target runs while tracked
    finally:
        tracker.kill()
        tracker.wait()
    assert tracker.returncode == -signal.SIGKILL
    assert user_wp_bits(ctl.pid) == 0 and wp_allowed_pages(ctl.pid) == 0
    ctl.write(a, 16)
    assert ctl.cmd(f"touch {a:x} 16") == [str(16 * 2 + 1)]


# -- the concurrent writer ----------------------------------------------------------------------


@dataclass
class Stats:
    harvests: int
    writes: int
    lost: int
    extra: int
    stated: int  # buffer pages reported with a cause other than WRITTEN
    busy: int  # harvests during which the writer logged writes


def run_writer(exe: str, tmp: str, *, harvests: int, huge: bool, nohugepage: bool, how: str,
               npages: int = 2048, rate: int = 100) -> Stats:
    log = WriteLog(os.path.join(tmp, f"log-{how}-{int(huge)}"), capacity=1 << 21)
    args = ["writer", str(npages), log.path, str(rate), "1" if huge else "0"]
    child = spawn([exe, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) if how == "spawn" else None
    target = Target(exe, *args, popen=child.popen if child else None)
    try:
        base = log.field(1)
        assert log.field(2) == npages
        marks = [(0, 0)]  # log count (before, after) each harvest; [0] is the reset
        reports: list[dict[int, Cause]] = [{}]
        with softdirty.track(child if child else target.pid, backend="uffd", nohugepage=nohugepage) as t:
            t.reset()
            target.send("go")
            for j in range(harvests + 1):
                if j == harvests:  # the last one after the writer stopped
                    log.stop()
                    while not log.done:
                        time.sleep(0.001)
                before = log.count
                ds = t.harvest()
                after = log.count
                marks.append((before, after))
                reports.append(pages(ds, base, npages))
        total = log.count
        addrs = log.addresses(total)
    finally:
        target.close()
        log.close()
        if child:
            child.close()
    starts = [m[0] for m in marks]
    ends = [m[1] for m in marks]
    lost = 0
    for i, addr in enumerate(addrs):
        page = (addr - base) // PAGE
        last = bisect.bisect_right(starts, i, lo=1)  # first harvest that began after write i was logged
        first = max(bisect.bisect_left(ends, i, lo=1), 1)  # harvests that ended before write i-1 cannot see it
        if not any(page in reports[j] for j in range(first, last + 1)):
            lost += 1
    by_page: dict[int, list[int]] = {}
    for i, addr in enumerate(addrs):
        by_page.setdefault((addr - base) // PAGE, []).append(i)
    extra = stated = 0
    for j in range(1, len(reports)):
        for page, cause in reports[j].items():
            if cause != Cause.WRITTEN:
                stated += 1
                continue
            writes = by_page.get(page, [])
            k = bisect.bisect_left(writes, starts[j - 1])  # writes after harvest j-1 began
            if k == len(writes) or writes[k] > ends[j]:
                extra += 1
    busy = sum(1 for s, e in marks[1:] if e > s)
    return Stats(len(marks) - 1, total, lost, extra, stated, busy)


@pytest.mark.parametrize(("how", "huge", "nohugepage", "harvests"), [
    ("inject", False, True, 300),
    ("inject", True, False, 200),
    ("spawn", False, False, 150),
])
def test_concurrent_writer_loses_no_write(exe: str, tmp_path: pytest.TempPathFactory, how: str, huge: bool,
                                          nohugepage: bool, harvests: int) -> None:
    stats = run_writer(exe, str(tmp_path), harvests=harvests, huge=huge, nohugepage=nohugepage, how=how)
    print(f"\nuffd concurrent writer ({how}, thp={huge}, nohugepage={nohugepage}): {stats.harvests} harvests, "
          f"writes checked {stats.writes}, lost {stats.lost}, extra {stats.extra}, "
          f"stated-cause pages {stats.stated}, harvests with concurrent writes {stats.busy}")
    assert stats.writes > stats.harvests  # the writer really ran alongside
    assert stats.lost == 0
    assert stats.extra == 0  # every page reported as plain WRITTEN was written in its window
    if nohugepage:
        assert stats.stated == 0  # nothing unwritten is reported, with or without a cause


def test_errno_names() -> None:  # the errno the back end relies on to tell exit from other failures
    assert errno.ESRCH == 3
