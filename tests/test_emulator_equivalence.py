"""The emulator held against the real kernel, operation by operation.

A puppet (``csrc/puppet.c``, compiled here with gcc) performs memory
operations at fixed addresses inside an arena; a hypothesis state machine
drives the puppet and an :class:`~softdirty.emulator.EmulatedProcess` with
the same random operations and, after every step, compares over the whole
arena (and a forked child's):

* each operation's result (return value, errno, SIGSEGV/SIGBUS, byte read);
* ``/proc/PID/maps`` lines inside the arena;
* every pagemap entry: flag bits exactly; PFNs and swap slots as equality
  classes that must also stay consistent from step to step;
* PAGEMAP_SCAN over the arena with every category returned (6.7+).

Real nondeterminism is read off the real side and fed to the emulator, never
absorbed by a looser comparison: whether a THP could be allocated, which
pages fault-around mapped, which pages reclaim managed to evict, and
khugepaged collapses.  The test prints a summary line per kernel.
"""

from __future__ import annotations

import ctypes
import faulthandler
import fcntl
import os
import select
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from softdirty.emulator import EmuFile, EmulatedProcess, get_profile
from softdirty.emulator.memory import Machine
from softdirty.emulator.process import BusError, SegmentationFault, UffdBlocked
from softdirty.maps import parse_maps
from softdirty.pagemap import PAGE_REGION, PAGEMAP_SCAN, PM_FLAGS_MASK, PM_PFRAME_MASK, PM_SCAN_ARG

ROOT = Path(__file__).resolve().parent.parent
PAGE = 4096
HPAGE = 2 << 20
ARENA = 0x300000000000  # 1 GiB aligned, far from libraries, heap and stack
NBLOCKS = 3
NPAGES = NBLOCKS * 512
FILE_PAGES = 2 * NPAGES
PM_PRESENT, PM_SWAP = 1 << 63, 1 << 62
ALL_CATEGORIES_6_12 = 0xFF
ALL_CATEGORIES = 0x1FF
TIMEOUT = 20.0

PROT_R, PROT_W, PROT_X = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANON, MAP_POPULATE = 0x01, 0x02, 0x10, 0x20, 0x8000
MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4
UFFD_FEATURE_WP_ASYNC = 1 << 15
ADVICE = {
    "DONTNEED": 4, "FREE": 8, "REMOVE": 9, "HUGEPAGE": 14, "NOHUGEPAGE": 15, "COLD": 20, "PAGEOUT": 21,
    "POPULATE_READ": 22, "POPULATE_WRITE": 23, "GUARD_INSTALL": 102, "GUARD_REMOVE": 103,
}


# --------------------------------------------------------------------------- the real side
def _file_byte(pgoff: int) -> int:
    return pgoff % 251 + 1


@dataclass
class Env:
    """What the host is: kernel profile inputs, the puppet binary, the data file."""

    exe: str
    file: str
    release: str
    profile_name: str
    overrides: dict[str, object]
    scan: bool
    slowest: tuple[float, str] = (0.0, "")
    stats: dict[str, int] = field(default_factory=lambda: {"examples": 0, "steps": 0, "mismatches": 0,
                                                           "fed_thp": 0, "fed_collapse": 0,
                                                           "exit_waits_timed_out": 0})


