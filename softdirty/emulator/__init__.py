"""An x86-64 page-table emulator with the kernel's bit-exact pagemap semantics.

>>> from softdirty.emulator import EmulatedProcess, get_profile
>>> p = EmulatedProcess(get_profile("6.18", soft_dirty=False))
>>> a = p.mmap(0, 4096, 3, 0x22)            # PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS
>>> p.write(a, b"x")
>>> hex(p.pagemap_entries(a, a + 4096)[0] >> 55)   # PRESENT | MMAP_EXCLUSIVE
'0x102'

``EmulatedProcess`` implements :class:`softdirty.process.ProcessInterface`,
so ``softdirty.track(emulated_process)`` works with every back end.
Scenario files (TOML) are replayed by :func:`replay`; ``softdirty emulate
SCENARIO.toml`` is :func:`emulate_main`.  The shipped scenarios (the kernel
spec's section 7) live in :func:`scenario_dir`.
"""

from __future__ import annotations

from softdirty.emulator.memory import EmuFile, Machine
from softdirty.emulator.process import BusError, EmulatedProcess, SegmentationFault, UffdBlocked
from softdirty.emulator.profile import PRESETS, KernelProfile, get_profile
from softdirty.emulator.scenario import (
    ScenarioError,
    StepResult,
    emulate_main,
    load_scenario,
    replay,
    scenario_dir,
)
from softdirty.emulator.uffd import EmulatedUffd

__all__ = [
    "PRESETS",
    "BusError",
    "EmuFile",
    "EmulatedProcess",
    "EmulatedUffd",
    "KernelProfile",
    "Machine",
    "ScenarioError",
    "SegmentationFault",
    "StepResult",
    "UffdBlocked",
    "emulate_main",
    "get_profile",
    "load_scenario",
    "replay",
    "scenario_dir",
]
