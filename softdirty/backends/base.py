"""What every back end provides to the tracker."""

from __future__ import annotations

import abc
from array import array

from softdirty.maps import Vma
from softdirty.process import ProcessInterface


class Harvest:
    """What one back end harvest produced, before the tracker wraps it."""

    __slots__ = ("triples", "vmas", "notes")

    def __init__(self, triples: array[int], vmas: list[Vma], notes: list[str] | None = None) -> None:
        self.triples = triples  # flat (start, end, Cause) triples
        self.vmas = vmas
        self.notes = notes or []


class Backend(abc.ABC):
    """A way of tracking writes to one process, over a :class:`ProcessInterface`."""

    name: str = ""

    def __init__(self, proc: ProcessInterface) -> None:
        self.proc = proc

    @abc.abstractmethod
    def reset(self) -> None:
        """Start a new epoch: from now on only new writes are reported."""

    @abc.abstractmethod
    def harvest(self) -> Harvest:
        """What was written since the last reset/harvest.

        A back end that re-arms atomically (uffd) starts the next epoch here;
        one that cannot (soft-dirty) leaves that to :meth:`reset`.
        """

    @property
    def rearms_on_harvest(self) -> bool:
        return False

    def close(self) -> None:  # noqa: B027 - a no-op is right for back ends that leave nothing behind
        """Leave the target as it was before tracking (where the back end can)."""
