"""Dirty rates: pages/s and MB/s over an interval, overall and per VMA.

What is counted is *distinct pages first written in the interval*: a page
written a thousand times counts once, and a page already dirty at the start
of an epoch is not counted again (both back ends track pages, not stores).
The rate is that count over the epoch's length, measured from the end of
the checkpoint that opened it to the start of the harvest that closes it;
writes made during a harvest itself land in one epoch or the next, so the
relative error is at most harvest time / interval (``Sample.harvest_seconds``
reports it).  MB are 10^6 bytes.

A soft-dirty tracker without ``exact=True`` clears after reading with the
target running: writes in between are lost to the rate.  Use ``exact=True``
(brief ptrace stops) or the uffd back end for rates that miss nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from softdirty.dirtyset import DirtySet
from softdirty.maps import Vma
from softdirty.pagemap import PAGE_SIZE

if TYPE_CHECKING:
    from softdirty.tracker import Tracker


@dataclass(frozen=True, slots=True)
class VmaRate:
    vma: Vma
    pages: int
    pages_per_s: float
    bytes_per_s: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes_per_s / 1e6


@dataclass(frozen=True, slots=True)
class Sample:
    epoch: int
    start: float  # time.monotonic() when the epoch began
    seconds: float  # the epoch's length
    harvest_seconds: float  # how long the closing harvest took
    pages: int
    bytes: int
    pages_per_s: float
    bytes_per_s: float
    vmas: tuple[VmaRate, ...]  # VMAs with pages written, most first
    dirty: DirtySet

    @property
    def mb_per_s(self) -> float:
        return self.bytes_per_s / 1e6

    def top(self, n: int) -> tuple[VmaRate, ...]:
        return self.vmas[:n]

    def to_dict(self, top: int | None = None) -> dict[str, object]:
        vmas = self.vmas if top is None else self.vmas[:top]
        return {
            "epoch": self.epoch,
            "seconds": round(self.seconds, 6),
            "harvest_seconds": round(self.harvest_seconds, 6),
            "pages": self.pages,
            "bytes": self.bytes,
            "pages_per_s": round(self.pages_per_s, 3),
            "mb_per_s": round(self.mb_per_s, 6),
            "backend": self.dirty.backend,
            "pid": self.dirty.pid,
            "vmas": [
                {"start": r.vma.start, "end": r.vma.end, "perms": r.vma.perms, "path": r.vma.name, "pages": r.pages,
                 "pages_per_s": round(r.pages_per_s, 3), "mb_per_s": round(r.mb_per_s, 6)}
                for r in vmas
            ],
        }


def rates(dirty: DirtySet, seconds: float, start: float = 0.0, harvest_seconds: float = 0.0) -> Sample:
    """A :class:`Sample` of ``dirty`` written over ``seconds``."""
    if not seconds > 0:
        raise ValueError(f"an interval is positive, not {seconds!r}")
    per = sorted((s for s in dirty.vmas if s.pages), key=lambda s: (-s.pages, s.vma.start))
    vmas = tuple(VmaRate(s.vma, s.pages, s.pages / seconds, s.pages * PAGE_SIZE / seconds) for s in per)
    pages = dirty.page_count
    return Sample(dirty.epoch, start, seconds, harvest_seconds, pages, pages * PAGE_SIZE, pages / seconds,
                  pages * PAGE_SIZE / seconds, vmas, dirty)


class Sampler:
    """Back-to-back epochs of one tracker, each turned into a :class:`Sample`.

    The first :meth:`sample` checkpoints (``tracker.reset()``); every sample
    then harvests with ``reset=True``, so epochs chain.
    """

    def __init__(self, tracker: Tracker, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.tracker = tracker
        self._clock = clock
        self._sleep = sleep
        self._since: float | None = None

    def start(self) -> None:
        self.tracker.reset()
        self._since = self._clock()

    def sample(self, interval: float | None = None) -> Sample:
        """Wait until ``interval`` seconds after the epoch began (if given), harvest, start the next."""
        if interval is not None and not interval > 0:
            raise ValueError(f"interval must be positive seconds, not {interval!r}")
        if self._since is None:
            self.start()
        assert self._since is not None
        if interval is not None:
            left = self._since + interval - self._clock()
            if left > 0:
                self._sleep(left)
        began = self._clock()
        dirty = self.tracker.harvest(reset=True)
        done = self._clock()
        seconds = max(began - self._since, 1e-9)
        sample = rates(dirty, seconds, self._since, done - began)
        self._since = done
        return sample

    def samples(self, interval: float, count: int | None = None) -> Iterator[Sample]:
        """``count`` samples (forever if None), one every ``interval`` seconds."""
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        n = 0
        while count is None or n < count:
            yield self.sample(interval)
            n += 1
