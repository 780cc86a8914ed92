"""Build the C scanner ``csrc/scanner.c`` into ``softdirty/_sdscan.so``.

The library is a plain shared object loaded with ctypes, not a Python
extension.  ``setup.py`` uses this module (loaded by file path: it needs only
the standard library) for ``pip install .`` / ``pip wheel .``; in a checkout
(``pip install -e .`` or plain ``PYTHONPATH=.``) build it in place with::

    python -m softdirty._build           # writes csrc/pagemap_abi.h and softdirty/_sdscan.so
    python -m softdirty._build --check   # exit 1 if the in-tree library is missing or stale

Environment: ``CC`` (default ``cc``, may carry arguments), extra ``CFLAGS``
and ``LDFLAGS``.  Each build embeds :func:`source_hash` of its sources, so the
loader can tell a stale in-tree library from a fresh one.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

LIB_NAME = "_sdscan.so"
ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("scanner.c",)
HEADERS = ("scanner.h", "pagemap_abi.h")
CFLAGS = ("-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-fvisibility=hidden")


def header_text(root: Path = ROOT) -> str:
    """``c_header()`` of ``softdirty/pagemap.py``, imported by path (no package import)."""
    path = root / "softdirty" / "pagemap.py"
    name = "_softdirty_pagemap_for_build"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        text = module.c_header()
    finally:
        del sys.modules[name]
    if not isinstance(text, str):
        raise TypeError("pagemap.c_header() did not return text")
    return text


def write_header(root: Path = ROOT) -> bool:
    """Regenerate ``csrc/pagemap_abi.h``; True if its text changed."""
    path = root / "csrc" / "pagemap_abi.h"
    text = header_text(root)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def source_hash(root: Path = ROOT) -> str | None:
    """Hash of the C sources and headers (None when there is no ``csrc/``)."""
    csrc = root / "csrc"
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        try:
            digest.update(name.encode() + b"\0" + (csrc / name).read_bytes() + b"\0")
        except FileNotFoundError:
            return None
    return digest.hexdigest()[:16]


def compile_library(out: Path, root: Path = ROOT) -> tuple[bool, str]:
    """Compile to ``out`` (atomically replaced).  Returns (ok, message); never raises for a missing compiler."""
    csrc = root / "csrc"
    build_id = source_hash(root)
    if build_id is None:
        return False, f"no C sources under {csrc}"
    cc = shlex.split(os.environ.get("CC") or "cc")
    cmd = [
        *cc,
        *CFLAGS,
        *shlex.split(os.environ.get("CFLAGS", "")),
        f'-DSD_BUILD_ID="{build_id}"',
        "-I",
        str(csrc),
        *(str(csrc / s) for s in SOURCES),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".sdscan-", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [*cmd, "-o", tmp, *shlex.split(os.environ.get("LDFLAGS", ""))],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        os.unlink(tmp)
        return False, f"cannot run the C compiler {cc[0]!r}: {exc.strerror}"
    if proc.returncode != 0:
        os.unlink(tmp)
        detail = (proc.stderr or proc.stdout).strip()
        return False, f"{shlex.join(cmd)} failed with status {proc.returncode}" + (f":\n{detail}" if detail else "")
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
    return True, f"built {out} (build id {build_id})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m softdirty._build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "softdirty" / LIB_NAME, help="library to write")
    parser.add_argument("--check", action="store_true", help="only check that the in-tree library is current")
    args = parser.parse_args(argv)
    if not (ROOT / "csrc").is_dir():
        print(f"no csrc/ next to {ROOT / 'softdirty'}: this is not a source checkout", file=sys.stderr)
        return 2
    if args.check:
        changed = header_text() != (ROOT / "csrc" / "pagemap_abi.h").read_text()
        want = source_hash()
        have = args.out.read_bytes() if args.out.exists() else b""
        if changed or want is None or want.encode() not in have:
            print(f"{args.out} is missing or stale: run python -m softdirty._build", file=sys.stderr)
            return 1
        print(f"{args.out} is current (build id {want})")
        return 0
    if write_header():
        print("regenerated csrc/pagemap_abi.h from softdirty/pagemap.py")
    ok, message = compile_library(args.out)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
