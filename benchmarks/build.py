"""Build the benchmark's C programs with gcc: the target and the C reference harvester.

Neither is part of the library.  Outputs go to a build directory, named by a
hash of their sources so that a stale build is never used; the VM guest sees
the host's files, so it runs what the host built.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_SRC = ROOT / "benchmarks" / "target.c"
REF_SRC = ROOT / "csrc" / "bench_ref.c"
REF_HEADERS = (ROOT / "csrc" / "pagemap_abi.h",)
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11")


@dataclass(frozen=True)
class Built:
    target: Path  # the bench_target executable
    ref: Path  # libbench_ref.so
    compiler: str  # `cc --version` first line


class BuildError(RuntimeError):
    pass


def _hash(paths: tuple[Path, ...], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _compile(cmd: list[str]) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BuildError(f"cannot run {cmd[0]!r}: {exc.strerror}") from None
    if proc.returncode != 0:
        raise BuildError(f"{shlex.join(cmd)} failed:\n{(proc.stderr or proc.stdout).strip()}")


def compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


def build(build_dir: Path, cc: str | None = None) -> Built:
    """Compile (or reuse) the target and the reference library under ``build_dir``."""
    cc = cc or os.environ.get("CC") or shutil.which("gcc") or "cc"
    version = compiler_version(cc)
    key = _hash((TARGET_SRC, REF_SRC, *REF_HEADERS), cc + "\0" + version + "\0" + " ".join(CFLAGS))
    out = build_dir / key
    target, ref = out / "bench_target", out / "libbench_ref.so"
    if not (target.exists() and ref.exists()):
        tmp = build_dir / f".{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _compile([cc, *CFLAGS, str(TARGET_SRC), "-o", str(tmp / "bench_target")])
        _compile([cc, *CFLAGS, "-fPIC", "-shared", "-fvisibility=hidden", "-I", str(ROOT / "csrc"), str(REF_SRC),
                  "-o", str(tmp / "libbench_ref.so")])
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return Built(target, ref, version)
