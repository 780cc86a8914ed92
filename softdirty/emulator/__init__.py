"""An x86-64 page-table emulator with the kernel's bit-exact pagemap semantics.

>>> from softdirty.emulator import EmulatedProcess, get_profile
>>> p = EmulatedProcess(get_profile("6.18", soft_dirty=False))
>>> a = p.mmap(0, 4096, 3, 0x22)            # PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS
>>> p.write(a, b"x")
>>> hex(p.pagemap_entries(a, a + 4096)[0] >> 55)
'0x106'

``EmulatedProcess`` implements :class:`softdirty.process.ProcessInterface`,
so ``softdirty.track(emulated_process)`` works with every back end.
TOML scenarios (``softdirty emulate``) are not built yet: issue 4 stays open.
"""

from __future__ import annotations

from softdirty.emulator.memory import EmuFile, Machine
from softdirty.emulator.process import BusError, EmulatedProcess, SegmentationFault, UffdBlocked
from softdirty.emulator.profile import PRESETS, KernelProfile, get_profile
from softdirty.emulator.uffd import EmulatedUffd

__all__ = [
    "PRESETS",
    "BusError",
    "EmuFile",
    "EmulatedProcess",
    "EmulatedUffd",
    "KernelProfile",
    "Machine",
    "SegmentationFault",
    "UffdBlocked",
    "get_profile",
]
