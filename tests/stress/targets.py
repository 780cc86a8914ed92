"""C targets of the reliability suites (victim.c, churn.c) and small probes of a process's state."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from softdirty import scanner
from softdirty.pagemap import PageCategory
from softdirty.process import TASK_SIZE_4LEVEL

HERE = Path(__file__).parent
_built: dict[str, str] = {}


def build(name: str) -> str:
    """Compile ``name``.c once per session into a world-readable directory (unprivileged targets exec it)."""
    if name in _built:
        return _built[name]
    if shutil.which("gcc") is None:
        raise RuntimeError(f"gcc is needed to build tests/stress/{name}.c")
    where = tempfile.mkdtemp(prefix=f"sd-{name}-")
    os.chmod(where, 0o755)
    exe = os.path.join(where, name)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", exe, str(HERE / f"{name}.c")], check=True)
    _built[name] = exe
    return exe


def stat_state(pid: int) -> tuple[str, int]:
    """(state letter of /proc/PID/stat, TracerPid of /proc/PID/status)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    state = text[text.rindex(")") + 2 :].split()[0]
    tracer = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                tracer = int(line.split()[1])
    return state, tracer


def user_vmas(pid: int) -> list[tuple[int, int]]:
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if hi <= TASK_SIZE_4LEVEL:
                out.append((lo, hi))
    return out


def wp_registered(pid: int) -> list[tuple[int, int]]:
    """Ranges of ``pid`` registered with a userfaultfd in WP-async mode (PAGE_IS_WPALLOWED), by PAGEMAP_SCAN."""
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        found = []
        wa = int(PageCategory.WPALLOWED)
        for lo, hi in user_vmas(pid):
            got = scanner.pagemap_scan(fd, lo, hi, category_mask=wa, return_mask=wa)
            r = got.ranges
            found += [(r[i], r[i + 1]) for i in range(0, len(r), 3)]
        return found
    finally:
        os.close(fd)


def wp_bits(pid: int) -> list[tuple[int, int]]:
    """Ranges of ``pid`` whose pages carry the uffd-wp bit (pagemap bit 57), by windowed pagemap reads."""
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        out = []
        for lo, hi in user_vmas(pid):
            data = os.pread(fd, (hi - lo) // 4096 * 8, lo // 4096 * 8)
            for i in range(0, len(data), 8):
                if int.from_bytes(data[i : i + 8], "little") >> 57 & 1:
                    out.append((lo + i // 8 * 4096, lo + i // 8 * 4096 + 4096))
        return out
    finally:
        os.close(fd)
