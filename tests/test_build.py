"""The build: pip wheel compiles the C scanner into the wheel, or warns and ships the fallback.

Each test builds from a copy of the source tree in tmp_path, so the checkout
gets no build/ or egg-info litter and parallel runs do not collide.  pip
builds with isolation, fetching setuptools and wheel from the configured index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from softdirty import _build, scanner

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _source_copy(dest: Path) -> Path:
    tree = dest / "src"
    tree.mkdir()
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, tree / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    shutil.copytree(ROOT / "softdirty", tree / "softdirty", ignore=ignore)
    shutil.copytree(ROOT / "csrc", tree / "csrc", ignore=ignore)
    return tree


def _pip_wheel(tree: Path, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(tree)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=600, check=False,
    )


def _only_wheel(out: Path) -> Path:
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_ships_the_library(tmp_path: Path) -> None:
    tree = _source_copy(tmp_path)
    proc = _pip_wheel(tree, tmp_path / "dist")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheel = _only_wheel(tmp_path / "dist")
    assert wheel.name.endswith("-py3-none-linux_x86_64.whl") or "-py3-none-linux_" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as zf:
        assert "softdirty/_sdscan.so" in zf.namelist()
        zf.extract("softdirty/_sdscan.so", tmp_path / "unpacked")
    lib = tmp_path / "unpacked" / "softdirty" / "_sdscan.so"
    impl, info = scanner._choose({"SOFTDIRTY_SCANNER": "c", "SOFTDIRTY_SCANNER_LIB": str(lib)})
    assert info.name == "c" and isinstance(impl, scanner.CScanner)
    build_id = _build.source_hash(ROOT)
    assert build_id is not None and build_id in info.reason  # built from these very sources


def test_no_compiler_still_builds_a_wheel(tmp_path: Path) -> None:
    tree = _source_copy(tmp_path)
    proc = _pip_wheel(tree, tmp_path / "dist", CC="/bin/false")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "could not build the C scanner" in proc.stdout + proc.stderr
    with zipfile.ZipFile(_only_wheel(tmp_path / "dist")) as zf:
        names = zf.namelist()
    assert "softdirty/_sdscan.so" not in names
    assert "softdirty/_scanner_py.py" in names and "softdirty/scanner.py" in names


def test_in_place_build_helper(tmp_path: Path) -> None:
    """python -m softdirty._build in a (copied) checkout: header + library next to the sources."""
    tree = _source_copy(tmp_path)
    (tree / "csrc" / "pagemap_abi.h").unlink()  # regenerated from softdirty/pagemap.py
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-m", "softdirty._build"], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tree / "csrc" / "pagemap_abi.h").read_text() == (ROOT / "csrc" / "pagemap_abi.h").read_text()
    lib = tree / "softdirty" / _build.LIB_NAME
    check = subprocess.run([sys.executable, "-m", "softdirty._build", "--check"], cwd=tree, env=env,
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    _, info = scanner._choose({"SOFTDIRTY_SCANNER": "c", "SOFTDIRTY_SCANNER_LIB": str(lib)})
    assert info.name == "c"
    # Editing a source makes the library stale: --check says so.
    with (tree / "csrc" / "scanner.c").open("a") as f:
        f.write("/* edited */\n")
    stale = subprocess.run([sys.executable, "-m", "softdirty._build", "--check"], cwd=tree, env=env,
                           capture_output=True, text=True, check=False)
    assert stale.returncode == 1 and "missing or stale" in stale.stderr


def test_compile_failure_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    ok, message = _build.compile_library(tmp_path / "lib.so", ROOT)
    assert not ok and "cannot run the C compiler" in message and not (tmp_path / "lib.so").exists()
    monkeypatch.setenv("CC", "/bin/false")
    ok, message = _build.compile_library(tmp_path / "lib.so", ROOT)
    assert not ok and "failed with status 1" in message
    assert list(tmp_path.iterdir()) == []  # no temporary left behind
