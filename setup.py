"""Build glue for softdirty: everything else lives in pyproject.toml.

``pip install .`` / ``pip wheel .`` compile ``csrc/scanner.c`` into
``softdirty/_sdscan.so``, a plain shared library loaded with ctypes (not a
Python extension module).  ``csrc/pagemap_abi.h`` is regenerated first from
``softdirty.pagemap.c_header()``.  Without a working C compiler the install
still succeeds, with a warning, and softdirty uses its pure-Python scanner.

In a checkout: ``python setup.py build_ext --inplace`` or
``python -m softdirty._build`` builds the library next to the sources.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent


def _load_build_helper():  # type: ignore[no-untyped-def]
    # By path: importing the package would need its dependencies at build time.
    spec = importlib.util.spec_from_file_location("_softdirty_build", HERE / "softdirty" / "_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_build = _load_build_helper()


def _warn(message: str) -> None:
    bar = "=" * 78
    print(f"\n{bar}\nWARNING (softdirty): {message}\n{bar}\n", file=sys.stderr)


class BinaryDistribution(Distribution):
    """Always run build_ext and tag the wheel for the platform: it ships a .so."""

    def has_ext_modules(self) -> bool:
        return True


class BuildScanner(build_ext):
    """Compile the C scanner; on failure warn and ship without it."""

    def run(self) -> None:
        inplace = bool(self.inplace or getattr(self, "editable_mode", False))
        target = (HERE if inplace else Path(self.build_lib)) / "softdirty" / _build.LIB_NAME
        self._outputs = []
        try:
            if _build.write_header(HERE):
                print("softdirty: regenerated csrc/pagemap_abi.h from softdirty/pagemap.py")
        except OSError as exc:  # a read-only tree still builds with the checked-in header
            _warn(f"could not regenerate csrc/pagemap_abi.h ({exc}); using the checked-in one")
        ok, message = _build.compile_library(target, HERE)
        if ok:
            print(f"softdirty: {message}")
            self._outputs = [str(target)]
            return
        if not inplace and target.exists():
            os.unlink(target)  # build_py may have copied a stale in-tree library: never ship it
        _warn(
            "could not build the C scanner; softdirty will use its pure-Python scanner "
            f"(same results, slower).\n{message}"
        )

    def get_outputs(self) -> list[str]:
        return list(getattr(self, "_outputs", []))

    def get_output_mapping(self) -> dict[str, str]:
        return {}


cmdclass: dict[str, type] = {"build_ext": BuildScanner}

try:  # setuptools >= 70.1 carries bdist_wheel; before that it is the wheel package's
    from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
except ImportError:
    try:
        from wheel.bdist_wheel import bdist_wheel as _bdist_wheel
    except ImportError:
        _bdist_wheel = None

if _bdist_wheel is not None:

    class BdistWheel(_bdist_wheel):
        """py3-none-<platform>: the .so does not link against Python, any CPython 3 can load it."""

        def get_tag(self) -> tuple[str, str, str]:
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = BdistWheel

setup(distclass=BinaryDistribution, cmdclass=cmdclass)
