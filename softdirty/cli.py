"""The ``softdirty`` command line (also ``python -m softdirty``).

Exit codes: 0 success; 1 any other softdirty error; 2 bad usage;
3 no such process / process gone; 4 access denied; 5 unsupported here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import softdirty
from softdirty.dirtyset import DirtySet
from softdirty.errors import AccessDenied, NoSuchProcess, SoftDirtyError, Unsupported

EXIT_ERROR, EXIT_USAGE, EXIT_NO_PROCESS, EXIT_DENIED, EXIT_UNSUPPORTED = 1, 2, 3, 4, 5

EPILOG = """\
examples:
  softdirty probe                 what works on this host, and why
  softdirty probe --json
  softdirty demo                  watch a small workload on the best back end
  softdirty dirty 1234 --interval 1 --json
                                  one checkpoint, wait 1 s, print what PID 1234 wrote

exit codes: 0 ok, 1 error, 2 usage, 3 no such process, 4 access denied, 5 unsupported
"""


def _pid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a PID is a positive integer, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a PID is a positive integer, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text}")
    return value


def cmd_probe(args: argparse.Namespace) -> int:
    caps = softdirty.probe()
    if args.json:
        print(json.dumps(caps.to_dict(), indent=2))
        return 0
    print(f"kernel {caps.kernel} ({caps.arch})")
    for name in ("soft_dirty", "pagemap_scan", "scan_soft_dirty", "scan_guard", "uffd_wp_async", "pfn_visible"):
        answer = caps.answer(name)
        print(f"  {name:<16} {'yes' if answer.ok else 'no ':<4} {answer.reason}")
    print(f"  {'scanner':<16} {caps.scanner.name:<4} {caps.scanner.reason}")
    print(f"best back end: {caps.best_backend or 'none (emulator only)'}: {caps.best_reason}")
    return 0


def _table(dirty: DirtySet, seconds: float | None, top: int = 5) -> str:
    rate = ""
    if seconds:
        rate = f", {dirty.page_count / seconds:,.0f} pages/s, {dirty.bytes / seconds / 1e6:,.1f} MB/s"
    lines = [f"epoch {dirty.epoch}: {dirty.page_count:,} pages ({dirty.bytes / 1e6:,.1f} MB) in "
             f"{len(dirty):,} ranges{rate}"]
    summaries = sorted((s for s in dirty.vmas if s.pages), key=lambda s: -s.pages)[:top]
    for s in summaries:
        lines.append(f"  {s.vma.start:#014x}-{s.vma.end:#014x} {s.vma.perms} {s.pages:>9,} pages  {s.vma.name}")
    return "\n".join(lines)


def cmd_dirty(args: argparse.Namespace) -> int:
    with softdirty.track(args.pid, backend=args.backend) as tracker:
        tracker.reset()
        time.sleep(args.interval)
        dirty = tracker.harvest()
    if args.json:
        out = dirty.to_dict()
        out["interval"] = args.interval
        print(json.dumps(out))
    else:
        print(f"PID {args.pid}, back end {tracker.backend_name} ({tracker.why})")
        print(_table(dirty, args.interval))
    return 0


DEMO_WORKLOAD = r"""
import mmap, sys, time
size = int(sys.argv[1])
buf = mmap.mmap(-1, size)
pages = size // 4096
i = 0
print("ready", flush=True)
while True:
    # write a moving window of 1/8 of the buffer, then rest: a steady dirty rate
    for p in range(i, i + pages // 8):
        buf[(p % pages) * 4096] = p & 0xFF
    i += pages // 16
    time.sleep(0.05)
"""


def cmd_demo(args: argparse.Namespace) -> int:
    caps = softdirty.probe()
    print(f"kernel {caps.kernel}: best back end {caps.best_backend or 'none'} ({caps.best_reason})")
    child = subprocess.Popen([sys.executable, "-c", DEMO_WORKLOAD, str(args.size_mib << 20)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SoftDirtyError("the demo workload did not start")
        print(f"workload PID {child.pid}: writes a moving 1/8 of {args.size_mib} MiB every 50 ms")
        with softdirty.track(child.pid, backend=args.backend) as tracker:
            print(f"tracking with {tracker.backend_name}: {tracker.why}")
            tracker.reset()
            for _ in range(args.rounds):
                start = time.monotonic()
                time.sleep(args.interval)
                dirty = tracker.harvest()
                elapsed = time.monotonic() - start
                if not tracker.backend.rearms_on_harvest:
                    tracker.reset()
                print(_table(dirty, elapsed, top=3))
    finally:
        child.kill()
        child.wait()
    return 0


def cmd_emulate(args: argparse.Namespace) -> int:
    try:
        from softdirty.emulator import cli_emulate
    except ImportError as exc:
        raise Unsupported("softdirty emulate", f"the emulator is not installed ({exc})") from None
    result: int = cli_emulate(args.scenario, sys.stdout)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softdirty",
        description="Which memory pages has a live Linux process written since a checkpoint?",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"softdirty {softdirty.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("probe", help="what works on this host, and why")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_probe)

    backends = list(softdirty.tracker.BACKENDS)
    p = sub.add_parser("dirty", help="checkpoint PID, wait, print what it wrote")
    p.add_argument("pid", type=_pid)
    p.add_argument("--interval", type=_positive_float, default=1.0, help="seconds between checkpoint and harvest")
    p.add_argument("--backend", choices=backends, default="auto")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_dirty)

    p = sub.add_parser("demo", help="start a small workload and watch it on the best back end")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--interval", type=_positive_float, default=0.5)
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--backend", choices=backends, default="auto")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("emulate", help="replay an emulator scenario (TOML) and print the entries")
    p.add_argument("scenario")
    p.set_defaults(func=cmd_emulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if args.debug or isinstance(exc, SystemExit):
            raise
        code = _exit_code(exc)
        if code is None:
            raise
        print(f"softdirty: error: {exc}", file=sys.stderr)
        return code


def _exit_code(exc: BaseException) -> int | None:
    if isinstance(exc, NoSuchProcess):
        return EXIT_NO_PROCESS
    if isinstance(exc, AccessDenied):
        return EXIT_DENIED
    if isinstance(exc, Unsupported):
        return EXIT_UNSUPPORTED
    if isinstance(exc, (SoftDirtyError, ValueError, OSError)):
        return EXIT_ERROR
    return None


if __name__ == "__main__":
    sys.exit(main())
