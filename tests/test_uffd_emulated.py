"""The uffd back end over the emulator: it talks only to a ProcessInterface, so it runs unchanged."""

from __future__ import annotations

import pytest

import softdirty
from softdirty import _libc
from softdirty.dirtyset import Cause, DirtySet

emulator = pytest.importorskip("softdirty.emulator.process")
P = 4096


def pages(ds: DirtySet, start: int, n: int) -> dict[int, Cause]:
    out = {}
    for r in ds:
        for a in range(max(r.start, start), min(r.end, start + n * P), P):
            out[(a - start) // P] = r.flags
    return out


@pytest.mark.parametrize("profile", ["6.18", "6.12"])
def test_uffd_backend_on_the_emulator(profile: str) -> None:
    p = emulator.EmulatedProcess(profile, layout="exec")
    a = p.mmap(0, 32 * P, 3, _libc.MAP_PRIVATE | _libc.MAP_ANONYMOUS)
    p.write(a, b"x" * (32 * P))
    with softdirty.track(p, backend="uffd", nohugepage=True) as t:
        t.reset()
        for i in (1, 5, 6):
            p.write(a + i * P, b"y")
        ds = t.harvest()
        assert pages(ds, a, 32) == {1: Cause.WRITTEN, 5: Cause.WRITTEN, 6: Cause.WRITTEN}
        vvar = [v for v in ds.vma_list if v.path == "[vvar]"]
        assert vvar and ds.flags_at(vvar[0].start) == Cause.UNTRACKED  # VM_PFNMAP: never clean
        assert pages(t.harvest(), a, 32) == {}
        b = p.mremap(a, 32 * P, 32 * P, _libc.MREMAP_MAYMOVE | _libc.MREMAP_FIXED, a + (1 << 30))
        assert pages(t.harvest(), b, 32) == {i: Cause.MOVED for i in range(32)}
        p.madvise(b, 4 * P, _libc.MADV_DONTNEED)
        zapped = pages(t.harvest(), b, 32)
        # With the 2026 PAGEMAP_SCAN fixes a zapped PTE reads written: 6.18, and Debian's 6.12.117
        # (a stable backport; seen in the VM: WPALLOWED|WRITTEN after MADV_DONTNEED of armed pages).
        assert zapped == {i: Cause.PROTECTION_LOST for i in range(4)}
        p.exit()
        with pytest.raises(softdirty.ProcessGone):
            t.harvest()


def test_kernel_without_wp_async_is_unsupported_with_the_reason() -> None:
    p = emulator.EmulatedProcess("6.1", layout="exec")
    with pytest.raises(softdirty.Unsupported) as info:
        softdirty.track(p, backend="uffd")
    assert "6.7" in info.value.reason or "unavailable" in info.value.reason


def test_real_kernel_without_wp_async_is_unsupported() -> None:
    import os

    caps = softdirty.probe()
    if caps.uffd_wp_async.ok:
        pytest.skip("this kernel has uffd-wp async (runs in the 6.1 VM: tools/vmtest/run-tests --kernel 6.1)")
    with pytest.raises(softdirty.Unsupported) as info:
        softdirty.track(os.getpid(), backend="uffd")
    assert info.value.reason == caps.uffd_wp_async.reason
