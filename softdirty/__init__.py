"""softdirty: which memory pages has a live Linux process written since a checkpoint?

>>> import softdirty
>>> with softdirty.track(pid) as tracker:      # doctest: +SKIP
...     tracker.reset()
...     ...                                     # the process runs
...     dirty = tracker.harvest()
...     print(dirty.page_count, dirty.ranges[:3])
"""

from __future__ import annotations

from softdirty.answer import Answer
from softdirty.dirtyset import Cause, DirtySet, Range, VmaSummary
from softdirty.errors import (
    AccessDenied,
    AddressSpaceReplaced,
    AlreadyTracked,
    NoSuchProcess,
    ProcessGone,
    SoftDirtyError,
    Unsupported,
)
from softdirty.maps import Vma
from softdirty.pagemap import Entry
from softdirty.probe import Capabilities, probe
from softdirty.process import LiveProcess, ProcessInterface
from softdirty.spawn import Spawned, spawn
from softdirty.tracker import Tracker, track

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "AddressSpaceReplaced",
    "AlreadyTracked",
    "Answer",
    "Capabilities",
    "Cause",
    "DirtySet",
    "Entry",
    "LiveProcess",
    "NoSuchProcess",
    "ProcessGone",
    "ProcessInterface",
    "Range",
    "SoftDirtyError",
    "Spawned",
    "Tracker",
    "Unsupported",
    "Vma",
    "VmaSummary",
    "probe",
    "spawn",
    "track",
]
