"""softdirty.probe() tells the truth on a real soft-dirty kernel (the VM).

Each answer is compared with an independent check done here with raw
syscalls, and the Debian kernels' known features (6.1: no PAGEMAP_SCAN;
6.12: PAGEMAP_SCAN with PAGE_IS_SOFT_DIRTY, uffd-wp async).
"""

from __future__ import annotations

import os

import pytest
import rawkernel as rk

import softdirty


@pytest.mark.softdirty_kernel
def test_soft_dirty_is_reported_working() -> None:
    caps = softdirty.probe()
    assert caps.soft_dirty.ok, caps.soft_dirty.reason
    assert rk.raw_soft_dirty_works()
    assert caps.best_backend == "softdirty"


@pytest.mark.softdirty_kernel
def test_pagemap_scan_answers_match_the_kernel() -> None:
    caps = softdirty.probe()
    has_scan = rk.raw_pagemap_scan()
    assert caps.pagemap_scan.ok == has_scan, caps.pagemap_scan.reason
    assert has_scan == (rk.kernel_version() >= (6, 7)), "PAGEMAP_SCAN arrived in Linux 6.7"
    assert caps.scan_soft_dirty.ok == rk.raw_pagemap_scan(rk.PAGE_IS_SOFT_DIRTY), caps.scan_soft_dirty.reason
    if not has_scan:
        assert "PAGEMAP_SCAN" in caps.pagemap_scan.reason
        assert not caps.scan_soft_dirty.ok


@pytest.mark.softdirty_kernel
def test_uffd_wp_async_answer_matches_the_kernel() -> None:
    caps = softdirty.probe()
    assert caps.uffd_wp_async.ok == rk.raw_uffd_wp_async(), caps.uffd_wp_async.reason
    assert caps.uffd_wp_async.ok == (rk.kernel_version() >= (6, 7)), "UFFD_FEATURE_WP_ASYNC arrived in Linux 6.7"


@pytest.mark.softdirty_kernel
def test_debian_kernels_features() -> None:
    """The two kernels the VM runner boots, by release (skipped on other kernels)."""
    release = os.uname().release
    caps = softdirty.probe()
    if release.startswith("6.1.") and release.endswith("-amd64"):
        assert (caps.pagemap_scan.ok, caps.scan_soft_dirty.ok, caps.uffd_wp_async.ok) == (False, False, False)
    elif release.startswith("6.12.") and release.endswith("-amd64"):
        assert (caps.pagemap_scan.ok, caps.scan_soft_dirty.ok, caps.uffd_wp_async.ok) == (True, True, True)
    else:
        pytest.skip(f"not one of the VM's Debian kernels (6.1, 6.12): {release}")


@pytest.mark.softdirty_kernel  # not that it needs soft-dirty: the marker puts it in the VM selection
def test_vm_loads_the_hosts_scanner() -> None:
    """The guest imports the host's install: the C scanner .so must load there too."""
    expected = os.environ.get("SOFTDIRTY_EXPECT_SCANNER")
    if not expected:
        pytest.skip("the VM runner (tools/vmtest/run-tests) sets SOFTDIRTY_EXPECT_SCANNER to the host's scanner")
    assert softdirty.probe().scanner.name == expected, softdirty.probe().scanner.reason
