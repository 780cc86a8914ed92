"""Incremental pre-copy dumps of a live process's memory, and checking them.

:func:`dump` copies a running process's memory into an image directory the
way live migration does it:

* round 0 copies all readable memory (private anonymous memory only where a
  page exists: a page never touched reads as zero and is not copied);
* rounds 1, 2, ... copy only what was written since the round before (an
  exact tracker: soft-dirty reads and clears with the target stopped, uffd
  re-arms atomically), while the target keeps running;
* when the :class:`StopRule` says so, the last round stops every thread
  (ptrace, :mod:`softdirty.freeze`), copies what is still dirty, what no
  tracker of this process can vouch for (shared file mappings, which anyone
  may write through a file descriptor; shared anonymous pages not mapped by
  this process alone; anonymous pages mapped but not exclusively, such as
  the zero page after ``MADV_DONTNEED``), records the final layout and the
  pages that no longer exist, and lets it go.

Every round also copies address ranges whose mapping is new since the round
before: mremap may move whole page tables without marking them soft-dirty.

Before the last round the same process is also stopped and copied whole
once (into memory, as the last round does), so the report can put the last
round's freeze time beside a plain stop-and-copy.

The image
---------
::

    DIR/COMPLETE               {"format", "version", "image": "img-...", "index_sha256"}: written last
    DIR/img-<id>/index.json    rounds, final VMAs, runs, skipped ranges, timings
    DIR/img-<id>/pages-<r>.img page data of round r, runs back to back

A run is ``{vaddr, nr_pages, flags, causes, round, file, offset, sha256}``
(``zero: true`` and no data for a page that no longer exists).  The runs of
a round tile its data file exactly; every run carries the SHA-256 of its
data, and ``COMPLETE`` that of the index.  The content of a page is that of
the run of the highest round that covers it; a page of private anonymous
memory that no run covers is zero.  Unreadable ranges (``PROT_NONE``,
``[vvar]``, guard pages) are listed as skipped, with the reason.

Everything is written into ``DIR/.tmp-<pid>-<token>/`` (mode 0700; files
0600, ``O_CREAT|O_EXCL|O_NOFOLLOW``), fsynced, renamed to ``img-<id>``, and
only then does ``COMPLETE`` (written to a temporary name, fsynced, renamed)
point at it.  An interrupted dump leaves either no ``COMPLETE`` or the old
one, pointing at the old image, untouched.  An existing image is replaced
only with ``force=True``, and removed only after the new one is complete.
Nothing is written outside ``DIR``: every file is opened relative to it.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import hashlib
import heapq
import json
import os
import secrets
import signal
import stat
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from softdirty import vmio
from softdirty.dirtyset import Cause, DirtySet, _cause_names, normalize
from softdirty.errors import SoftDirtyError
from softdirty.freeze import Freeze
from softdirty.maps import Vma
from softdirty.pagemap import PAGE_SIZE, PM
from softdirty.process import TASK_SIZE_4LEVEL, LiveProcess, check_pid

if TYPE_CHECKING:
    from softdirty.tracker import Tracker

FORMAT = "softdirty-image"
VERSION = 1
COMPLETE = "COMPLETE"
INDEX = "index.json"
CHUNK = 16 << 20  # bytes per copy batch and largest run
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_SPECIAL_SKIP = {"[vvar]": "kernel data page ([vvar]): not process memory",
                 "[vvar_vclock]": "kernel data page ([vvar_vclock]): not process memory"}

Progress = Callable[[int, str, int, int], None]  # (round, kind, bytes done, bytes total)


class ImageError(SoftDirtyError):
    """An image directory that cannot be written, read, or trusted."""


class ImageExists(ImageError):
    """The directory already holds an image (pass force=True to replace it)."""


# -- the stop rule ---------------------------------------------------------------------


@dataclass(frozen=True)
class StopRule:
    """When to stop pre-copying and do the last, frozen round.

    After a dirty round (1, 2, ...) we stop if it wrote fewer than
    ``min_pages`` pages, if ``max_rounds`` pre-copy rounds (round 0
    included) are done, or if the dirty set grew by more than ``max_growth``
    (0.10 = 10 %) over the round before: then pre-copy no longer converges.
    Defaults: phaul (go-criu) stops under 64 written pages and after 8
    iterations; growth is 10 % here, see the README for what go-criu's code
    does.
    """

    min_pages: int = 64
    max_rounds: int = 8
    max_growth: float = 0.10

    def __post_init__(self) -> None:
        if isinstance(self.min_pages, bool) or not isinstance(self.min_pages, int) or self.min_pages < 0:
            raise ValueError(f"min_pages must be an int >= 0, not {self.min_pages!r}")
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or self.max_rounds < 1:
            raise ValueError(f"max_rounds must be an int >= 1, not {self.max_rounds!r}")
        if not isinstance(self.max_growth, (int, float)) or not self.max_growth >= 0:
            raise ValueError(f"max_growth must be a number >= 0, not {self.max_growth!r}")

    def stop(self, rounds_done: int, pages: int | None, previous: int | None) -> str | None:
        """Why to stop after ``rounds_done`` pre-copy rounds (None: go on).

        ``pages``: pages the last round copied because they were written
        (None after round 0); ``previous``: the same for the round before.
        """
        if rounds_done >= self.max_rounds:
            return f"{self.max_rounds} pre-copy rounds done"
        if pages is None:
            return None
        if pages < self.min_pages:
            return f"round {rounds_done - 1} wrote {pages} pages (< {self.min_pages})"
        if previous is not None and pages > previous * (1 + self.max_growth):
            return (f"the dirty set grew from {previous} to {pages} pages (> {self.max_growth:.0%}): "
                    "pre-copy is not converging")
        return None


# -- reports -----------------------------------------------------------------------------


@dataclass
class RoundReport:
    number: int
    kind: str  # "full", "dirty", "final"
    pages_reported: int  # pages the tracker reported (0 for the full round)
    pages_copied: int
    bytes_copied: int
    runs: int
    skipped_pages: int
    seconds: float
    freeze_seconds: float = 0.0  # the final round: from the first seize until every thread was let go


@dataclass
class DumpReport:
    directory: str
    image: str
    pid: int
    backend: str
    why: str
    rounds: list[RoundReport]
    stop_reason: str
    final_freeze_seconds: float  # stop, copy what is left, let go
    final_freeze_acquire_seconds: float
    stop_and_copy_seconds: float | None  # stop, copy everything, let go (None: not measured)
    stop_and_copy_bytes: int | None
    total_bytes: int
    skipped: list[dict[str, Any]]
    seconds: float
    freeze: Freeze | None = field(default=None, repr=False)  # held when leave="frozen"

    def release(self) -> None:
        """Let a target left frozen (``leave="frozen"``) go."""
        if self.freeze is not None:
            freeze, self.freeze = self.freeze, None
            freeze.thaw()

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "freeze"}
        out["rounds"] = [asdict(r) for r in self.rounds]
        return out


# -- the image directory -----------------------------------------------------------------


def _fsync_dir(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EROFS):
            raise


def _open_dir(path: str | os.PathLike[str], create: bool) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        if not create:
            raise ImageError(f"{os.fspath(path)}: no such directory") from None
        try:
            os.mkdir(path, _DIR_MODE)
        except FileNotFoundError:
            raise ImageError(f"{os.fspath(path)}: its parent directory does not exist") from None
        return os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ImageError(f"{os.fspath(path)}: not a directory (symbolic links are not followed)") from None
        raise ImageError(f"{os.fspath(path)}: {exc.strerror}") from None


def _read_small(dirfd: int, name: str, limit: int = 1 << 28) -> bytes:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as exc:
        raise ImageError(f"cannot open {name}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError(f"{name} is not a regular file")
        chunks = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ImageError(f"{name} is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _complete_record(dirfd: int) -> dict[str, Any] | None:
    try:
        raw = _read_small(dirfd, COMPLETE, 1 << 16)
    except ImageError:
        try:
            os.stat(COMPLETE, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        raise
    try:
        rec = json.loads(raw)
    except ValueError:
        raise ImageError(f"{COMPLETE} is not valid JSON") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise ImageError(f"{COMPLETE} does not describe a {FORMAT}")
    if rec.get("version") != VERSION:
        raise ImageError(f"image version {rec.get('version')!r} is not supported (this is version {VERSION})")
    image = rec.get("image")
    if not isinstance(image, str) or not image.startswith("img-") or "/" in image:
        raise ImageError(f"{COMPLETE} names a bad image directory {image!r}")
    return rec


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_tree(dirfd: int, name: str) -> None:
    """Remove ``name`` (a directory of ours) under ``dirfd``, never following links."""
    try:
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    except FileNotFoundError:
        return
    try:
        for entry in os.listdir(sub):
            st = os.stat(entry, dir_fd=sub, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _remove_tree(sub, entry)
            else:
                os.unlink(entry, dir_fd=sub)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dirfd)


class ImageWriter:
    """Builds one image in a temporary directory inside ``directory`` and publishes it."""

    def __init__(self, directory: str | os.PathLike[str], *, force: bool = False) -> None:
        self.directory = os.fspath(directory)
        self.dirfd = _open_dir(directory, create=True)
        self.tmpfd = -1
        self._files: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        try:
            try:
                fcntl.flock(self.dirfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ImageError(f"{self.directory}: another dump is writing into this directory") from None
            self.old = _complete_record(self.dirfd)
            if self.old is not None and not force:
                raise ImageExists(f"{self.directory} already holds an image ({self.old['image']}); "
                                  "pass force to replace it (the old one is kept until the new one is complete)")
            self._check_contents()
            self.token = secrets.token_hex(6)
            self.tmp = f".tmp-{os.getpid()}-{self.token}"
            os.mkdir(self.tmp, _DIR_MODE, dir_fd=self.dirfd)
            self.tmpfd = os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 dir_fd=self.dirfd)
        except BaseException:
            self.close()
            raise

    def _check_contents(self) -> None:
        current = self.old["image"] if self.old else None
        for name in os.listdir(self.dirfd):
            if name == COMPLETE or name == current:
                continue
            if name.startswith(".tmp-"):
                owner = name.split("-")[1]
                if owner.isdigit() and int(owner) != os.getpid() and _pid_alive(int(owner)):
                    continue  # (cannot be: we hold the lock) another live dump's; leave it
                _remove_tree(self.dirfd, name)  # left by an interrupted dump
                continue
            if name.startswith(".COMPLETE.tmp-"):
                os.unlink(name, dir_fd=self.dirfd)
                continue
            if name.startswith("img-"):
                _remove_tree(self.dirfd, name)  # renamed, but COMPLETE never pointed at it
                continue
            raise ImageError(f"{self.directory} holds {name!r}, which is not part of an image: "
                             "refusing to write an image into a directory with other files")

    def _file(self, name: str) -> int:
        fd = self._files.get(name)
        if fd is None:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE,
                         dir_fd=self.tmpfd)
            self._files[name] = fd
            self._sizes[name] = 0
        return fd

    def touch(self, name: str) -> None:
        """Create file ``name`` of the image if it does not exist yet (an empty round)."""
        self._file(name)

    def append(self, name: str, data: bytes | memoryview) -> int:
        """Append ``data`` to file ``name`` of the image; its offset."""
        fd = self._file(name)
        offset = self._sizes[name]
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        self._sizes[name] += len(data)
        return offset

    def size(self, name: str) -> int:
        return self._sizes.get(name, 0)

    def publish(self, index: dict[str, Any]) -> str:
        """Write the index, make everything durable, then point COMPLETE at it; the image name."""
        body = json.dumps(index, indent=1, sort_keys=True).encode()
        fd = self._file(INDEX)
        self.append(INDEX, body)
        for f in self._files.values():
            os.fsync(f)
        _fsync_dir(self.tmpfd)
        image = f"img-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{self.token}"
        os.rename(self.tmp, image, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
        self.tmp = ""
        _fsync_dir(self.dirfd)
        record = {"format": FORMAT, "version": VERSION, "image": image,
                  "index_sha256": hashlib.sha256(body).hexdigest()}
        temp = f".COMPLETE.tmp-{self.token}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE,
                     dir_fd=self.dirfd)
        try:
            os.write(fd, json.dumps(record).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, COMPLETE, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)  # the atomic switch
        _fsync_dir(self.dirfd)
        if self.old is not None and self.old["image"] != image:
            _remove_tree(self.dirfd, self.old["image"])
            _fsync_dir(self.dirfd)
        return image

    def abort(self) -> None:
        """Remove the unfinished image (COMPLETE, and any older image, stay untouched)."""
        if self.tmp and self.dirfd >= 0:
            with contextlib.suppress(OSError):
                _remove_tree(self.dirfd, self.tmp)
            self.tmp = ""

    def close(self) -> None:
        for fd in self._files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files = {}
        for attr in ("tmpfd", "dirfd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                os.close(fd)  # closing the directory fd also drops the flock


# -- what to copy ------------------------------------------------------------------------


def _vma_dict(v: Vma) -> dict[str, Any]:
    return {"start": v.start, "end": v.end, "perms": v.perms, "offset": v.offset, "dev": v.dev, "inode": v.inode,
            "path": v.path, "deleted": v.deleted}


def _private_anon(v: Vma) -> bool:
    """Private anonymous memory: a page that does not exist reads as zero ([vdso] is not such)."""
    return v.anonymous and not v.shared and not v.special


def _skip_reason(v: Vma) -> str | None:
    if v.end > TASK_SIZE_4LEVEL:
        return "above the user address range"
    if not v.readable:
        return "not readable (PROT_NONE or write-only): a reservation or guard"
    return _SPECIAL_SKIP.get(v.path)


def _present(proc: LiveProcess, v: Vma) -> list[tuple[int, int]]:
    """Ranges of ``v`` with a page behind them: present, or swapped.

    A swap entry that carries the uffd-wp bit is skipped: that is what the
    uffd back end's write-protect markers on never-touched pages look like
    (reading them would only map the zero page everywhere).  A really
    swapped page that was armed reads the same; the dump looks before it
    arms (see :func:`dump`), so it sees such a page then.
    """
    from softdirty import scanner

    present, swap, wp = int(PM.PRESENT), int(PM.SWAP), int(PM.UFFD_WP)
    result = scanner.scan_fd(proc.pagemap_fileno(), v.start, v.end, match_mask=0, match_value=0,
                             return_mask=present | swap | wp)
    if not result.complete:
        raise proc.mm_gone_error()
    r = result.ranges
    out: list[tuple[int, int]] = []
    for i in range(0, len(r), 3):
        key = r[i + 2]
        if key & present or (key & swap and not key & wp):
            if out and out[-1][1] == r[i]:
                out[-1] = (out[-1][0], r[i + 1])
            else:
                out.append((r[i], r[i + 1]))
    return out


def _union(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted([*a, *b]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _maybe_written_by_others(proc: LiveProcess, v: Vma) -> list[tuple[int, int]]:
    """Pages of a shared VMA whose content another process (or a write(2)) may have changed.

    A file, memfd or SysV segment can be written through a file descriptor,
    which no page table of ours sees: all of it.  Shared anonymous memory
    (``/dev/zero``) can only be written through a mapping: only pages not
    mapped by us alone (``PM_MMAP_EXCLUSIVE``), or not present.
    """
    if v.path != "/dev/zero":
        return [(v.start, v.end)]
    from softdirty import scanner

    mask = int(PM.PRESENT | PM.MMAP_EXCLUSIVE)
    result = scanner.scan_fd(proc.pagemap_fileno(), v.start, v.end, match_mask=mask, match_value=mask)
    if not result.complete:
        raise proc.mm_gone_error()
    r = result.ranges
    return _complement(v.start, v.end, [(r[i], r[i + 1]) for i in range(0, len(r), 3)])


def _complement(start: int, end: int, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    pos = start
    for s, e in ranges:
        if s > pos:
            out.append((pos, s))
        pos = max(pos, e)
    if pos < end:
        out.append((pos, end))
    return out


def _page_states(proc: LiveProcess, v: Vma) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(absent ranges, present-but-not-exclusively-mapped ranges) of a private anonymous VMA."""
    from softdirty import scanner

    present, excl = int(PM.PRESENT), int(PM.MMAP_EXCLUSIVE)
    result = scanner.scan_fd(proc.pagemap_fileno(), v.start, v.end, match_mask=0, match_value=0,
                             return_mask=int(PM.PRESENT | PM.SWAP | PM.MMAP_EXCLUSIVE))
    if not result.complete:
        raise proc.mm_gone_error()
    r = result.ranges
    absent, not_ours_alone = [], []
    for i in range(0, len(r), 3):
        key = r[i + 2]
        if key == 0:
            absent.append((r[i], r[i + 1]))
        elif key & present and not key & excl:
            not_ours_alone.append((r[i], r[i + 1]))
    return absent, not_ours_alone


