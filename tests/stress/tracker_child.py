"""A tracker to be SIGKILLed (test_reliability_trackers.py): argv = mode pid.  Prints "go" then loops.

Modes: uffd (harvest loop), inject (track/close loop: injections into the target),
freeze (ptrace-stop every thread and let go, in a loop), exact (soft-dirty exact harvests).
"""

from __future__ import annotations

import sys

import softdirty
from softdirty.freeze import Freeze

mode, pid = sys.argv[1], int(sys.argv[2])
print("go", flush=True)
if mode == "uffd":
    with softdirty.track(pid, backend="uffd") as t:
        while True:
            t.harvest()
elif mode == "inject":
    while True:
        softdirty.track(pid, backend="uffd").close()
elif mode == "freeze":
    while True:
        with Freeze(pid):
            pass
elif mode == "exact":
    with softdirty.track(pid, backend="softdirty", exact=True) as t:
        while True:
            t.harvest()
