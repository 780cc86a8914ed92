"""Scenarios: TOML files with a sequence of operations and what to expect after each.

A scenario names a kernel profile and lists steps::

    [scenario]
    name = "anon write"
    spec = "7.4"
    kernel = "6.18"               # a preset: 6.1, 6.12, 6.18
    layout = "bare"               # or "exec" (heap, stack, [vdso], [vvar])
    [scenario.profile]            # KernelProfile field overrides
    soft_dirty = false

    [[step]]
    op = "mmap"
    name = "a"                    # label: "a" is its address from now on
    pages = 3
    prot = "rw"
    flags = "private|anonymous"

    [[step]]
    op = "write"
    at = "a+1"                    # label plus pages (or a hex address)
    [step.expect]
    pagemap = { "a" = "", "a+1" = "P,X", "a+2..a+3" = "" }
    categories = { "a+1" = "PR,WR" }

Page flag names follow the spec: pagemap ``P S F G W X D`` (present, swap,
file, guard, uffd-wp, exclusive, soft-dirty); categories ``WA WR FI PR SW
PZ HU SD GU``.  ``raw`` compares whole 64-bit entries; ``error`` an errno
name; ``result`` the return value.  Operations: mmap, munmap, mprotect,
madvise, mremap, brk, read, write, fork, exit, clear_refs, pagemap_read,
scan, uffd_open, uffd_register, uffd_unregister, uffd_writeprotect,
uffd_close, khugepaged.  ``proc = "child"`` runs a step in a forked child
(``fork`` takes ``name``).
"""

from __future__ import annotations

import argparse
import errno as errno_mod
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softdirty.emulator import constants as C
from softdirty.emulator.memory import EmuFile, Machine
from softdirty.emulator.process import BusError, EmulatedProcess, SegmentationFault, UffdBlocked
from softdirty.emulator.profile import KernelProfile, get_profile
from softdirty.emulator.uffd import EmulatedUffd
from softdirty.errors import SoftDirtyError
from softdirty.pagemap import PAGE_SIZE, PM_FLAGS_MASK, PM_PFRAME_MASK

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PM_NAMES = {"P": 63, "S": 62, "F": 61, "G": 58, "W": 57, "X": 56, "D": 55}
CAT_NAMES = {"WA": 0, "WR": 1, "FI": 2, "PR": 3, "SW": 4, "PZ": 5, "HU": 6, "SD": 7, "GU": 8}
PROT = {"r": C.PROT_READ, "w": C.PROT_WRITE, "x": C.PROT_EXEC, "-": 0}
MAP_FLAGS = {
    "shared": C.MAP_SHARED, "private": C.MAP_PRIVATE, "shared_validate": C.MAP_SHARED_VALIDATE,
    "fixed": C.MAP_FIXED, "anonymous": C.MAP_ANONYMOUS, "anon": C.MAP_ANONYMOUS, "populate": C.MAP_POPULATE,
    "hugetlb": C.MAP_HUGETLB, "fixed_noreplace": C.MAP_FIXED_NOREPLACE, "noreserve": C.MAP_NORESERVE,
    "growsdown": C.MAP_GROWSDOWN,
}
MREMAP_FLAGS = {"maymove": C.MREMAP_MAYMOVE, "fixed": C.MREMAP_FIXED, "dontunmap": C.MREMAP_DONTUNMAP}
UFFD_FEATURES = {"WP_ASYNC": 1 << 15, "WP_UNPOPULATED": 1 << 13, "EVENT_FORK": 1 << 1, "EVENT_REMAP": 1 << 2,
                 "WP_HUGETLBFS_SHMEM": 1 << 12}
UFFD_MODES = {"MISSING": 1, "WP": 2, "MINOR": 4}
SCAN_FLAGS = {"WP_MATCHING": 1, "CHECK_WPASYNC": 2}
OPS = ("mmap", "munmap", "mprotect", "madvise", "mremap", "brk", "read", "write", "fork", "exit", "clear_refs",
       "pagemap_read", "scan", "uffd_open", "uffd_register", "uffd_unregister", "uffd_writeprotect", "uffd_close",
       "khugepaged")
