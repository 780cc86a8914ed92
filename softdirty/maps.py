"""``/proc/PID/maps`` parsed into :class:`Vma` values.

The kernel prints ``start-end perms offset major:minor inode`` and, padded
with spaces, a path.  Newlines in a path are escaped as ``\\012`` by the
kernel (``seq_file_path(..., "\\n")``); we unescape exactly that.  Spaces are
not escaped, so the path is everything after the padding.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace

from softdirty.pagemap import PAGE_SIZE

DELETED_SUFFIX = " (deleted)"


class MapsFormatError(ValueError):
    """A line of /proc/PID/maps that does not have the kernel's format."""


@dataclass(frozen=True, slots=True)
class Vma:
    start: int
    end: int
    perms: str  # e.g. "rw-p"
    offset: int = 0
    dev: str = "00:00"
    inode: int = 0
    path: str = ""
    deleted: bool = False
    # Not in the maps text: filled in by whoever knows (LiveProcess.read_maps
    # from the path and the hugetlbfs mounts; the emulator from its VMA flags).
    hugetlb: bool = False

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def pages(self) -> int:
        return self.size // PAGE_SIZE

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def anonymous(self) -> bool:
        """No file behind it (the heap, the stack and ``[anon:...]`` included)."""
        return self.inode == 0 and not self.path.startswith("/")

    @property
    def special(self) -> bool:
        """``[vdso]``, ``[vvar]``, ``[vsyscall]`` and friends: not ordinary memory."""
        return self.path in ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]")

    @property
    def name(self) -> str:
        return self.path or "[anon]"

    def __contains__(self, addr: object) -> bool:
        return isinstance(addr, int) and self.start <= addr < self.end

    def format(self) -> str:
        """The line as the kernel prints it (used by the emulator)."""
        head = f"{self.start:08x}-{self.end:08x} {self.perms} {self.offset:08x} {self.dev} {self.inode}"
        if not self.path:
            return head
        path = self.path.replace("\n", "\\012") + (DELETED_SUFFIX if self.deleted else "")
        return head.ljust(73) + path


def parse_line(line: str) -> Vma:
    fields = line.split(None, 5)
    if len(fields) < 5:
        raise MapsFormatError(f"too few fields in maps line {line!r}")
    try:
        lo, _, hi = fields[0].partition("-")
        start, end = int(lo, 16), int(hi, 16)
        offset = int(fields[2], 16)
        inode = int(fields[4])
    except ValueError:
        raise MapsFormatError(f"bad number in maps line {line!r}") from None
    perms, dev = fields[1], fields[3]
    if (
        not _perms_ok(perms)
        or end < start
        or start % PAGE_SIZE
        or end % PAGE_SIZE
        or ":" not in dev
    ):
        raise MapsFormatError(f"malformed maps line {line!r}")
    path = fields[5] if len(fields) == 6 else ""
    deleted = path.endswith(DELETED_SUFFIX)
    if deleted:
        path = path[: -len(DELETED_SUFFIX)]
    return Vma(start, end, perms, offset, dev, inode, path.replace("\\012", "\n"), deleted)


def _perms_ok(perms: str) -> bool:
    return (
        len(perms) == 4
        and perms[0] in "r-"
        and perms[1] in "w-"
        and perms[2] in "x-"
        and perms[3] in "ps"
    )


def hugetlbfs_devices(mountinfo: str) -> frozenset[str]:
    """``major:minor`` (as maps prints it) of every hugetlbfs mount in a ``/proc/PID/mountinfo`` text."""
    devs = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " in line and len(fields) > 2:
            fstype = line.split(" - ", 1)[1].split()[0]
            if fstype == "hugetlbfs":
                # mountinfo prints decimal "0:39", maps prints hex "00:27"
                major, _, minor = fields[2].partition(":")
                devs.add(f"{int(major):02x}:{int(minor):02x}")
    return frozenset(devs)


@functools.cache
def hugetlb_internal_devices() -> frozenset[str]:
    """``major:minor`` of the kernel's internal hugetlbfs mounts (one per huge page size).

    MAP_HUGETLB memory, SysV ``SHM_HUGETLB`` segments (``/SYSV<key>``) and
    ``memfd_create(MFD_HUGETLB)`` files all live there, and mountinfo does not
    list it: a hugetlb memfd of each size (creating one reserves nothing) tells
    its device.  Sizes this kernel does not offer are skipped.
    """
    devs = set()
    try:
        sizes = [int(name.split("-")[1].rstrip("kB")) * 1024 for name in os.listdir("/sys/kernel/mm/hugepages")]
    except (OSError, ValueError, IndexError):
        sizes = []
    for flags in [0] + [(size.bit_length() - 1) << 26 for size in sizes]:  # MFD_HUGE_SHIFT
        try:
            fd = os.memfd_create("softdirty-probe", getattr(os, "MFD_HUGETLB", 4) | flags | os.MFD_CLOEXEC)
        except (OSError, AttributeError):
            continue
        try:
            dev = os.fstat(fd).st_dev
            devs.add(f"{os.major(dev):02x}:{os.minor(dev):02x}")
        finally:
            os.close(fd)
    return frozenset(devs)


def mark_hugetlb(vmas: list[Vma], hugetlbfs_devs: frozenset[str]) -> list[Vma]:
    """Flag hugetlb VMAs: MAP_HUGETLB anon memory shows as ``/anon_hugepage``;
    other hugetlb memory (hugetlbfs files, SysV ``SHM_HUGETLB``, hugetlb memfds)
    by its mount's device: pass :func:`hugetlbfs_devices` of the mountinfo
    together with :func:`hugetlb_internal_devices`."""
    return [
        replace(v, hugetlb=True) if v.path == "/anon_hugepage" or v.dev in hugetlbfs_devs else v for v in vmas
    ]


# Lines seen before, parsed (a Vma is immutable): a tracker re-reads the same maps at every
# harvest, and parsing them again was a third of a small harvest's Python time.
_PARSED: dict[str, Vma] = {}
_PARSED_MAX = 8192


def parse_maps(text: str) -> list[Vma]:
    """Every line of a maps file; raises :class:`MapsFormatError` on garbage."""
    parsed = _PARSED
    out = []
    for line in text.split("\n"):
        if not line:
            continue
        vma = parsed.get(line)
        if vma is None:
            vma = parse_line(line)
            if len(parsed) >= _PARSED_MAX:
                parsed.clear()
            parsed[line] = vma
        out.append(vma)
    return out