def full_spans(proc: LiveProcess, vmas: Sequence[Vma], before: Sequence[tuple[int, int]] = ()
               ) -> tuple[list[tuple[int, int, int]], list[dict[str, Any]]]:
    """What round 0 (and a stop-and-copy) reads: (start, end, flags) spans, and skipped ranges.

    ``before``: private anonymous ranges found with content earlier (the
    dump scans once before arming the tracker, once after), added in.
    """
    spans: list[tuple[int, int, int]] = []
    skipped: list[dict[str, Any]] = []
    for v in vmas:
        why = _skip_reason(v)
        if why is not None:
            skipped.append({"vaddr": v.start, "nr_pages": v.pages, "reason": f"{v.name}: {why}"})
            continue
        if _private_anon(v):
            earlier = [(max(s, v.start), min(e, v.end)) for s, e in before if s < v.end and v.start < e]
            spans.extend((s, e, 0) for s, e in _union(_present(proc, v), earlier))
        else:
            spans.append((v.start, v.end, 0))
    return spans, skipped


def _split(spans: Sequence[tuple[int, int, int]], limit: int = CHUNK) -> Iterator[tuple[int, int, int]]:
    for s, e, f in spans:
        while e - s > limit:
            yield s, s + limit, f
            s += limit
        yield s, e, f


