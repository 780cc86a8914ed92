"""Shared test set-up: hypothesis profiles and kernel-feature markers.

Markers (declared in pyproject.toml) skip a test where softdirty.probe() says
the feature does not work, with the probe's reason:

* ``softdirty_kernel``: soft-dirty (pagemap bit 55 + clear_refs "4").  The
  host has none; these run in the VM: tools/vmtest/run-tests.  With
  SOFTDIRTY_REQUIRE_SOFTDIRTY=1 (set by the VM runner) a missing soft-dirty
  FAILS the test, so a VM that silently lacks it cannot pass.
* ``pagemap_scan``: the PAGEMAP_SCAN ioctl (Linux 6.7+).
* ``uffd_wp_async``: userfaultfd write-protect in async mode (Linux 6.7+).

Hypothesis profiles: ``ci`` (default: no deadline, shared 2-core machines
have noisy timing) and ``vm`` (few examples, for the ~18x slower QEMU TCG
guest), chosen with SOFTDIRTY_HYPOTHESIS_PROFILE.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from softdirty.probe import Capabilities

settings.register_profile("ci", deadline=None)
settings.register_profile(
    "vm",
    deadline=None,
    max_examples=8,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = os.environ.get("SOFTDIRTY_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)

VM_HINT = "runs in the VM: tools/vmtest/run-tests"
# marker -> (Capabilities attribute, may SOFTDIRTY_REQUIRE_SOFTDIRTY turn the skip into a failure?)
FEATURE_MARKERS = {
    "softdirty_kernel": ("soft_dirty", True),
    "pagemap_scan": ("pagemap_scan", False),
    "uffd_wp_async": ("uffd_wp_async", False),
}


@functools.lru_cache(maxsize=1)
def capabilities() -> Capabilities:
    """softdirty.probe(), once per session (imported late so that collection
    of unrelated tests does not depend on it)."""
    import softdirty

    return softdirty.probe()


def require_softdirty() -> bool:
    return os.environ.get("SOFTDIRTY_REQUIRE_SOFTDIRTY", "") == "1"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, (feature, required) in FEATURE_MARKERS.items():
        if item.get_closest_marker(marker) is None:
            continue
        answer = getattr(capabilities(), feature)
        if answer.ok:
            continue
        if feature == "soft_dirty":
            why = f"needs soft-dirty: {answer.reason} ({VM_HINT})"
        else:
            why = f"needs {feature}: {answer.reason}"
        if required and require_softdirty():
            pytest.fail(f"SOFTDIRTY_REQUIRE_SOFTDIRTY=1 but {why}", pytrace=False)
        pytest.skip(why)


def pytest_report_header(config: pytest.Config) -> list[str]:
    try:
        import softdirty

        caps = capabilities()
    except Exception as exc:  # a broken import shows up in the tests; keep the header
        return [f"softdirty: probe failed: {exc.__class__.__name__}: {exc}"]
    flags = ", ".join(
        f"{name}={'yes' if getattr(caps, name).ok else 'no'}"
        for name in ("soft_dirty", "pagemap_scan", "scan_soft_dirty", "uffd_wp_async")
    )
    return [
        f"softdirty: Linux {caps.kernel}: {flags}; scanner={caps.scanner.name}",
        f"softdirty: imported from {os.path.dirname(softdirty.__file__)}; "
        f"hypothesis profile {PROFILE}",
    ]


# --stress: the reliability suites (tests/test_reliability*.py, ...) scale their
# round counts by STRESS_FACTOR; CI runs without it (sized for 2 cores).
STRESS_FACTOR = 10


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stress", action="store_true", default=False,
                     help=f"run the reliability suites with {STRESS_FACTOR}x the rounds (long; for people)")


@pytest.fixture(scope="session")
def stress(request: pytest.FixtureRequest) -> int:
    """The round multiplier: 1 in CI, STRESS_FACTOR with --stress."""
    return STRESS_FACTOR if request.config.getoption("--stress") else 1