def _read_sys(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _bracketed(text: str) -> str:
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else text


def _kernel_profile_name(release: str) -> str:
    major, minor = (int(x) for x in release.split(".")[:2])
    if (major, minor) >= (6, 18):
        return "6.18"
    if (major, minor) >= (6, 12):
        return "6.12"
    return "6.1"


class Puppet:
    """The real process: one command line in, one reply line out."""

    def __init__(self, env: Env) -> None:
        self.proc = subprocess.Popen([env.exe, f"{ARENA:x}", env.file, "0"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = self._line()
        if not ready.startswith("READY"):
            raise RuntimeError(f"puppet did not start: {ready!r}")
        self.pid = int(ready.split()[1])
        self.pagemap = os.open(f"/proc/{self.pid}/pagemap", os.O_RDONLY)
        self.child_pid: int | None = None
        self.child_pagemap = -1

    def _line(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        if not ready:
            raise RuntimeError("the puppet did not answer (hung in a fault?)")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the puppet died (status {self.proc.poll()})")
        return line.strip()

    def cmd(self, *words: object) -> tuple[str, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()
        parts = self._line().split()
        return parts[0], int(parts[1]) if len(parts) > 1 else 0

    def fork(self) -> tuple[str, int]:
        r = self.cmd("fork")
        if r[0] == "OK":
            self.child_pid = r[1]
            self.child_pagemap = os.open(f"/proc/{r[1]}/pagemap", os.O_RDONLY)
        return r

    def child_exit(self) -> None:
        self.cmd("c", "exit")
        os.close(self.child_pagemap)
        self.child_pid, self.child_pagemap = None, -1

    def close(self) -> None:
        for fd in (self.pagemap, self.child_pagemap):
            if fd >= 0:
                os.close(fd)
        try:
            if self.proc.poll() is None:
                self.cmd("quit")
                self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()
            self.proc.wait()

    # -- observation -------------------------------------------------------------
    @staticmethod
    def entries(fd: int) -> list[int]:
        data = os.pread(fd, NPAGES * 8, (ARENA >> 12) * 8)
        return list(struct.unpack(f"<{NPAGES}Q", data))

    @staticmethod
    def maps(pid: int) -> list[tuple[int, int, str, int, str]]:
        text = Path(f"/proc/{pid}/maps").read_text()
        return _arena_maps(parse_maps(text))

    @staticmethod
    def scan(fd: int, start: int, end: int, *, flags: int = 0, inverted: int = 0, mask: int = 0, anyof: int = 0,
             ret: int = ALL_CATEGORIES, max_pages: int = 0, vec_len: int = 4096) -> tuple[int, list[int], int]:
        """(errno or 0, flat triples, walk_end) of one real PAGEMAP_SCAN."""
        vec = ctypes.create_string_buffer(max(vec_len, 1) * PAGE_REGION.size)
        arg = bytearray(PM_SCAN_ARG.pack(PM_SCAN_ARG.size, flags, start, end, 0,
                                         ctypes.addressof(vec) if vec_len else 0, vec_len, max_pages,
                                         inverted, mask, anyof, ret))
        try:
            n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg, True)
        except OSError as exc:
            walk_end = PM_SCAN_ARG.unpack(bytes(arg))[4]
            return exc.errno or 0, [], walk_end
        walk_end = PM_SCAN_ARG.unpack(bytes(arg))[4]
        out: list[int] = []
        for k in range(n):
            out.extend(PAGE_REGION.unpack_from(vec.raw, k * PAGE_REGION.size))
        return 0, out, walk_end


_HANG_DUMP: list[object] = []


def _hang_dump():  # type: ignore[no-untyped-def]
    """Where a hung step's traceback goes: $SOFTDIRTY_EMULATOR_HANGDUMP, else stderr."""
    if not _HANG_DUMP:
        path = os.environ.get("SOFTDIRTY_EMULATOR_HANGDUMP")
        _HANG_DUMP.append(open(path, "a") if path else sys.__stderr__)  # noqa: SIM115
    return _HANG_DUMP[0]


def _arena_maps(vmas: list) -> list[tuple[int, int, str, int, str]]:
    out = []
    for v in vmas:
        if v.end <= ARENA or v.start >= ARENA + NPAGES * PAGE:
            continue
        kind = "shmem" if v.path == "/dev/zero" else ("anon" if v.anonymous else "file")
        out.append((v.start - ARENA, v.end - ARENA, v.perms, v.offset if kind != "anon" else 0, kind))
    return out


# --------------------------------------------------------------------------- PFN equality classes
class Frames:
    """A real<->emulated frame bijection that must hold at each step and across steps."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.r2e: dict[int, int] = {}
        self.e2r: dict[int, int] = {}

    def check(self, pairs: list[tuple[int, int, str]]) -> list[str]:
        problems = []
        now_r: dict[int, int] = {}
        now_e: dict[int, int] = {}
        for r, e, where in pairs:
            if now_r.setdefault(r, e) != e:
                problems.append(f"{self.what}: real {r:#x} at {where} pairs with two emulated frames")
            if now_e.setdefault(e, r) != r:
                problems.append(f"{self.what}: emulated {e:#x} at {where} pairs with two real frames")
        visible_e = set(now_e)
        visible_r = set(now_r)
        for r, e in now_r.items():
            old_r = self.e2r.get(e)
            if old_r is not None and old_r != r and old_r in visible_r:
                problems.append(f"{self.what}: the emulator kept frame {e:#x} but the real page moved "
                                f"from {old_r:#x} to {r:#x}")
            old_e = self.r2e.get(r)
            if old_e is not None and old_e != e and old_e in visible_e:
                problems.append(f"{self.what}: the real frame {r:#x} stayed but the emulator "
                                f"replaced {old_e:#x} with {e:#x}")
        for r, e in now_r.items():
            stale = self.r2e.get(r)
            if stale is not None:
                self.e2r.pop(stale, None)
            stale_r = self.e2r.get(e)
            if stale_r is not None:
                self.r2e.pop(stale_r, None)
            self.r2e[r] = e
            self.e2r[e] = r
        return problems


# --------------------------------------------------------------------------- the world
class World:
    """Puppet + emulator, stepped together and compared after every step."""

    def __init__(self, env: Env) -> None:
        self.env = env
        _reset_file(env.file)  # earlier examples wrote to it or punched holes
        profile = get_profile(env.profile_name, **env.overrides)  # type: ignore[arg-type]
        self.machine = Machine(profile)
        self.machine.thp_oracle = self._thp_oracle
        self.emu = EmulatedProcess(self.machine)
        self.efile = EmuFile(env.file, FILE_PAGES * PAGE, kind=_file_kind(env.file))
        for pg in range(FILE_PAGES):
            self.efile.disk[pg] = {0: _file_byte(pg)}
            f = self.machine.alloc_folio(anon=False, file=self.efile, index=pg)
            f.data[0] = {0: _file_byte(pg)}
            self.efile.cache[pg] = f
        self.echild: EmulatedProcess | None = None
        self.euffd = None
        self.real = Puppet(env)
        self.frames = Frames("PFN")
        self.slots = Frames("swap slot")
        self.real_thp: set[int] = set()
        self.last_real: list[int] = Puppet.entries(self.real.pagemap)
        self.log: list[str] = []
        self.uffd_api_done = False
        env.stats["examples"] += 1

    def close(self) -> None:
        self.real.close()

    # -- nondeterminism fed from the real side -----------------------------------------
    def _thp_oracle(self, addr: int) -> bool:
        block = (addr - ARENA) // HPAGE
        return block in self.real_thp

    @staticmethod
    def _thp_blocks(entries: list[int]) -> set[int]:
        """2 MiB blocks backed by one naturally aligned 2 MiB run of frames."""
        out = set()
        for b in range(NBLOCKS):
            ents = entries[b * 512:(b + 1) * 512]
            base = ents[0] & PM_PFRAME_MASK
            if not ents[0] & PM_PRESENT or base % 512 or not base:
                continue
            if all(e & PM_PRESENT and e & PM_PFRAME_MASK == base + i for i, e in enumerate(ents)):
                out.add(b)
        return out

    # -- stepping ---------------------------------------------------------------------
    def step(self, desc: str, real_words: tuple[object, ...], emu_call, *, child: bool = False,
             hints: str = "") -> None:
        """Run one operation on both sides and compare everything."""
        self.env.stats["steps"] += 1
        self.log.append(desc)
        t0 = time.monotonic()
        # A step that takes a minute is a bug (or a hung puppet): show where, even under capture.
        faulthandler.dump_traceback_later(60, file=_hang_dump())
        try:
            self._step(desc, real_words, emu_call, child=child, hints=hints)
        finally:
            faulthandler.cancel_dump_traceback_later()
            took = time.monotonic() - t0
            if took > self.env.slowest[0]:
                self.env.slowest = (took, desc)

    def _step(self, desc: str, real_words: tuple[object, ...], emu_call, *, child: bool, hints: str) -> None:
        before = self.last_real if not child else Puppet.entries(self.real.child_pagemap)
        real = self.real.cmd("c", *real_words) if child else self.real.cmd(*real_words)
        after = Puppet.entries(self.real.child_pagemap if child else self.real.pagemap)
        self.real_thp = self._thp_blocks(after)
        if self.real_thp - self._thp_blocks(before):
            self.env.stats["fed_thp"] += 1
        newly = {ARENA + i * PAGE for i in range(NPAGES) if not before[i] & (PM_PRESENT | PM_SWAP)
                 and after[i] & PM_PRESENT}
        gone = {ARENA + i * PAGE for i in range(NPAGES) if before[i] & PM_PRESENT
                and not after[i] & PM_PRESENT}
        kwargs: dict[str, object] = {}
        if hints == "fault_around":
            kwargs["fault_around"] = newly
        elif hints == "reclaim":
            kwargs["reclaim"] = gone
        try:
            value = emu_call(**kwargs)
            emu = ("OK", 0 if value is None else value)
        except OSError as exc:
            emu = ("ERR", exc.errno or 0)
        except SegmentationFault:
            emu = ("SEGV", 0)
        except BusError:
            emu = ("BUS", 0)
        except UffdBlocked as exc:  # the real puppet would hang: never generated
            raise AssertionError(f"emulator blocked on a userfault: {exc}") from None
        problems = []
        if real != emu and not (real[0] == emu[0] == "OK" and real_words[0] in ("mmap", "mremap")
                                and isinstance(emu[1], int) and emu[1] - ARENA == real[1]):
            problems.append(f"result: real {real} emulator {emu}")
        self.compare(problems)

    def settle_after_exit(self) -> None:
        """The child's mm is torn down after waitpid() returns (observed on 6.18: the
        parent's pages regain PM_MMAP_EXCLUSIVE a little later).  Wait, briefly,
        for the teardown the emulator has already done; compare() stays exact."""
        want = [e & PM_FLAGS_MASK for e in self.emu.pagemap_entries(ARENA, ARENA + NPAGES * PAGE)]
        for _ in range(200):
            if [e & PM_FLAGS_MASK for e in Puppet.entries(self.real.pagemap)] == want:
                return
            time.sleep(0.005)
        self.env.stats["exit_waits_timed_out"] += 1

    def compare(self, problems: list[str], *, retry: bool = True) -> None:
        real_ents = Puppet.entries(self.real.pagemap)
        self.last_real = real_ents
        problems += self._compare_proc("parent", self.real.pid, self.real.pagemap, self.emu, real_ents)
        child_ents = None
        if self.echild is not None and self.real.child_pid is not None:
            child_ents = Puppet.entries(self.real.child_pagemap)
            problems += self._compare_proc("child", self.real.child_pid, self.real.child_pagemap, self.echild,
                                           child_ents)
        if problems and retry:
            fed = self._feed_collapse(self.emu, real_ents, "parent")
            if child_ents is not None and self.echild is not None:
                fed = self._feed_collapse(self.echild, child_ents, "child") or fed
            if fed:
                problems = [p for p in problems if p.startswith("result") or p.startswith("scan result")]
                self.compare(problems, retry=False)
                return
        if problems:
            self.env.stats["mismatches"] += 1
            detail = "\n  ".join(problems[:25])
            steps = self.log if len(self.log) <= 80 else ["..."] + self.log[-80:]
            raise AssertionError(f"emulator and Linux {self.env.release} disagree after "
                                 f"{len(self.log)} steps:\n  {detail}\nsteps:\n  " + "\n  ".join(steps))

    def _feed_collapse(self, emu: EmulatedProcess, real_ents: list[int], who: str) -> bool:
        """khugepaged: a block the real side now has as a THP the emulator has in small pages."""
        fed = False
        emu_ents = list(emu.pagemap_entries(ARENA, ARENA + NPAGES * PAGE))
        for b in self._thp_blocks(real_ents) - self._thp_blocks(emu_ents):
            addr = ARENA + b * HPAGE
            v = emu.find_vma(addr)
            if v is None or not v.anonymous:
                continue
            emu.khugepaged_collapse(addr)
            self.env.stats["fed_collapse"] += 1
            self.log.append(f"(khugepaged collapsed {who} block {b} on the real side; fed to the emulator)")
            fed = True
        return fed

    def _compare_proc(self, who: str, pid: int, fd: int, emu: EmulatedProcess, real_ents: list[int]) -> list[str]:
        problems = []
        real_maps = Puppet.maps(pid)
        emu_maps = _arena_maps(emu.maps())
        emu_maps = [(s, e, p, o, k) for s, e, p, o, k in emu_maps]
        if real_maps != emu_maps:
            problems.append(f"{who} maps: real {_fmt_maps(real_maps)} emulator {_fmt_maps(emu_maps)}")
        emu_ents = list(emu.pagemap_entries(ARENA, ARENA + NPAGES * PAGE))
        pairs, slots = [], []
        bad = 0
        for i, (r, e) in enumerate(zip(real_ents, emu_ents, strict=True)):
            if r & PM_FLAGS_MASK != e & PM_FLAGS_MASK:
                if bad < 12:
                    problems.append(f"{who} page {i} ({ARENA + i * PAGE:#x}): real {_fmt_pm(r)} emulator {_fmt_pm(e)}")
                bad += 1
                continue
            if r & PM_PRESENT:
                pairs.append((r & PM_PFRAME_MASK, e & PM_PFRAME_MASK, f"{who} page {i}"))
            elif r & PM_SWAP:
                slots.append((r & PM_PFRAME_MASK, e & PM_PFRAME_MASK, f"{who} page {i}"))
        if bad > 12:
            problems.append(f"{who}: {bad - 12} more pages differ")
        if self.env.overrides.get("pfn_visible", True):
            problems += self.frames.check(pairs)
            problems += self.slots.check(slots)
        if self.env.scan:
            rerr, rreg, rend = Puppet.scan(fd, ARENA, ARENA + NPAGES * PAGE, ret=self._all_cats())
            try:
                ereg_a, eend = emu.pagemap_scan_ioctl(ARENA, ARENA + NPAGES * PAGE, return_mask=self._all_cats(),
                                                      vec_len=4096)
                eerr, ereg = 0, list(ereg_a)
            except OSError as exc:
                eerr, ereg, eend = exc.errno or 0, [], 0
            if (rerr, rreg, rend) != (eerr, ereg, eend):
                problems.append(f"{who} PAGEMAP_SCAN: real {rerr} {_fmt_regions(rreg)} walk_end {rend:#x}; "
                                f"emulator {eerr} {_fmt_regions(ereg)} walk_end {eend:#x}")
        return problems

    def _all_cats(self) -> int:
        return ALL_CATEGORIES if self.emu.profile.scan_guard else ALL_CATEGORIES_6_12


def _file_kind(path: str) -> str:
    return "tmpfs" if _is_tmpfs(path) else "regular"


def _is_tmpfs(path: str) -> bool:
    best, fstype = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        mnt = parts[1]
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return fstype in ("tmpfs", "shmem")


def _fmt_pm(v: int) -> str:
    names = [n for b, n in ((63, "P"), (62, "S"), (61, "F"), (58, "G"), (57, "W"), (56, "X"), (55, "D")) if v >> b & 1]
    return f"{v:#018x}{{{','.join(names)}}}"


def _fmt_maps(maps: list[tuple[int, int, str, int, str]]) -> str:
    return "[" + ", ".join(f"{s // PAGE}-{e // PAGE} {p} {k}@{o // PAGE}" for s, e, p, o, k in maps) + "]"


def _fmt_regions(flat: list[int]) -> str:
    return "[" + ", ".join(f"{(flat[i] - ARENA) // PAGE}-{(flat[i + 1] - ARENA) // PAGE}:{flat[i + 2]:#x}"
                           for i in range(0, len(flat), 3)) + "]"


# --------------------------------------------------------------------------- the state machine
PROTS = st.sampled_from([PROT_R | PROT_W] * 4 + [PROT_R, 0, PROT_R | PROT_W | PROT_X])
LENS = st.sampled_from([1, 1, 2, 3, 4, 8, 16, 512, 1024, 1536])


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int]:
    start = draw(st.one_of(st.integers(0, NPAGES - 1), st.sampled_from([0, 512, 1024, 511, 513])))
    n = draw(LENS)
    return start, max(1, min(n, NPAGES - start))


class Equivalence(RuleBasedStateMachine):
    env: Env

    def __init__(self) -> None:
        super().__init__()
        self.w = World(self.env)

    def teardown(self) -> None:
        self.w.close()

    def _pick_page(self, data: st.DataObject, proc: EmulatedProcess) -> int:
        mapped = [v for v in proc.vmas if v.start >= ARENA and v.end <= ARENA + NPAGES * PAGE]
        if mapped and data.draw(st.booleans()):
            v = mapped[data.draw(st.integers(0, len(mapped) - 1))]
            return (v.start - ARENA) // PAGE + data.draw(st.integers(0, v.pages - 1))
        return data.draw(st.integers(0, NPAGES - 1))

    # -- mappings ---------------------------------------------------------------------
    @rule(r=ranges(), kind=st.sampled_from(["anon", "anon", "anon", "shmem", "file-private", "file-shared"]),
          prot=PROTS, populate=st.booleans(), shifted=st.booleans())
    def mmap(self, r: tuple[int, int], kind: str, prot: int, populate: bool, shifted: bool) -> None:
        start, n = r
        flags = MAP_FIXED | (MAP_SHARED if kind in ("shmem", "file-shared") else MAP_PRIVATE)
        if kind in ("anon", "shmem"):
            flags |= MAP_ANON
        if populate and n <= 16:
            flags |= MAP_POPULATE
        usefile = kind.startswith("file")
        foff = ((start + (7 if shifted else 0)) % (FILE_PAGES - n)) * PAGE if usefile else 0
        w = self.w
        w.step(f"mmap {start}+{n} {kind} prot={prot} flags={flags:#x} foff={foff // PAGE}",
               ("mmap", start * PAGE, n * PAGE, prot, flags, int(usefile), foff),
               lambda **kw: w.emu.mmap(ARENA + start * PAGE, n * PAGE, prot, flags,
                                       w.efile if usefile else None, foff, **kw) - ARENA,
               hints="fault_around")

    @rule(block=st.integers(0, NBLOCKS - 1), populate=st.booleans())
    def huge_block(self, block: int, populate: bool) -> None:
        """An aligned 2 MiB anon block with MADV_HUGEPAGE: where THPs (and the huge zero page) live."""
        w = self.w
        start, n = block * 512, 512
        flags = MAP_FIXED | MAP_PRIVATE | MAP_ANON
        w.step(f"mmap {start}+{n} anon (huge block)", ("mmap", start * PAGE, n * PAGE, PROT_R | PROT_W, flags, 0, 0),
               lambda **kw: w.emu.mmap(ARENA + start * PAGE, n * PAGE, PROT_R | PROT_W, flags) - ARENA)
        w.step(f"madvise {start}+{n} HUGEPAGE", ("madvise", start * PAGE, n * PAGE, ADVICE["HUGEPAGE"]),
               lambda **kw: w.emu.madvise(ARENA + start * PAGE, n * PAGE, ADVICE["HUGEPAGE"]))
        if populate:
            code = ADVICE["POPULATE_WRITE"]
            w.step(f"madvise {start}+1 POPULATE_WRITE", ("madvise", start * PAGE, PAGE, code),
                   lambda **kw: w.emu.madvise(ARENA + start * PAGE, PAGE, code))

    @rule(r=ranges())
    def munmap(self, r: tuple[int, int]) -> None:
        start, n = r
        w = self.w
        w.step(f"munmap {start}+{n}", ("munmap", start * PAGE, n * PAGE),
               lambda **kw: w.emu.munmap(ARENA + start * PAGE, n * PAGE))

    @rule(r=ranges(), prot=PROTS)
    def mprotect(self, r: tuple[int, int], prot: int) -> None:
        start, n = r
        w = self.w
        w.step(f"mprotect {start}+{n} prot={prot}", ("mprotect", start * PAGE, n * PAGE, prot),
               lambda **kw: w.emu.mprotect(ARENA + start * PAGE, n * PAGE, prot))

    @rule(r=ranges(), advice=st.sampled_from(sorted(ADVICE)))
    def madvise(self, r: tuple[int, int], advice: str) -> None:
        start, n = r
        w = self.w
        if advice == "HUGEPAGE":
            # File THPs (VM_HUGEPAGE on a file VMA) are not emulated: keep HUGEPAGE to anon ranges.
            vmas = w.emu._vmas_in(ARENA + start * PAGE, ARENA + (start + n) * PAGE)
            if any(not v.anonymous for v in vmas):
                return
        if advice in ("GUARD_INSTALL", "GUARD_REMOVE") and not w.emu.profile.guard_regions:
            return
        code = ADVICE[advice]
        hints = {"PAGEOUT": "reclaim", "POPULATE_READ": "fault_around"}.get(advice, "")
        w.step(f"madvise {start}+{n} {advice}", ("madvise", start * PAGE, n * PAGE, code),
               lambda **kw: w.emu.madvise(ARENA + start * PAGE, n * PAGE, code, **kw), hints=hints)

    @rule(data=st.data(), write=st.booleans(), value=st.integers(1, 255))
    def access(self, data: st.DataObject, write: bool, value: int) -> None:
        w = self.w
        page = self._pick_page(data, w.emu)
        addr = ARENA + page * PAGE + 8
        if write:
            w.step(f"write page {page} = {value}", ("write", page * PAGE + 8, value),
                   lambda **kw: w.emu.write(addr, value))
        else:
            w.step(f"read page {page}", ("read", page * PAGE + 8),
                   lambda **kw: w.emu.read(addr, 1, **kw)[0], hints="fault_around")

    @rule(r=ranges(), grow=st.sampled_from([0, 0, 1, 4, -1]), how=st.sampled_from(["fixed", "dontunmap", "inplace"]),
          dst=st.integers(0, NPAGES - 1))
    def mremap(self, r: tuple[int, int], grow: int, how: str, dst: int) -> None:
        start, n = r
        w = self.w
        new = max(1, n + grow)
        if how == "inplace":
            flags, dst_off = 0, 0
        else:
            flags = MREMAP_MAYMOVE | MREMAP_FIXED | (MREMAP_DONTUNMAP if how == "dontunmap" else 0)
            if how == "dontunmap":
                new = n
            dst = min(dst, NPAGES - new)
            dst_off = dst * PAGE
        w.step(f"mremap {start}+{n} -> {new} {how} dst={dst_off // PAGE}",
               ("mremap", start * PAGE, n * PAGE, new * PAGE, flags, dst_off),
               lambda **kw: w.emu.mremap(ARENA + start * PAGE, n * PAGE, new * PAGE, flags,
                                         ARENA + dst_off if flags else 0) - ARENA)

    # -- fork -------------------------------------------------------------------------
    @precondition(lambda self: self.w.echild is None)
    @rule()
    def fork(self) -> None:
        w = self.w
        w.env.stats["steps"] += 1
        w.log.append("fork")
        real = w.real.fork()
        assert real[0] == "OK", real
        w.echild = w.emu.fork()
        w.compare([])

    @precondition(lambda self: self.w.echild is not None)
    @rule(data=st.data(), write=st.booleans(), value=st.integers(1, 255))
    def child_access(self, data: st.DataObject, write: bool, value: int) -> None:
        w = self.w
        child = w.echild
        assert child is not None
        page = self._pick_page(data, child)
        addr = ARENA + page * PAGE + 8
        if write:
            w.step(f"child write page {page} = {value}", ("write", page * PAGE + 8, value),
                   lambda **kw: child.write(addr, value), child=True)
        else:
            w.step(f"child read page {page}", ("read", page * PAGE + 8),
                   lambda **kw: child.read(addr, 1)[0], child=True)

    @precondition(lambda self: self.w.echild is not None)
    @rule()
    def child_exit(self) -> None:
        w = self.w
        assert w.echild is not None
        w.env.stats["steps"] += 1
        w.log.append("child exit")
        w.real.child_exit()
        w.echild.exit()
        w.echild = None
        w.settle_after_exit()
        w.compare([])

    # -- userfaultfd and PAGEMAP_SCAN -----------------------------------------------------
    @precondition(lambda self: self.w.emu.profile.uffd_wp_async and self.w.euffd is None)
    @rule()
    def uffd_api(self) -> None:
        w = self.w
        box: dict[str, object] = {}

        def emu(**kw: object) -> int:
            u = w.emu.open_uffd(UFFD_FEATURE_WP_ASYNC)
            box["u"] = u
            return u.supported

        w.step("uffd api WP_ASYNC", ("uffd_api", UFFD_FEATURE_WP_ASYNC), emu)
        w.euffd = box.get("u")

    @precondition(lambda self: self.w.euffd is not None)
    @rule(r=ranges())
    def uffd_register(self, r: tuple[int, int]) -> None:
        start, n = r
        w = self.w
        u = w.euffd
        w.step(f"uffd register {start}+{n} WP", ("uffd_reg", start * PAGE, n * PAGE, 2),
               lambda **kw: u.register(ARENA + start * PAGE, n * PAGE, 2))  # type: ignore[union-attr]

    @precondition(lambda self: self.w.euffd is not None)
    @rule(r=ranges())
    def uffd_unregister(self, r: tuple[int, int]) -> None:
        start, n = r
        w = self.w
        u = w.euffd
        w.step(f"uffd unregister {start}+{n}", ("uffd_unreg", start * PAGE, n * PAGE),
               lambda **kw: u.unregister(ARENA + start * PAGE, n * PAGE))  # type: ignore[union-attr]

    @precondition(lambda self: self.w.euffd is not None)
    @rule(r=ranges(), protect=st.booleans())
    def uffd_writeprotect(self, r: tuple[int, int], protect: bool) -> None:
        start, n = r
        w = self.w
        u = w.euffd
        w.step(f"uffd writeprotect {start}+{n} {protect}", ("uffd_wp", start * PAGE, n * PAGE, int(protect)),
               lambda **kw: u.writeprotect(ARENA + start * PAGE, n * PAGE, protect))  # type: ignore[union-attr]

    @precondition(lambda self: self.env.scan)
    @rule(r=ranges(), vec=st.booleans(), mask=st.sampled_from([0, 0x2, 0x8, 0x4]),
          max_pages=st.sampled_from([0, 0, 1, 10]), check=st.booleans())
    def scan_wp(self, r: tuple[int, int], vec: bool, mask: int, max_pages: int, check: bool) -> None:
        start, n = r
        w = self.w
        w.env.stats["steps"] += 1
        flags = 1 | (2 if check else 0)
        s, e = ARENA + start * PAGE, ARENA + (start + n) * PAGE
        vec_len = 64 if vec else 0
        ret = w._all_cats() if mask != 0x2 else 0x2
        desc = f"PAGEMAP_SCAN WP_MATCHING{'|CHECK' if check else ''} {start}+{n} mask={mask:#x} " \
               f"ret={ret:#x} max={max_pages} vec={vec_len}"
        w.log.append(desc)
        real = Puppet.scan(w.real.pagemap, s, e, flags=flags, mask=mask, ret=ret, max_pages=max_pages,
                           vec_len=vec_len)
        try:
            regs, wend = w.emu.pagemap_scan_ioctl(s, e, flags=flags, category_mask=mask, return_mask=ret,
                                                  max_pages=max_pages, vec_len=vec_len)
            emu = (0, list(regs), wend)
        except OSError as exc:
            emu = (exc.errno or 0, [], getattr(exc, "walk_end", 0))
        problems = []
        if real != emu:
            problems.append(f"scan result: real {real[0]} {_fmt_regions(real[1])} walk_end {real[2]:#x}; "
                            f"emulator {emu[0]} {_fmt_regions(emu[1])} walk_end {emu[2]:#x}")
        w.compare(problems)

    @rule(value=st.sampled_from([b"4", b"4", b"1", b"5"]))
    def clear_refs(self, value: bytes) -> None:
        w = self.w
        w.env.stats["steps"] += 1
        w.log.append(f"clear_refs {value!r}")
        fd = os.open(f"/proc/{w.real.pid}/clear_refs", os.O_WRONLY)
        try:
            real = os.write(fd, value)
        finally:
            os.close(fd)
        emu = w.emu.write_clear_refs(value)
        w.compare([] if real == emu else [f"clear_refs returned real {real} emulator {emu}"])


# --------------------------------------------------------------------------- fixtures and tests
@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("needs gcc to build csrc/puppet.c (install gcc)")
    if os.geteuid() != 0:
        pytest.skip("needs root: PFN equality classes and /proc/PID/pagemap of the puppet")
    tmp = tmp_path_factory.mktemp("puppet")
    exe = tmp / "puppet"
    subprocess.run([gcc, "-O1", "-Wall", "-o", str(exe), str(ROOT / "csrc" / "puppet.c")], check=True)
    data = tmp / "puppet.dat"
    _reset_file(str(data))
    release = os.uname().release
    name = _kernel_profile_name(release)
    overrides: dict[str, object] = {
        "soft_dirty": _probe_soft_dirty(str(exe), str(data)),
        "thp": _bracketed(_read_sys("/sys/kernel/mm/transparent_hugepage/enabled", "[never]")),
        "thp_use_zero_page": _read_sys("/sys/kernel/mm/transparent_hugepage/use_zero_page", "0") == "1",
        "pfn_visible": True,
        "swap_pages": _swap_pages(),
        "hugetlb_pages": int(_read_sys("/proc/sys/vm/nr_hugepages", "0") or 0),
    }
    scan = get_profile(name).pagemap_scan
    yield Env(str(exe), str(data), release, name, overrides, scan)


def _reset_file(path: str) -> None:
    """The data file's known content, written back (clean pages: no writeback races later)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for pg in range(FILE_PAGES):
            os.pwrite(fd, bytes([_file_byte(pg)]) + bytes(PAGE - 1), pg * PAGE)  # 4 KiB at a time: small folios
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_pages() -> int:
    lines = Path("/proc/swaps").read_text().splitlines()[1:]
    return sum(int(line.split()[2]) // 4 for line in lines)


def _probe_soft_dirty(exe: str, data: str) -> bool:
    """A fresh VMA reads soft-dirty (VM_SOFTDIRTY) iff the kernel has soft-dirty."""
    env = Env(exe, data, "", "6.18", {}, False)
    p = Puppet(env)
    try:
        p.cmd("mmap", 0, PAGE, 3, MAP_FIXED | MAP_PRIVATE | MAP_ANON, 0, 0)
        return bool(Puppet.entries(p.pagemap)[0] >> 55 & 1)
    finally:
        p.close()


def _run(env: Env, request: pytest.FixtureRequest, max_examples: int, steps: int) -> None:
    Equivalence.env = env
    before = dict(env.stats)
    failure: BaseException | None = None
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]
    if os.environ.get("SOFTDIRTY_EMULATOR_NOSHRINK"):  # a long hunt: report the first failure as found
        phases.remove(Phase.shrink)
    try:
        run_state_machine_as_test(Equivalence, settings=settings(
            max_examples=max_examples, stateful_step_count=steps, deadline=None, phases=phases,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    except BaseException as exc:
        failure = exc
    finally:
        got = {k: env.stats[k] - before[k] for k in env.stats}
        line = (f"emulator equivalence on Linux {env.release} (profile {env.profile_name}, soft-dirty "
                f"{'on' if env.overrides['soft_dirty'] else 'off'}, THP {env.overrides['thp']}): "
                f"{got['examples']} examples, {got['steps']} steps, {got['mismatches']} mismatches; fed from the "
                f"real side: {got['fed_thp']} THP allocations, {got['fed_collapse']} khugepaged collapses, "
                f"{got['exit_waits_timed_out']} child teardowns that never completed; slowest step "
                f"{env.slowest[0] * 1000:.0f} ms ({env.slowest[1]})")
        request.node.user_properties.append(("equivalence", line))
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capman = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capman is not None:
            with capman.global_and_fixture_disabled():
                reporter.write_line("")
                reporter.write_line(line)
        else:
            print(line)
    if failure is not None:
        raise failure


def _steps(default: int) -> int:
    return int(os.environ.get("SOFTDIRTY_EMULATOR_STEPS", default))


def _examples(default: int) -> int:
    if os.environ.get("SOFTDIRTY_EMULATOR_EXAMPLES"):  # for long hunts: more examples
        return int(os.environ["SOFTDIRTY_EMULATOR_EXAMPLES"])
    profile = os.environ.get("SOFTDIRTY_HYPOTHESIS_PROFILE", "ci")
    # Under TCG an example costs 1.2-1.9 s; the mismatch classes found so far needed 150-500 examples.
    return 150 if profile == "vm" else default


def test_emulator_matches_this_kernel(env: Env, request: pytest.FixtureRequest) -> None:
    """Random operation sequences: the emulator equals the host kernel after every step."""
    _run(env, request, max_examples=_examples(60), steps=_steps(30))


@pytest.mark.softdirty_kernel
def test_emulator_matches_softdirty_kernel(env: Env, request: pytest.FixtureRequest) -> None:
    """The same on a kernel with soft-dirty (the VM's 6.1 and 6.12): bit 55 and VM_SOFTDIRTY included."""
    assert env.overrides["soft_dirty"], "soft-dirty expected on this kernel"
    _run(env, request, max_examples=_examples(60), steps=_steps(30))