def _batches(spans: Sequence[tuple[int, int, int]]) -> Iterator[list[tuple[int, int, int]]]:
    batch: list[tuple[int, int, int]] = []
    size = 0
    for span in _split(spans):
        n = span[1] - span[0]
        if batch and (size + n > CHUNK or len(batch) >= vmio.IOV_MAX):
            yield batch
            batch, size = [], 0
        batch.append(span)
        size += n
    if batch:
        yield batch


def _cut_out(s: int, e: int, bad: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """[s, e) minus the ``bad`` ranges."""
    out = []
    pos = s
    for bs, be in bad:
        if be <= pos or bs >= e:
            continue
        if bs > pos:
            out.append((pos, bs))
        pos = max(pos, be)
    if pos < e:
        out.append((pos, e))
    return out


def merge_spans(spans: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Sorted, coalesced spans; where spans overlap, one span with the flags OR-ed."""
    flat = normalize([x for span in spans for x in span])
    return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]


class Arena:
    """Memory faulted in ahead of the last round, so that the frozen window holds only the reads.

    The last round keeps what it reads until the target is let go.  Read into
    a buffer reused per batch it needs a second copy of everything it keeps;
    read into fresh memory, it pays a page fault per page: either way the
    target stays frozen longer than a plain stop-and-copy (4x at 1 GiB).
    ``Arena(expected)`` touches ``expected`` bytes beforehand; :meth:`take`
    hands out pieces of it (and fresh memory past it).
    """

    def __init__(self, expected: int) -> None:
        self._chunks: list[memoryview] = []
        self._free: memoryview = memoryview(bytearray(0))
        left = max(0, expected)
        while left > 0:
            n = min(CHUNK, -(-left // PAGE_SIZE) * PAGE_SIZE)
            chunk = bytearray(n)
            chunk[::PAGE_SIZE] = b"\x01" * (n // PAGE_SIZE)  # fault every page in now, not while frozen
            self._chunks.append(memoryview(chunk))
            left -= n

    def take(self, size: int) -> memoryview:
        while len(self._free) < size:
            if not self._chunks:
                return memoryview(bytearray(size))
            self._free = self._chunks.pop()
        piece, self._free = self._free[:size], self._free[size:]
        return piece


def copy_spans(pid: int, spans: Sequence[tuple[int, int, int]], sink: Callable[[int, int, int, memoryview], None],
               progress: Callable[[int], None] | None = None, arena: Arena | None = None) -> list[tuple[int, int]]:
    """Read ``spans`` of ``pid`` in batches; ``sink(start, end, flags, data)`` per readable piece.

    Overlapping spans are read once.  Returns the unreadable ranges.  Without
    ``arena`` one buffer is reused (``data`` is valid during the call only);
    with one, every batch is read into memory taken from it, and ``data``
    stays valid for the sink to keep.
    """
    spans = merge_spans(spans)
    bad_all: list[tuple[int, int]] = []
    buf = bytearray(0 if arena is not None else min(CHUNK, max((e - s for s, e, _ in spans), default=0)))
    for batch in _batches(spans):
        size = sum(e - s for s, e, _ in batch)
        if arena is not None:
            view = arena.take(size)
        else:
            if len(buf) < size:
                buf = bytearray(size)
            view = memoryview(buf)
        bad = vmio.read_into(pid, [(s, e) for s, e, _ in batch], view)
        bad_all.extend(bad)
        off = 0
        for s, e, f in batch:
            for ps, pe in _cut_out(s, e, bad) if bad else [(s, e)]:
                sink(ps, pe, f, view[off + ps - s : off + pe - s])
            off += e - s
        if progress is not None:
            progress(size)
    return bad_all


# -- dump --------------------------------------------------------------------------------


class _Dumper:
    def __init__(self, proc: LiveProcess, writer: ImageWriter, progress: Progress | None) -> None:
        self.proc = proc
        self.writer = writer
        self.progress = progress
        self.runs: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.round_files: list[dict[str, Any]] = []
        self.final_acquire = 0.0
        self.final_vmas: list[Vma] = []

    def _report(self, number: int, kind: str, total: int) -> Callable[[int], None] | None:
        if self.progress is None:
            return None
        done = [0]
        prog = self.progress

        def step(n: int) -> None:
            done[0] += n
            prog(number, kind, done[0], total)

        prog(number, kind, 0, total)
        return step

    def record_bad(self, number: int, bad: Sequence[tuple[int, int]]) -> None:
        for s, e in bad:
            self.skipped.append({"vaddr": s, "nr_pages": (e - s) // PAGE_SIZE, "round": number,
                                 "reason": "unreadable (process_vm_readv: no page can be pinned here)"})

    def write_round(self, number: int, pieces: Sequence[tuple[int, int, int, bytes | memoryview]]) -> tuple[int, int]:
        """Write runs of one round to pages-<number>.img; (bytes, runs)."""
        name = f"pages-{number}.img"
        total = 0
        for s, e, f, data in pieces:
            offset = self.writer.append(name, data)
            self.runs.append({"vaddr": s, "nr_pages": (e - s) // PAGE_SIZE, "flags": f, "causes": _cause_names(f),
                              "round": number, "file": name, "offset": offset,
                              "sha256": hashlib.sha256(data).hexdigest()})
            total += e - s
        return total, len(pieces)

    def copy_round(self, number: int, kind: str, spans: Sequence[tuple[int, int, int]]) -> tuple[int, int, int]:
        """Copy spans straight to the image (target running); (bytes, runs, unreadable pages)."""
        written = [0, 0]

        def sink(s: int, e: int, f: int, data: memoryview) -> None:
            b, r = self.write_round(number, [(s, e, f, data)])
            written[0] += b
            written[1] += r

        total = sum(e - s for s, e, _ in spans)
        bad = copy_spans(self.proc.pid, spans, sink, self._report(number, kind, total))
        self.record_bad(number, bad)
        self.file_entry(number, kind)
        return written[0], written[1], sum(e - s for s, e in bad) // PAGE_SIZE

    def file_entry(self, number: int, kind: str) -> None:
        name = f"pages-{number}.img"
        self.writer.touch(name)  # an empty round still has its (empty) file
        self.round_files.append({"round": number, "kind": kind, "file": name, "bytes": self.writer.size(name)})


def _unreadable_now(v: Vma) -> bool:
    """Readable later, perhaps (mprotect): dirty pages there are owed to a later round."""
    return v.end <= TASK_SIZE_4LEVEL and not v.readable


def _clip(ranges: Sequence[tuple[int, int, int]], vmas: Sequence[Vma],
          keep: Callable[[Vma], bool]) -> list[tuple[int, int, int]]:
    """The parts of (start, end, flags) ranges that lie in VMAs for which ``keep`` holds."""
    chosen = sorted((v for v in vmas if keep(v)), key=lambda v: v.start)
    starts = [v.start for v in chosen]
    out = []
    for rs, re_, f in ranges:
        i = max(bisect.bisect_right(starts, rs) - 1, 0)
        while i < len(chosen) and chosen[i].start < re_:
            s, e = max(rs, chosen[i].start), min(re_, chosen[i].end)
            if s < e:
                out.append((s, e, f))
            i += 1
    return out


def _spans_of(dirty: DirtySet, vmas: Sequence[Vma]) -> list[tuple[int, int, int]]:
    """Dirty ranges clipped to readable, copyable VMAs."""
    return _clip([(r.start, r.end, int(r.flags)) for r in dirty], vmas, lambda v: _skip_reason(v) is None)


def _owed(dirty: DirtySet, vmas: Sequence[Vma]) -> DirtySet:
    """Dirty ranges in VMAs that cannot be read right now (PROT_NONE for the moment)."""
    triples = array("Q")
    for s, e, f in _clip([(r.start, r.end, int(r.flags)) for r in dirty], vmas, _unreadable_now):
        triples.extend((s, e, f))
    return DirtySet(triples, epoch=dirty.epoch, backend=dirty.backend, pid=dirty.pid)


def _layout_key(v: Vma) -> tuple[str, int, str, str, int]:
    return (v.dev, v.inode, v.path, v.perms, v.offset - v.start if v.inode else 0)


def new_ranges(proc: LiveProcess, before: Sequence[Vma], now: Sequence[Vma]) -> list[tuple[int, int, int]]:
    """Address ranges whose mapping is new since ``before``: copy them whole.

    Not every such range reads dirty: mremap moves whole page tables
    untouched when it can (2 MiB-aligned), and the moved pages then keep a
    clear soft-dirty bit at their new address (spec 3.2).  A range counts as
    old if a VMA of ``before`` with the same identity, permissions and file
    offset covered it.
    """
    old: dict[tuple[str, int, str, str, int], list[tuple[int, int]]] = {}
    for b in before:
        old.setdefault(_layout_key(b), []).append((b.start, b.end))
    out: list[tuple[int, int, int]] = []
    for v in now:
        if _skip_reason(v) is not None:
            continue
        fresh = _complement(v.start, v.end, sorted(r for r in old.get(_layout_key(v), ()) if r[1] > v.start
                                                   and r[0] < v.end))
        for s, e in fresh:
            if _private_anon(v):
                part = Vma(s, e, v.perms, v.offset, v.dev, v.inode, v.path, v.deleted)
                out.extend((ps, pe, int(Cause.NEW_MAPPING)) for ps, pe in _present(proc, part))
            else:
                out.append((s, e, int(Cause.NEW_MAPPING)))
    return out


def dump(target: int | LiveProcess, directory: str | os.PathLike[str], *, backend: str = "auto",
         rule: StopRule | None = None, force: bool = False, compare: bool = True, leave: str = "running",
         progress: Progress | None = None) -> DumpReport:
    """Pre-copy ``target``'s memory into ``directory``; see the module text.

    ``leave``: ``"running"`` (default), ``"frozen"`` (keep every thread
    ptrace-stopped; ``report.release()`` lets it go, from this thread) or
    ``"stopped"`` (a group stop, as CRIU's ``--leave-stopped``: the one
    place we send SIGSTOP, on request; SIGCONT resumes it).  ``compare``:
    also time a plain stop-and-copy of the process.
    """
    from softdirty.tracker import track

    rule = rule or StopRule()
    if leave not in ("running", "frozen", "stopped"):
        raise ValueError(f"leave must be 'running', 'frozen' or 'stopped', not {leave!r}")
    owns = not isinstance(target, LiveProcess)
    proc = LiveProcess(check_pid(target)) if not isinstance(target, LiveProcess) else target
    if proc.pid == os.getpid():
        if owns:
            proc.close()
        raise ValueError("a process cannot dump itself (its last round must stop every thread)")
    began = time.monotonic()
    try:
        writer = ImageWriter(directory, force=force)
    except BaseException:
        if owns:
            proc.close()
        raise
    freeze_kept: Freeze | None = None
    try:
        d = _Dumper(proc, writer, progress)
        with track(proc, backend=backend, exact=True) as tracker:
            rounds: list[RoundReport] = []
            # Round 0: checkpoint first, so every write during the copy shows up in round 1.
            t0 = time.monotonic()
            # Which private anonymous pages exist, before the tracker arms anything (uffd's
            # write-protect markers on untouched pages look like swapped pages to pagemap).
            before = [r for v in proc.read_maps() if _skip_reason(v) is None and _private_anon(v)
                      for r in _present(proc, v)]
            tracker.reset()
            layout = proc.read_maps()
            spans, skipped = full_spans(proc, layout, before)
            d.skipped.extend(dict(s, round=0) for s in skipped)
            nbytes, nruns, nbad = d.copy_round(0, "full", spans)
            rounds.append(RoundReport(0, "full", 0, nbytes // PAGE_SIZE, nbytes, nruns, nbad, time.monotonic() - t0))
            previous: int | None = None
            pages: int | None = None
            while (reason := rule.stop(len(rounds), pages, previous)) is None:
                number = len(rounds)
                t0 = time.monotonic()
                with tracker.harvest() as dirty:  # handed back (and so in the last round) if copying fails
                    spans = _spans_of(dirty, dirty.vma_list) + new_ranges(proc, layout, dirty.vma_list)
                    nbytes, nruns, nbad = d.copy_round(number, "dirty", spans)
                owed = _owed(dirty, dirty.vma_list)
                if owed:
                    tracker.requeue(owed)  # unreadable now: try again next round
                layout = list(dirty.vma_list)
                rounds.append(RoundReport(number, "dirty", dirty.page_count, nbytes // PAGE_SIZE, nbytes, nruns,
                                          nbad, time.monotonic() - t0))
                previous, pages = pages, dirty.page_count
            sc_seconds: float | None = None
            sc_bytes: int | None = None
            if compare:
                sc_seconds, sc_bytes = stop_and_copy(proc)
            last_dirty = rounds[-1].bytes_copied if rounds[-1].kind == "dirty" else 0
            final, freeze_kept = _final_round(d, tracker, len(rounds), leave, layout, last_dirty)
            rounds.append(final)
            vmas = d.final_vmas
            total = sum(r.bytes_copied for r in rounds)
            report = DumpReport(
                directory=os.fspath(directory), image="", pid=proc.pid, backend=tracker.backend_name, why=tracker.why,
                rounds=rounds, stop_reason=reason, final_freeze_seconds=final.freeze_seconds,
                final_freeze_acquire_seconds=d.final_acquire, stop_and_copy_seconds=sc_seconds,
                stop_and_copy_bytes=sc_bytes, total_bytes=total, skipped=d.skipped, seconds=0.0,
            )
        index = {
            "format": FORMAT, "version": VERSION, "page_size": PAGE_SIZE, "pid": proc.pid,
            "kernel": os.uname().release, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backend": report.backend, "why": report.why, "stop_rule": asdict(rule), "stop_reason": reason,
            "rounds": d.round_files, "vmas": [_vma_dict(v) for v in vmas], "runs": d.runs, "skipped": d.skipped,
            "report": {k: v for k, v in report.to_dict().items() if k not in ("skipped", "directory", "image")},
        }
        report.image = writer.publish(index)
        report.seconds = time.monotonic() - began
        report.freeze = freeze_kept
        freeze_kept = None
        return report
    except BaseException:
        writer.abort()
        if freeze_kept is not None:
            freeze_kept.thaw()
        raise
    finally:
        writer.close()
        if owns and leave != "frozen":
            proc.close()


def _final_round(d: _Dumper, tracker: Tracker, number: int, leave: str,
                 layout: Sequence[Vma], expected_bytes: int = 0) -> tuple[RoundReport, Freeze | None]:
    """Stop the target, copy what is left into memory, let it go, then write."""
    pieces: list[tuple[int, int, int, memoryview]] = []

    def keep(s: int, e: int, f: int, data: memoryview) -> None:
        pieces.append((s, e, f, data))  # a piece of the arena: no second copy

    # Expect about what the last dirty round copied, and a quarter more (at most 256 MiB more:
    # the round grows when pre-copy does not converge), faulted in before the freeze.
    arena = Arena(expected_bytes + min(expected_bytes // 4, 256 << 20))
    t0 = time.monotonic()
    freeze = Freeze(d.proc)
    freeze.freeze()
    try:
        with tracker.frozen(using=freeze):  # the exact harvest runs under this freeze
            # Nothing follows this round: no need to clear (a soft-dirty clear walks every page table).
            dirty = tracker.harvest(reset=None if tracker.backend.rearms_on_harvest else False)
        vmas = list(dirty.vma_list)  # read by the harvest, under this freeze
        spans = _spans_of(dirty, vmas) + new_ranges(d.proc, layout, vmas)
        # Shared mappings: another process may have written them; no tracker of this one sees that.
        spans += [(s, e, int(Cause.UNTRACKED)) for v in vmas if v.shared and _skip_reason(v) is None
                  for s, e in _maybe_written_by_others(d.proc, v)]
        zeros: list[tuple[int, int]] = []
        for v in vmas:
            if _skip_reason(v) is None and _private_anon(v):
                absent, not_ours_alone = _page_states(d.proc, v)
                zeros += absent
                # A page mapped but not ours alone (the zero page after a zap, or COW-shared after fork)
                # may hold content no write of ours produced: copy it.
                spans += [(s, e, 0) for s, e in not_ours_alone]
        bad = copy_spans(d.proc.pid, spans, keep, arena=arena)
        for s, e, _ in _clip([(r.start, r.end, int(r.flags)) for r in dirty], vmas, _unreadable_now):
            d.skipped.append({"vaddr": s, "nr_pages": (e - s) // PAGE_SIZE, "round": number,
                              "reason": "written, but not readable when the process was stopped (PROT_NONE)"})
    except BaseException:
        freeze.thaw()
        raise
    kept: Freeze | None = None
    if leave == "frozen":
        kept = freeze
    else:
        if leave == "stopped":
            os.kill(d.proc.pid, signal.SIGSTOP)  # pending: taken, as a group stop, as each thread is let go
        freeze.thaw()
    freeze_seconds = time.monotonic() - t0
    d.final_acquire = freeze.acquire_seconds
    d.final_vmas = vmas
    nbytes, nruns = d.write_round(number, pieces)
    for s, e in zeros:
        d.runs.append({"vaddr": s, "nr_pages": (e - s) // PAGE_SIZE, "flags": 0, "causes": [], "round": number,
                       "zero": True})
    d.record_bad(number, bad)
    d.file_entry(number, "final")
    report = RoundReport(number, "final", dirty.page_count, nbytes // PAGE_SIZE, nbytes, nruns,
                         sum(e - s for s, e in bad) // PAGE_SIZE, time.monotonic() - t0, freeze_seconds)
    return report, kept


def stop_and_copy(target: int | LiveProcess) -> tuple[float, int]:
    """Stop every thread, read all readable memory (into a scratch buffer), let go: (seconds, bytes)."""
    proc = target if isinstance(target, LiveProcess) else None
    pid = target.pid if isinstance(target, LiveProcess) else check_pid(target)
    t0 = time.monotonic()
    copied = [0]

    def count(s: int, e: int, f: int, data: memoryview) -> None:
        copied[0] += e - s

    with Freeze(proc if proc is not None else pid):
        live = proc if proc is not None else LiveProcess(pid)
        try:
            spans, _ = full_spans(live, live.read_maps())
            copy_spans(pid, spans, count)
        finally:
            if proc is None:
                live.close()
    return time.monotonic() - t0, copied[0]


# -- reading and verifying an image ----------------------------------------------------------


@dataclass
class Image:
    directory: str
    name: str
    index: dict[str, Any]
    dirfd: int
    imgfd: int

    @property
    def vmas(self) -> list[Vma]:
        return [Vma(v["start"], v["end"], v["perms"], v["offset"], v["dev"], v["inode"], v["path"], v["deleted"])
                for v in self.index["vmas"]]

    def read_run(self, run: dict[str, Any], start: int, end: int) -> bytes:
        if run.get("zero"):
            return bytes(end - start)
        fd = os.open(run["file"], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.imgfd)
        try:
            off = run["offset"] + start - run["vaddr"]
            data = os.pread(fd, end - start, off)
        finally:
            os.close(fd)
        if len(data) != end - start:
            raise ImageError(f"{run['file']}: short read at offset {off}")
        return data

    def close(self) -> None:
        for attr in ("imgfd", "dirfd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                os.close(fd)

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_data(name: str, imgfd: int, index: dict[str, Any]) -> None:
    """Every data file has its recorded size, every run its checksum (runs tile the files exactly)."""
    by_file: dict[str, list[dict[str, Any]]] = {}
    for run in index["runs"]:
        if not run.get("zero"):
            by_file.setdefault(run["file"], []).append(run)
    for rf in index["rounds"]:
        fd = os.open(rf["file"], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=imgfd)
        try:
            if os.fstat(fd).st_size != rf["bytes"]:
                raise ImageError(f"{name}/{rf['file']} is {os.fstat(fd).st_size} bytes, not {rf['bytes']}")
            covered = 0
            for run in sorted(by_file.get(rf["file"], []), key=lambda r: r["offset"]):
                length = run["nr_pages"] * PAGE_SIZE
                if run["offset"] != covered:
                    raise ImageError(f"{name}/{rf['file']}: runs do not tile the file at offset {covered}")
                data = os.pread(fd, length, run["offset"])
                if len(data) != length or hashlib.sha256(data).hexdigest() != run["sha256"]:
                    raise ImageError(f"run at {run['vaddr']:#x} ({rf['file']}) does not match its checksum")
                covered += length
            if covered != rf["bytes"]:
                raise ImageError(f"{name}/{rf['file']}: {rf['bytes'] - covered} bytes belong to no run")
        finally:
            os.close(fd)


def load_image(directory: str | os.PathLike[str], *, check_data: bool = True) -> Image:
    """Open a complete image: COMPLETE, index checksum and (``check_data``) every run's checksum."""
    dirfd = _open_dir(directory, create=False)
    imgfd = -1
    try:
        rec = _complete_record(dirfd)
        if rec is None:
            raise ImageError(f"{os.fspath(directory)} holds no complete image (no {COMPLETE} marker)")
        try:
            imgfd = os.open(rec["image"], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError as exc:
            raise ImageError(f"{COMPLETE} points at {rec['image']}: {exc.strerror}") from None
        body = _read_small(imgfd, INDEX)
        if hashlib.sha256(body).hexdigest() != rec.get("index_sha256"):
            raise ImageError(f"{rec['image']}/{INDEX} does not match the checksum in {COMPLETE}")
        index = json.loads(body)
        img = Image(os.fspath(directory), rec["image"], index, dirfd, imgfd)
        if check_data:
            _check_data(rec["image"], imgfd, index)
        return img
    except BaseException:
        if imgfd >= 0:
            os.close(imgfd)
        os.close(dirfd)
        raise


def resolve(runs: Sequence[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(start, end, run index) segments: for every page, the run of the highest round covering it."""
    order = sorted(range(len(runs)), key=lambda i: runs[i]["vaddr"])
    points = sorted({r["vaddr"] for r in runs} | {r["vaddr"] + r["nr_pages"] * PAGE_SIZE for r in runs})
    heap: list[tuple[int, int, int]] = []  # (-round, -index, end)
    out: list[tuple[int, int, int]] = []
    j = 0
    for a, b in zip(points, points[1:], strict=False):
        while j < len(order) and runs[order[j]]["vaddr"] <= a:
            i = order[j]
            heapq.heappush(heap, (-runs[i]["round"], -i, runs[i]["vaddr"] + runs[i]["nr_pages"] * PAGE_SIZE))
            j += 1
        while heap and heap[0][2] <= a:
            heapq.heappop(heap)
        if heap:
            idx = -heap[0][1]
            if out and out[-1][2] == idx and out[-1][1] == a:
                out[-1] = (out[-1][0], b, idx)
            else:
                out.append((a, b, idx))
    return out


@dataclass
class VerifyReport:
    ok: bool
    image: str
    pid: int
    compared_pages: int
    mismatches: list[tuple[int, int]]  # page ranges whose bytes differ
    missing: list[tuple[int, int]]  # in the image's layout but no data in the image
    unreadable: list[tuple[int, int]]  # in the image, not readable in the target now
    layout: list[str]  # differences between the image's VMAs and the target's
    skipped_pages: int  # recorded as skipped in the image (not compared)
    freeze_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify(directory: str | os.PathLike[str], target: int | LiveProcess, *, freeze: Freeze | None = None,
           check_data: bool = True) -> VerifyReport:
    """Stop ``target`` and compare the image byte for byte with its memory.

    ``freeze``: an existing freeze of the target to compare under (e.g. a
    dump's ``leave="frozen"``); otherwise every thread is stopped for the
    comparison and let go afterwards.
    """
    pid = target.pid if isinstance(target, LiveProcess) else check_pid(target)
    with load_image(directory, check_data=check_data) as img:
        t0 = time.monotonic()
        own = freeze is None
        fz = freeze if freeze is not None else Freeze(target if isinstance(target, LiveProcess) else pid)
        if own:
            fz.freeze()
        try:
            with LiveProcess(pid) as live:
                now = [v for v in live.read_maps() if _skip_reason(v) is None]
                report = _compare(img, live, now)
        finally:
            if own:
                fz.thaw()
        report.freeze_seconds = time.monotonic() - t0
        return report


def _ranges_add(out: list[tuple[int, int]], s: int, e: int) -> None:
    if out and out[-1][1] == s:
        out[-1] = (out[-1][0], e)
    else:
        out.append((s, e))


def _with_page(proc: LiveProcess, start: int, end: int) -> list[tuple[int, int]]:
    """Ranges of [start, end) with any page behind them (present or swapped)."""
    from softdirty import scanner

    result = scanner.scan_fd(proc.pagemap_fileno(), start, end, match_mask=0, match_value=0,
                             return_mask=int(PM.PRESENT | PM.SWAP))
    if not result.complete:
        raise proc.mm_gone_error()
    r = result.ranges
    return [(r[i], r[i + 1]) for i in range(0, len(r), 3) if r[i + 2]]


def _compare_window(img: Image, pid: int, run: dict[str, Any] | None, ws: int, we: int,
                    mismatches: list[tuple[int, int]], unreadable: list[tuple[int, int]]) -> int:
    """Compare [ws, we) of the process with the image (``run`` None: zeros); pages compared."""
    expected = bytes(we - ws) if run is None else img.read_run(run, ws, we)
    actual = bytearray(we - ws)
    bad = vmio.read_into(pid, [(ws, we)], actual)
    for bs, be in bad:
        _ranges_add(unreadable, bs, be)
    if expected != actual:
        for p in range(0, we - ws, PAGE_SIZE):
            addr = ws + p
            if any(bs <= addr < be for bs, be in bad):
                continue
            if expected[p : p + PAGE_SIZE] != actual[p : p + PAGE_SIZE]:
                _ranges_add(mismatches, addr, addr + PAGE_SIZE)
    return (we - ws) // PAGE_SIZE


def _compare(img: Image, proc: LiveProcess, now: Sequence[Vma]) -> VerifyReport:
    pid = proc.pid
    runs = img.index["runs"]
    segments = resolve(runs)
    starts = [s for s, _, _ in segments]
    skipped = [(s["vaddr"], s["vaddr"] + s["nr_pages"] * PAGE_SIZE) for s in img.index["skipped"]]
    image_vmas = [v for v in img.vmas if _skip_reason(v) is None]
    layout = []
    now_keys = {(v.start, v.end, v.perms) for v in now}
    img_keys = {(v.start, v.end, v.perms) for v in image_vmas}
    for v in image_vmas:
        if (v.start, v.end, v.perms) not in now_keys:
            layout.append(f"in the image, not in the process: {v.start:#x}-{v.end:#x} {v.perms} {v.name}")
    for v in now:
        if (v.start, v.end, v.perms) not in img_keys:
            layout.append(f"in the process, not in the image: {v.start:#x}-{v.end:#x} {v.perms} {v.name}")
    mismatches: list[tuple[int, int]] = []
    missing: list[tuple[int, int]] = []
    unreadable: list[tuple[int, int]] = []
    compared = 0
    for v in image_vmas:
        # Pieces of v: (start, end, run index or -1 for "no run").
        pieces: list[tuple[int, int, int]] = []
        pos = v.start
        i = max(bisect.bisect_right(starts, v.start) - 1, 0)
        while i < len(segments) and segments[i][0] < v.end:
            s, e, idx = segments[i]
            s, e = max(s, v.start), min(e, v.end)
            i += 1
            if e <= s:
                continue
            if s > pos:
                pieces.append((pos, s, -1))
            pieces.append((s, e, idx))
            pos = e
        if pos < v.end:
            pieces.append((pos, v.end, -1))
        for s, e, idx in pieces:
            zero = idx < 0 or bool(runs[idx].get("zero"))
            for cs, ce in _cut_out(s, e, skipped):
                if idx < 0 and not _private_anon(v):
                    _ranges_add(missing, cs, ce)
                    continue
                windows = [(cs, ce)]
                if zero and _private_anon(v):
                    # Expected zero: a page that does not exist is zero; read only those that do
                    # (reading the others would map the zero page into the target).
                    compared += (ce - cs) // PAGE_SIZE
                    windows = _with_page(proc, cs, ce)
                    compared -= sum(we - ws for ws, we in windows) // PAGE_SIZE
                for a, b in windows:
                    for ws in range(a, b, CHUNK):
                        compared += _compare_window(img, pid, runs[idx] if idx >= 0 else None, ws, min(ws + CHUNK, b),
                                                    mismatches, unreadable)
    skipped_pages = sum(s["nr_pages"] for s in img.index["skipped"])
    ok = not (mismatches or missing or unreadable or layout)
    return VerifyReport(ok, img.name, pid, compared, mismatches, missing, unreadable, layout, skipped_pages, 0.0)


def pages_of(ranges: Sequence[tuple[int, int]]) -> int:
    return sum(e - s for s, e in ranges) // PAGE_SIZE


__all__ = ["COMPLETE", "DumpReport", "Image", "ImageError", "ImageExists", "StopRule", "VerifyReport", "dump",
           "load_image", "stop_and_copy", "verify"]