EXPECT_KEYS = ("pagemap", "categories", "raw", "error", "result", "regions", "walk_end", "frame_same",
               "frame_differs", "maps", "fault", "vma_count")


class ScenarioError(ValueError):
    """A scenario file that cannot be loaded or understood (says where and why)."""


# The emulator walks many ranges page by page (populate, uffd-wp markers, ...): a step may name at
# most this many pages (256 MiB) and read at most this many bytes, so a hostile scenario stays
# small and quick (the shipped ones use at most 1,024 pages).
MAX_PAGES = 1 << 16
MAX_BYTES = 1 << 20
# What a step's bad values raise inside the runner and the emulator (int("x"), st["at"] missing,
# an expectation that is no table, a negative address...): reported as ScenarioError.
_BAD_VALUE = (KeyError, TypeError, ValueError, AttributeError, OverflowError)


def _bad_value(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    return f"bad value ({type(exc).__name__}: {exc})"


def _count(value: object, what: str, where: str, limit: int = MAX_PAGES, low: int = 0) -> int:
    """An int count (``pages``, ``repeat``...) between ``low`` and ``limit``."""
    n: int = int(value)  # type: ignore[call-overload]  # a bad type: step() reports it as a ScenarioError
    if not low <= n <= limit:
        raise ScenarioError(f"{where}: {what} must be between {low} and {limit}, not {n}")
    return n


@dataclass
class StepResult:
    """What one step did and whether it met its expectations."""

    index: int
    op: str
    description: str
    result: object = None
    error: str | None = None
    fault: str | None = None
    mismatches: list[str] = field(default_factory=list)
    entries: dict[str, list[int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.mismatches


@dataclass
class Scenario:
    path: str
    name: str
    spec: str
    description: str
    profile: KernelProfile
    layout: str
    files: list[dict[str, Any]]
    steps: list[dict[str, Any]]


# --------------------------------------------------------------------------- loading
def load_scenario(path: str | Path) -> Scenario:
    """Parse and check a scenario file; raises :class:`ScenarioError` with the place of the problem."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{p}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{p}: not valid TOML: nested too deeply") from None
    return parse_scenario(data, str(p))


def parse_scenario(data: dict[str, Any], where: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: a scenario is a TOML table")
    unknown = set(data) - {"scenario", "step", "file"}
    if unknown:
        raise ScenarioError(f"{where}: unknown top-level key(s) {sorted(unknown)}; expected scenario, file, step")
    head = data.get("scenario", {})
    if not isinstance(head, dict):
        raise ScenarioError(f"{where}: [scenario] must be a table")
    bad = set(head) - {"name", "spec", "description", "kernel", "layout", "profile"}
    if bad:
        raise ScenarioError(f"{where}: unknown [scenario] key(s) {sorted(bad)}")
    overrides = head.get("profile", {})
    if not isinstance(overrides, dict):
        raise ScenarioError(f"{where}: [scenario.profile] must be a table of KernelProfile fields")
    try:
        profile = get_profile(str(head.get("kernel", "6.18")), **overrides)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{where}: bad kernel profile: {exc}") from None
    layout = head.get("layout", "bare")
    if layout not in ("bare", "exec"):
        raise ScenarioError(f"{where}: layout must be 'bare' or 'exec', not {layout!r}")
    steps = data.get("step", [])
    if not isinstance(steps, list) or not steps:
        raise ScenarioError(f"{where}: a scenario needs at least one [[step]]")
    for i, st in enumerate(steps, 1):
        if not isinstance(st, dict):
            raise ScenarioError(f"{where}: step {i} must be a table")
        op = st.get("op")
        if op not in OPS:
            raise ScenarioError(f"{where}: step {i}: unknown op {op!r}; known: {', '.join(OPS)}")
        exp = st.get("expect", {})
        if not isinstance(exp, dict):
            raise ScenarioError(f"{where}: step {i}: expect must be a table")
        bad = set(exp) - set(EXPECT_KEYS)
        if bad:
            raise ScenarioError(f"{where}: step {i}: unknown expectation(s) {sorted(bad)}; known: "
                                f"{', '.join(EXPECT_KEYS)}")
    files = data.get("file", [])
    if not isinstance(files, list):
        raise ScenarioError(f"{where}: [[file]] must be an array of tables")
    for f in files:
        if not isinstance(f, dict) or "name" not in f or "pages" not in f:
            raise ScenarioError(f"{where}: a [[file]] needs name and pages")
    return Scenario(where, str(head.get("name", Path(where).stem)), str(head.get("spec", "")),
                    str(head.get("description", "")), profile, layout, files, steps)


# --------------------------------------------------------------------------- replay
class _Runner:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.machine = Machine(sc.profile)
        self.procs: dict[str, EmulatedProcess] = {"main": EmulatedProcess(self.machine, layout=sc.layout)}
        self.labels: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.files: dict[str, EmuFile] = {}
        self.uffds: dict[str, EmulatedUffd] = {}
        self.frames: dict[str, int] = {}
        for f in sc.files:
            pages = _count(f["pages"], "a [[file]]'s pages", sc.path)
            ef = EmuFile(str(f.get("path", "/" + str(f["name"]))), pages * PAGE_SIZE,
                         kind=str(f.get("kind", "regular")))
            if f.get("cached", True):
                for pg in range(pages):
                    folio = self.machine.alloc_folio(anon=False, file=ef, index=pg)
                    ef.cache[pg] = folio
            self.files[f["name"]] = ef

    # -- values ------------------------------------------------------------------------
    def where(self, i: int) -> str:
        return f"{self.sc.path}: step {i}"

    def addr(self, expr: object, i: int) -> int:
        if isinstance(expr, int) and not isinstance(expr, bool):
            return expr
        if not isinstance(expr, str):
            raise ScenarioError(f"{self.where(i)}: an address is a label expression or an int, not {expr!r}")
        m = re.fullmatch(r"\s*([A-Za-z_][\w]*|0x[0-9a-fA-F]+|\d+)\s*(?:([+-])\s*(\d+)\s*(p|k|m)?)?\s*", expr)
        if not m:
            raise ScenarioError(f"{self.where(i)}: bad address expression {expr!r} (label, label+N pages, or 0x...)")
        base, sign, num, unit = m.groups()
        if base in self.labels:
            a = self.labels[base]
        elif base.startswith("0x") or base.isdigit():
            a = int(base, 0)
        else:
            raise ScenarioError(f"{self.where(i)}: unknown label {base!r} (known: {', '.join(self.labels) or 'none'})")
        if num:
            scale = {"k": 1024, "m": 1 << 20}.get(unit or "p", PAGE_SIZE)
            a += int(num) * scale * (-1 if sign == "-" else 1)
        return a

    def length(self, st: dict[str, Any], i: int, default_pages: int | None = None) -> int:
        n = self._length(st, i, default_pages)
        if n > MAX_PAGES * PAGE_SIZE:
            raise ScenarioError(f"{self.where(i)}: a length of at most {MAX_PAGES} pages, not {n:#x} bytes")
        return n

    def _length(self, st: dict[str, Any], i: int, default_pages: int | None = None) -> int:
        if "pages" in st:
            return int(st["pages"]) * PAGE_SIZE
        if "length" in st:
            return int(st["length"])
        if "to" in st:
            return self.addr(st["to"], i) - self.addr(st.get("at", st.get("addr")), i)
        if default_pages is not None:
            return default_pages * PAGE_SIZE
        raise ScenarioError(f"{self.where(i)}: needs pages, length or to")

    @staticmethod
    def flags(value: object, table: dict[str, int], what: str, where: str) -> int:
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            value = [v for v in re.split(r"[|,\s]+", value) if v]
        if not isinstance(value, list):
            raise ScenarioError(f"{where}: {what} must be a string or a list")
        out = 0
        for v in value:
            key = str(v).upper() if what in ("features", "mode", "scan flags") else str(v).lower()
            if key not in table:
                raise ScenarioError(f"{where}: unknown {what} {v!r}; known: {', '.join(table)}")
            out |= table[key]
        return out

    def prot(self, value: object, i: int) -> int:
        if isinstance(value, int):
            return value
        if not isinstance(value, str) or any(c not in PROT for c in value):
            raise ScenarioError(f"{self.where(i)}: prot is like 'rw', 'r', 'rwx' or '-' , not {value!r}")
        out = 0
        for c in value:
            out |= PROT[c]
        return out

    def proc(self, st: dict[str, Any], i: int) -> EmulatedProcess:
        name = st.get("proc", "main")
        if name not in self.procs:
            raise ScenarioError(f"{self.where(i)}: unknown process {name!r}")
        return self.procs[name]

    # -- one step --------------------------------------------------------------------------
    def step(self, i: int, st: dict[str, Any]) -> StepResult:
        try:
            return self._step(i, st)
        except ScenarioError:
            raise
        except _BAD_VALUE as exc:
            raise ScenarioError(f"{self.where(i)} ({st.get('op')}): {_bad_value(exc)}") from None
        except SoftDirtyError as exc:  # e.g. a system call of a process that has exited
            raise ScenarioError(f"{self.where(i)} ({st.get('op')}): {exc}") from None

    def _step(self, i: int, st: dict[str, Any]) -> StepResult:
        op = st["op"]
        proc = self.proc(st, i)
        res = StepResult(i, op, st.get("description", op))
        try:
            res.result = self._do(i, st, op, proc)
        except OSError as exc:
            res.error = errno_mod.errorcode.get(exc.errno or 0, str(exc.errno))
            res.result = getattr(exc, "walk_end", None)
        except SegmentationFault:
            res.fault = "SIGSEGV"
        except BusError:
            res.fault = "SIGBUS"
        except UffdBlocked:
            res.fault = "UFFD"
        self._check(i, st, res, proc)
        return res

    def _do(self, i: int, st: dict[str, Any], op: str, proc: EmulatedProcess) -> object:
        w = self.where(i)
        if op == "mmap":
            flags = self.flags(st.get("flags", "private|anonymous"), MAP_FLAGS, "mmap flag", w)
            file = None
            if "file" in st:
                if st["file"] not in self.files:
                    raise ScenarioError(f"{w}: unknown file {st['file']!r}")
                file = self.files[st["file"]]
            addr = self.addr(st["at"], i) if "at" in st else 0
            length = self.length(st, i)
            a = proc.mmap(addr, length, self.prot(st.get("prot", "rw"), i), flags, file,
                          int(st.get("offset_pages", 0)) * PAGE_SIZE)
            if "name" in st:
                self.labels[str(st["name"])] = a
                self.sizes[str(st["name"])] = length
            return a
        if op == "munmap":
            proc.munmap(self.addr(st["at"], i), self.length(st, i))
            return None
        if op == "mprotect":
            proc.mprotect(self.addr(st["at"], i), self.length(st, i), self.prot(st["prot"], i))
            return None
        if op == "madvise":
            adv = st["advice"]
            if isinstance(adv, str):
                if adv.upper() not in C.MADV_NAMES:
                    raise ScenarioError(f"{w}: unknown advice {adv!r}")
                adv = C.MADV_NAMES[adv.upper()]
            proc.madvise(self.addr(st["at"], i), self.length(st, i), int(adv))
            return None
        if op == "mremap":
            flags = self.flags(st.get("flags", []), MREMAP_FLAGS, "mremap flag", w)
            new_len = (_count(st["new_pages"], "new_pages", w) * PAGE_SIZE if "new_pages" in st
                       else self.length(st, i))
            new_addr = self.addr(st["to_addr"], i) if "to_addr" in st else 0
            a = proc.mremap(self.addr(st["at"], i), self.length(st, i), new_len, flags, new_addr)
            if "name" in st:
                self.labels[str(st["name"])] = a
                self.sizes[str(st["name"])] = new_len
            return a
        if op == "brk":
            if "grow_pages" in st:
                return proc.brk(proc.brk_addr + _count(st["grow_pages"], "grow_pages", w, low=-MAX_PAGES)
                                * PAGE_SIZE)
            a = proc.brk(self.addr(st["at"], i))
            return a
        if op in ("read", "write"):
            addr = self.addr(st["at"], i)
            n = _count(st.get("pages", 1), "pages", w, low=1)
            for k in range(n):
                if op == "read":
                    data = proc.read(addr + k * PAGE_SIZE, 1)
                else:
                    proc.write(addr + k * PAGE_SIZE, int(st.get("value", 1)))
            return data[0] if op == "read" else None
        if op == "fork":
            child = proc.fork()
            self.procs[str(st.get("name", "child"))] = child
            return child.pid
        if op == "exit":
            proc.exit()
            return None
        if op == "clear_refs":
            value = st.get("value", "4")
            if isinstance(value, int):
                raise ScenarioError(f"{w}: clear_refs value is a string or a list of bytes, not {value!r}")
            raw = value.encode("latin-1") if isinstance(value, str) else bytes(value)
            if "repeat" in st:
                raw = raw * _count(st["repeat"], "repeat", w, limit=MAX_BYTES // max(1, len(raw)))
            return proc.write_clear_refs(raw)
        if op == "pagemap_read":
            return len(proc.read_pagemap(int(st.get("offset", 0)), _count(st.get("count", 8), "count", w,
                                                                           limit=MAX_BYTES)))
        if op == "scan":
            start = self.addr(st["at"], i)
            end = self.addr(st["to"], i) if "to" in st else start + self.length(st, i)
            kw = {
                "flags": self.flags(st.get("flags", []), SCAN_FLAGS, "scan flags", w),
                "category_inverted": _cats(st.get("inverted", ""), w),
                "category_mask": _cats(st.get("mask", ""), w),
                "category_anyof_mask": _cats(st.get("anyof", ""), w),
                "return_mask": _cats(st.get("return", "ALL"), w),
                "max_pages": int(st.get("max_pages", 0)),
                "vec_len": int(st.get("vec_len", 512)),
            }
            regions, walk_end = proc.pagemap_scan_ioctl(start, end + int(st.get("end_extra", 0)), **kw)
            return (list(regions), walk_end)
        if op == "uffd_open":
            name = str(st.get("name", "uffd"))
            u = proc.open_uffd(self.flags(st.get("features", []), UFFD_FEATURES, "features", w))
            self.uffds[name] = u
            return u.supported
        if op in ("uffd_register", "uffd_unregister", "uffd_writeprotect", "uffd_close"):
            name = str(st.get("uffd", "uffd"))
            if name not in self.uffds:
                raise ScenarioError(f"{w}: no userfaultfd named {name!r} (uffd_open first)")
            u = self.uffds[name]
            if op == "uffd_close":
                u.close()
                return None
            addr, length = self.addr(st["at"], i), self.length(st, i)
            if op == "uffd_register":
                return u.register(addr, length, self.flags(st.get("mode", "WP"), UFFD_MODES, "mode", w))
            if op == "uffd_unregister":
                u.unregister(addr, length)
                return None
            u.writeprotect(addr, length, bool(st.get("protect", True)))
            return None
        if op == "khugepaged":
            proc.khugepaged_collapse(self.addr(st["at"], i))
            return None
        raise ScenarioError(f"{w}: op {op!r} not handled")  # pragma: no cover

    # -- expectations --------------------------------------------------------------------
    def _pages(self, key: str, i: int) -> list[int]:
        if ".." in key:
            lo, hi = key.split("..", 1)
            a, b = self.addr(lo, i), self.addr(hi, i)
            if b <= a:
                raise ScenarioError(f"{self.where(i)}: empty page range {key!r}")
            if b - a > MAX_PAGES * PAGE_SIZE:
                raise ScenarioError(f"{self.where(i)}: page range {key!r} longer than {MAX_PAGES} pages")
            return list(range(a, b, PAGE_SIZE))
        return [self.addr(key, i)]

    def _check(self, i: int, st: dict[str, Any], res: StepResult, proc: EmulatedProcess) -> None:
        exp = st.get("expect", {})
        w = self.where(i)
        want_err = exp.get("error")
        if want_err is not None:
            if res.error != want_err:
                res.mismatches.append(f"error: expected {want_err}, got {res.error or 'success'}")
        elif res.error is not None:
            res.mismatches.append(f"unexpected error {res.error}")
        want_fault = exp.get("fault")
        if want_fault != res.fault:
            if want_fault is not None or res.fault is not None:
                res.mismatches.append(f"fault: expected {want_fault}, got {res.fault}")
        if "result" in exp:
            got = res.result
            want = exp["result"]
            if isinstance(want, str) and not isinstance(got, str):
                want = self.addr(want, i)
            if got != want:
                res.mismatches.append(f"result: expected {want!r}, got {got!r}")
        if ("pagemap" in exp or "raw" in exp or "frame_same" in exp or "frame_differs" in exp) and proc.alive:
            self._check_pagemap(i, exp, res, proc)
        if "categories" in exp and proc.alive:
            for key, want in exp["categories"].items():
                for a in self._pages(key, i):
                    got_c = _categories_at(proc, a)
                    if got_c != _cats(want, w):
                        res.mismatches.append(f"categories at {key} ({a:#x}): expected {want!r}, got "
                                              f"{_fmt_cats(got_c)!r}")
        if "regions" in exp or "walk_end" in exp:
            if not isinstance(res.result, tuple):
                res.mismatches.append("regions/walk_end expected, but the step is no successful scan")
            else:
                regions, walk_end = res.result
                if "regions" in exp:
                    want_r = [(self.addr(s, i), self.addr(e, i), _cats(c, w)) for s, e, c in exp["regions"]]
                    got_r = [(regions[k], regions[k + 1], regions[k + 2]) for k in range(0, len(regions), 3)]
                    if got_r != want_r:
                        res.mismatches.append(f"regions: expected {_fmt_regions(want_r)}, got {_fmt_regions(got_r)}")
                if "walk_end" in exp and walk_end != self.addr(exp["walk_end"], i):
                    res.mismatches.append(f"walk_end: expected {exp['walk_end']}, got {walk_end:#x}")
        if "maps" in exp:
            # each line: "START END PERMS" with START/END address expressions
            want_maps = []
            for line in exp["maps"]:
                parts = str(line).split()
                if len(parts) != 3:
                    raise ScenarioError(f"{w}: a maps expectation is 'START END PERMS', not {line!r}")
                want_maps.append(f"{self.addr(parts[0], i):#x}-{self.addr(parts[1], i):#x} {parts[2]}")
            got_maps = [f"{m.start:#x}-{m.end:#x} {m.perms}" for m in proc.maps()]
            if got_maps != want_maps:
                res.mismatches.append(f"maps: expected {want_maps}, got {got_maps}")
        if "vma_count" in exp and len(proc.vmas) != int(exp["vma_count"]):
            res.mismatches.append(f"vma_count: expected {exp['vma_count']}, got {len(proc.vmas)}")
        # what the CLI prints: the entries of every live label
        if proc.alive:
            for name, a in self.labels.items():
                n = self.sizes.get(name, PAGE_SIZE) // PAGE_SIZE
                res.entries[name] = list(proc.pagemap_entries(a, a + min(n, 4096) * PAGE_SIZE))

    def _check_pagemap(self, i: int, exp: dict[str, Any], res: StepResult, proc: EmulatedProcess) -> None:
        w = self.where(i)

        def entry(a: int) -> int:
            return int.from_bytes(proc.read_pagemap((a // PAGE_SIZE) * 8, 8) or bytes(8), "little")

        for key, want in exp.get("pagemap", {}).items():
            want_bits = _pm_flags(want, w)
            for a in self._pages(key, i):
                got = entry(a) & PM_FLAGS_MASK
                if got != want_bits:
                    res.mismatches.append(f"pagemap at {key} ({a:#x}): expected {want!r}, got {_fmt_pm(got)!r}")
        for key, want in exp.get("raw", {}).items():
            wv = int(want, 0) if isinstance(want, str) else int(want)
            for a in self._pages(key, i):
                got = entry(a)
                if got != wv:
                    res.mismatches.append(f"raw entry at {key} ({a:#x}): expected {wv:#018x}, got {got:#018x}")
        for pair in exp.get("frame_same", []):
            a, b = (self._frame(x, i) for x in pair)
            if a != b:
                res.mismatches.append(f"frames of {pair[0]} and {pair[1]} differ ({a:#x} vs {b:#x})")
        for pair in exp.get("frame_differs", []):
            a, b = (self._frame(x, i) for x in pair)
            if a == b:
                res.mismatches.append(f"frames of {pair[0]} and {pair[1]} are the same ({a:#x})")

    def _frame(self, spec: object, i: int) -> int:
        """A frame reference: "label" (main process) or "proc:label", or "saved:NAME"."""
        if isinstance(spec, str) and spec.startswith("saved:"):
            return self.frames[spec[6:]]
        proc_name, _, key = str(spec).rpartition(":")
        proc = self.procs[proc_name or "main"]
        a = self.addr(key, i)
        return int(proc.pagemap_entries(a, a + PAGE_SIZE)[0]) & PM_PFRAME_MASK


def _cats(value: object, where: str) -> int:
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ScenarioError(f"{where}: categories are written like 'PR,WR', not {value!r}")
    if value.strip().upper() == "ALL":
        return 0x1FF
    out = 0
    for v in re.split(r"[|,\s]+", value.strip()):
        if not v:
            continue
        if v.upper() not in CAT_NAMES:
            raise ScenarioError(f"{where}: unknown category {v!r}; known: {', '.join(CAT_NAMES)}")
        out |= 1 << CAT_NAMES[v.upper()]
    return out


def _pm_flags(value: object, where: str) -> int:
    if isinstance(value, int):
        return value & PM_FLAGS_MASK
    if not isinstance(value, str):
        raise ScenarioError(f"{where}: pagemap flags are written like 'P,X', not {value!r}")
    out = 0
    for v in re.split(r"[|,\s]+", value.strip()):
        if not v or v == "0":
            continue
        if v.upper() not in PM_NAMES:
            raise ScenarioError(f"{where}: unknown pagemap flag {v!r}; known: {', '.join(PM_NAMES)}")
        out |= 1 << PM_NAMES[v.upper()]
    return out


def _fmt_pm(v: int) -> str:
    return ",".join(n for n, b in PM_NAMES.items() if v >> b & 1)


def _fmt_cats(c: int) -> str:
    return ",".join(n for n, b in CAT_NAMES.items() if c >> b & 1)


def _fmt_regions(rs: Sequence[tuple[int, int, int]]) -> str:
    return "[" + ", ".join(f"{s:#x}-{e:#x}:{_fmt_cats(c) or '0'}" for s, e, c in rs) + "]"


def _categories_at(proc: EmulatedProcess, addr: int) -> int:
    """The categories PAGEMAP_SCAN reports for one page (every category returned, no filter)."""
    regions, _ = proc.pagemap_scan_ioctl(addr, addr + PAGE_SIZE, return_mask=0x1FF if proc.profile.scan_guard
                                         else 0xFF, vec_len=4)
    return regions[2] if len(regions) >= 3 else 0


def replay(path: str | Path, *, on_step: Callable[[StepResult], None] | None = None) -> list[StepResult]:
    """Run a scenario file; one :class:`StepResult` per step (check ``.ok`` / ``.mismatches``)."""
    sc = load_scenario(path)
    return run_scenario(sc, on_step=on_step)


def run_scenario(sc: Scenario, *, on_step: Callable[[StepResult], None] | None = None) -> list[StepResult]:
    try:
        runner = _Runner(sc)
    except ScenarioError:
        raise
    except _BAD_VALUE as exc:
        raise ScenarioError(f"{sc.path}: a [[file]]: {_bad_value(exc)}") from None
    out = []
    for i, st in enumerate(sc.steps, 1):
        r = runner.step(i, st)
        out.append(r)
        if on_step is not None:
            on_step(r)
    return out


def scenario_dir() -> Path:
    """Where the shipped scenarios (the spec's section 7 items) live."""
    return Path(__file__).resolve().parent / "scenarios"


def format_entry(v: int) -> str:
    return f"{v:#018x} {{{_fmt_pm(v & PM_FLAGS_MASK)}}}"


def emulate_main(argv: Sequence[str] | None = None, out: Any = None) -> int:
    """``softdirty emulate SCENARIO.toml``: replay a scenario, print the entries after each step.

    Exit status: 0 if every expectation held, 1 if one did not, 2 for a bad scenario.
    """
    out = out or sys.stdout
    ap = argparse.ArgumentParser(prog="softdirty emulate", description=emulate_main.__doc__)
    ap.add_argument("scenario", nargs="+", help="scenario TOML file(s); 'list' shows the shipped ones")
    ap.add_argument("--quiet", "-q", action="store_true", help="only report failures and a summary")
    args = ap.parse_args(argv)
    if args.scenario == ["list"]:
        for p in sorted(scenario_dir().glob("*.toml")):
            sc = load_scenario(p)
            print(f"{p.name}: {sc.name} (spec {sc.spec})", file=out)
        return 0
    status = 0
    for path in args.scenario:
        try:
            sc = load_scenario(path)
        except ScenarioError as exc:
            print(f"softdirty: error: {exc}", file=sys.stderr)
            return 2
        print(f"# {sc.name} ({sc.profile.describe()})" + (f" - spec {sc.spec}" if sc.spec else ""), file=out)
        failed = 0

        def show(r: StepResult) -> None:
            nonlocal failed
            outcome = r.error or r.fault or ("" if r.result is None else f"-> {_short(r.result)}")
            mark = "ok" if r.ok else "FAIL"
            if not args.quiet or not r.ok:
                print(f"step {r.index} {r.op} {outcome} [{mark}]", file=out)
                for m in r.mismatches:
                    print(f"    {m}", file=out)
            if not args.quiet:
                for name, ents in r.entries.items():
                    shown = ents[:8]
                    more = f" ... ({len(ents)} pages)" if len(ents) > 8 else ""
                    print(f"    {name}: " + " ".join(format_entry(e) for e in shown) + more, file=out)
            if not r.ok:
                failed += 1

        try:
            run_scenario(sc, on_step=show)
        except ScenarioError as exc:
            print(f"softdirty: error: {exc}", file=sys.stderr)
            return 2
        print(f"# {sc.name}: {'all expectations held' if not failed else f'{failed} step(s) failed'}", file=out)
        if failed:
            status = 1
    return status


def _short(v: object) -> str:
    if isinstance(v, int):
        return hex(v) if v > 4096 else str(v)
    if isinstance(v, tuple):
        regions, walk_end = v
        return f"{len(regions) // 3} regions, walk_end {walk_end:#x}"
    return repr(v)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(emulate_main())
