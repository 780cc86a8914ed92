"""The ``softdirty`` command line (also ``python -m softdirty``).

Exit codes: 0 success; 1 any other error; 2 bad usage; 3 no such process /
process gone; 4 access denied; 5 unsupported here; 6 ``verify`` found
differences; 130 interrupted.  An error is one line on stderr; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TextIO

import softdirty
from softdirty.dirtyset import DirtySet
from softdirty.errors import AccessDenied, NoSuchProcess, ProcessGone, SoftDirtyError, Unsupported

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_PROCESS, EXIT_DENIED, EXIT_UNSUPPORTED, EXIT_MISMATCH = 0, 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130

EPILOG = """\
examples:
  softdirty probe                     what works on this host, and why
  softdirty demo                      watch a small workload on the best back end
  softdirty watch 1234                pages written per second by PID 1234, every second
  softdirty watch --count 5 --json -- python3 app.py
                                      start a command and watch it: 5 samples, JSON lines
  softdirty watch 1234 --plot rate.png --count 30
  softdirty dirty 1234 --interval 1 --json
                                      one checkpoint, wait 1 s, print what PID 1234 wrote
  softdirty dump 1234 ./img           incremental pre-copy dump of PID 1234 into ./img
  softdirty verify ./img 1234         stop PID 1234 and compare ./img with its memory
  softdirty emulate scenario.toml     replay an emulator scenario

exit codes:
  0 ok, 1 error, 2 usage, 3 no such process (or it exited), 4 access denied,
  5 unsupported on this host, 6 verify found differences, 130 interrupted
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"softdirty: error: {message} (see {self.prog} --help)\n")


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


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, not {value}")
    return value


def _fraction(text: str) -> float:
    """``10%`` or ``0.1``."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction (0.1) or a percentage (10%), not {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a growth >= 0, not {text}")
    return value


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


# -- probe ---------------------------------------------------------------------------------


def cmd_probe(args: argparse.Namespace) -> int:
    caps = softdirty.probe()
    if args.json:
        print(json.dumps(caps.to_dict(), indent=2))
        return EXIT_OK
    print(f"kernel {caps.kernel} ({caps.arch})")
    for name in ("soft_dirty", "pagemap_scan", "scan_soft_dirty", "scan_guard", "uffd_wp_async", "pfn_visible"):
        answer = caps.answer(name)
        print(f"  {name:<16} {'yes' if answer.ok else 'no ':<4} {answer.reason}")
    print(f"  {'scanner':<16} {caps.scanner.name:<4} {caps.scanner.reason}")
    print(f"best back end: {caps.best_backend or 'none (emulator only)'}: {caps.best_reason}")
    return EXIT_OK


# -- dirty ---------------------------------------------------------------------------------


def _table(dirty: DirtySet, seconds: float | None, top: int = 5) -> str:
    rate = ""
    if seconds:
        rate = f", {dirty.page_count / seconds:,.0f} pages/s, {dirty.bytes / seconds / 1e6:,.1f} MB/s"
    lines = [f"epoch {dirty.epoch}: {dirty.page_count:,} pages ({_mb(dirty.bytes)}) in {len(dirty):,} ranges{rate}"]
    summaries = sorted((s for s in dirty.vmas if s.pages), key=lambda s: -s.pages)[:top]
    for s in summaries:
        lines.append(f"  {s.vma.start:#014x}-{s.vma.end:#014x} {s.vma.perms} {s.pages:>9,} pages  {s.vma.name}")
    return "\n".join(lines)


def cmd_dirty(args: argparse.Namespace) -> int:
    with softdirty.track(args.pid, backend=args.backend, exact=args.exact) as tracker:
        tracker.reset()
        time.sleep(args.interval)
        dirty = tracker.harvest()
    if args.json:
        out = dirty.to_dict()
        out["interval"] = args.interval
        out["why"] = tracker.why
        print(json.dumps(out))
        return EXIT_OK
    print(f"PID {args.pid}, back end {tracker.backend_name} ({tracker.why})")
    print(_table(dirty, args.interval, top=args.top))
    if args.ranges:
        for r in dirty.ranges[: args.ranges]:
            print(f"  {r.start:#014x}-{r.end:#014x} {r.pages:>7,} pages  {r.flags!s}")
        if len(dirty) > args.ranges:
            print(f"  ... {len(dirty) - args.ranges:,} more ranges")
    for note in dirty.notes:
        print(f"note: {note}")
    return EXIT_OK


# -- watch ---------------------------------------------------------------------------------


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _sample_line(sample: Any, top: int, t0: float) -> str:
    tops = ", ".join(f"{_short(r.vma.name)} {r.pages:,}" for r in sample.top(top))
    return (f"{sample.start + sample.seconds - t0:8.2f}s {sample.epoch:>6} {sample.pages:>10,} "
            f"{sample.pages_per_s:>12,.0f} {sample.mb_per_s:>9,.2f}  {tops}")


WATCH_HEADER = f"{'time':>9} {'epoch':>6} {'pages':>10} {'pages/s':>12} {'MB/s':>9}  top VMAs (pages)"


def _check_plot() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise Unsupported("--plot", "matplotlib is not installed (pip install 'softdirty[plot]')") from None


def write_plot(path: str, samples: Sequence[Any], title: str, top: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = samples[0].start if samples else 0.0
    xs = [s.start + s.seconds - t0 for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(xs, [s.mb_per_s for s in samples], label="all", linewidth=2)
    totals: dict[tuple[int, int, str], int] = {}
    for s in samples:
        for r in s.vmas:
            key = (r.vma.start, r.vma.end, r.vma.name)
            totals[key] = totals.get(key, 0) + r.pages
    for key in sorted(totals, key=lambda k: -totals[k])[:top]:
        ys = [next((r.mb_per_s for r in s.vmas if (r.vma.start, r.vma.end, r.vma.name) == key), 0.0)
              for s in samples]
        ax.plot(xs, ys, label=f"{_short(key[2], 32)} @{key[0]:#x}", linewidth=1)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MB/s written (distinct pages)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _watch(tracker: softdirty.Tracker, args: argparse.Namespace, out: TextIO,
           alive: Callable[[], bool] = lambda: True) -> list[Any]:
    """Sample until --count, the target's end, or Ctrl-C; print as we go."""
    from softdirty.sampling import Sampler

    sampler = Sampler(tracker)
    samples: list[Any] = []
    t0 = time.monotonic()
    if not args.json:
        print(f"PID {tracker.pid}: {tracker.backend_name} ({tracker.why})", file=out)
        print(WATCH_HEADER, file=out)
    sampler.start()
    try:
        while args.count is None or len(samples) < args.count:
            if not alive():
                break
            try:
                sample = sampler.sample(args.interval)
            except ProcessGone:
                if alive():
                    raise
                break
            samples.append(sample)
            if args.json:
                print(json.dumps(sample.to_dict(top=args.top)), file=out, flush=True)
            else:
                print(_sample_line(sample, args.top, t0), file=out, flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how an endless watch ends
    return samples


def cmd_watch(args: argparse.Namespace) -> int:
    if args.plot:
        _check_plot()
    if (args.pid is None) == (not args.command_argv):
        raise _usage("watch takes a PID or -- COMMAND [ARGS...], not both or neither")
    child: subprocess.Popen[bytes] | None = None
    if args.command_argv:
        try:
            # Popen returns after the exec succeeded: the PID already runs the command.
            child = subprocess.Popen(args.command_argv)
        except OSError as exc:
            raise SoftDirtyError(f"cannot run {args.command_argv[0]!r}: {exc.strerror}") from None
        pid = child.pid
    else:
        pid = args.pid
    try:
        with softdirty.track(pid, backend=args.backend, exact=args.exact) as tracker:
            def alive() -> bool:
                return child is None or child.poll() is None

            samples = _watch(tracker, args, sys.stdout, alive)
    finally:
        if child is not None:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(5)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                print(f"softdirty: stopped the command (PID {pid})", file=sys.stderr)
            else:
                print(f"softdirty: the command exited with status {child.returncode}", file=sys.stderr)
    if args.plot and samples:
        write_plot(args.plot, samples, f"PID {pid} ({tracker.backend_name})")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return EXIT_OK


# -- dump / verify -------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, str, int, int], None] | None]:
    """A progress callback drawing tqdm bars on stderr (none without tqdm or a terminal)."""
    if not enabled:
        yield None
        return
    try:
        tqdm: Any = importlib.import_module("tqdm").tqdm  # optional: the 'progress' extra
    except ImportError:
        yield None
        return
    bars: dict[int, Any] = {}

    def update(number: int, kind: str, done: int, total: int) -> None:
        bar = bars.get(number)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[number] = tqdm(total=total, unit="B", unit_scale=True, desc=f"round {number} ({kind})",
                                      leave=False, disable=None, file=sys.stderr)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()


def print_dump_report(report: Any, out: TextIO) -> None:
    print(f"PID {report.pid} -> {report.directory}/{report.image}: {report.backend} ({report.why})", file=out)
    print(f"{'round':>5} {'kind':<6} {'reported':>10} {'copied':>10} {'MB':>10} {'runs':>7} {'skipped':>8} "
          f"{'seconds':>8}", file=out)
    for r in report.rounds:
        print(f"{r.number:>5} {r.kind:<6} {r.pages_reported:>10,} {r.pages_copied:>10,} {r.bytes_copied / 1e6:>10,.2f} "
              f"{r.runs:>7,} {r.skipped_pages:>8,} {r.seconds:>8.3f}", file=out)
    print(f"stopped pre-copy: {report.stop_reason}", file=out)
    print(f"total {_mb(report.total_bytes)} in {report.seconds:.2f} s", file=out)
    line = (f"final round froze the process for {report.final_freeze_seconds * 1e3:.1f} ms "
            f"(stopping the threads took {report.final_freeze_acquire_seconds * 1e3:.2f} ms)")
    if report.stop_and_copy_seconds is not None:
        line += (f"; a stop-and-copy of the same process: {report.stop_and_copy_seconds * 1e3:.1f} ms "
                 f"for {_mb(report.stop_and_copy_bytes or 0)}")
    print(line, file=out)


def cmd_dump(args: argparse.Namespace) -> int:
    from softdirty.dump import StopRule, dump

    rule = StopRule(min_pages=args.min_pages, max_rounds=args.max_rounds, max_growth=args.max_growth)
    leave = "stopped" if args.leave_stopped else "running"
    with _progress(not args.json and not args.quiet) as progress:
        report = dump(args.pid, args.directory, backend=args.backend, rule=rule, force=args.force,
                      compare=not args.no_compare, leave=leave, progress=progress)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print_dump_report(report, sys.stdout)
        if args.leave_stopped:
            print(f"process {args.pid} is left stopped: kill -CONT {args.pid} resumes it")
    return EXIT_OK


def _fmt_ranges(ranges: Sequence[tuple[int, int]], limit: int = 20) -> list[str]:
    lines = [f"  {s:#014x}-{e:#014x} {(e - s) // 4096:>8,} pages" for s, e in ranges[:limit]]
    if len(ranges) > limit:
        lines.append(f"  ... {len(ranges) - limit:,} more ranges")
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    from softdirty.dump import verify

    report = verify(args.directory, args.pid, check_data=not args.no_check_data)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        verdict = "matches" if report.ok else "DIFFERS from"
        print(f"image {report.image} {verdict} process {report.pid}: {report.compared_pages:,} pages compared "
              f"({report.skipped_pages:,} skipped when dumped); process stopped for "
              f"{report.freeze_seconds * 1e3:.1f} ms")
        for title, ranges in (("mismatching", report.mismatches), ("missing from the image", report.missing),
                              ("unreadable now", report.unreadable)):
            if ranges:
                print(f"{title}: {len(ranges):,} ranges")
                print("\n".join(_fmt_ranges(ranges)))
        for line in report.layout[:20]:
            print(f"layout: {line}")
    return EXIT_OK if report.ok else EXIT_MISMATCH


# -- emulate / demo ------------------------------------------------------------------------


def cmd_emulate(args: argparse.Namespace) -> int:
    from softdirty.emulator import emulate_main

    argv = [*args.scenario, *(["--quiet"] if args.quiet else [])]
    status = emulate_main(argv, sys.stdout)
    # emulate_main: 0 all held, 1 an expectation failed, 2 a bad scenario file.
    return {0: EXIT_OK, 1: EXIT_MISMATCH}.get(status, EXIT_USAGE)


DEMO_WORKLOAD = r"""
import mmap, sys, time
size = int(sys.argv[1])
buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
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
            args.count, args.json, args.top = args.rounds, False, 3
            _watch(tracker, args, sys.stdout)
    finally:
        child.kill()
        child.wait()
    print("next: softdirty watch PID, softdirty dump PID DIR (softdirty --help)")
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------------


def _usage(message: str) -> SystemExit:
    sys.stderr.write(f"softdirty: error: {message} (see softdirty --help)\n")
    return SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="softdirty",
        description="Which memory pages has a live Linux process written since a checkpoint?",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"softdirty {softdirty.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    backends = list(softdirty.tracker.BACKENDS)

    common = _Parser(add_help=False)
    # Also accepted after the command; SUPPRESS keeps a --debug given before it.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def add(name: str, help: str, epilog: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, epilog="examples:\n" + epilog,
                                                    formatter_class=argparse.RawDescriptionHelpFormatter,
                                                    parents=[common])
        return p

    p = add("probe", "what works on this host, and why", "  softdirty probe\n  softdirty probe --json\n")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_probe)

    p = add("dirty", "checkpoint PID, wait, print what it wrote",
            "  softdirty dirty 1234\n  softdirty dirty 1234 --interval 0.5 --ranges 10\n"
            "  softdirty dirty 1234 --json\n")
    p.add_argument("pid", type=_pid)
    p.add_argument("--interval", type=_positive_float, default=1.0, help="seconds between checkpoint and harvest")
    p.add_argument("--backend", choices=backends, default="auto")
    p.add_argument("--exact", action="store_true", help="soft-dirty: harvest with every thread stopped")
    p.add_argument("--top", type=_count, default=5, help="VMAs to list (default 5)")
    p.add_argument("--ranges", type=int, default=0, metavar="N", help="also list the first N ranges and causes")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_dirty)

    p = add("watch", "pages written per interval by PID (or by a command we start)",
            "  softdirty watch 1234\n  softdirty watch 1234 --interval 0.5 --count 10 --json\n"
            "  softdirty watch --plot rate.png -- python3 app.py\n")
    p.add_argument("pid", type=_pid, nargs="?", help="the process to watch (or give -- COMMAND ARGS)")
    p.add_argument("--interval", type=_positive_float, default=1.0, help="seconds per sample (default 1)")
    p.add_argument("--count", type=_count, default=None, help="stop after N samples (default: until Ctrl-C)")
    p.add_argument("--top", type=_count, default=3, help="VMAs per line (default 3)")
    p.add_argument("--backend", choices=backends, default="auto")
    p.add_argument("--exact", action="store_true", help="soft-dirty: harvest with every thread stopped")
    p.add_argument("--json", action="store_true", help="one JSON object per sample, one per line")
    p.add_argument("--plot", metavar="FILE.png", help="plot MB/s over time at the end (needs matplotlib)")
    p.set_defaults(func=cmd_watch, command_argv=[])

    p = add("dump", "incremental pre-copy dump of PID's memory into DIR",
            "  softdirty dump 1234 ./img\n  softdirty dump 1234 ./img --force --max-rounds 4\n"
            "  softdirty dump 1234 ./img --leave-stopped && softdirty verify ./img 1234\n")
    p.add_argument("pid", type=_pid)
    p.add_argument("directory", help="image directory (created if missing; must be empty or hold an image)")
    p.add_argument("--backend", choices=backends, default="auto")
    p.add_argument("--force", action="store_true", help="replace an existing image (kept until the new one is done)")
    p.add_argument("--max-rounds", type=_count, default=8, help="pre-copy rounds at most, round 0 included (8)")
    p.add_argument("--min-pages", type=int, default=64, help="stop when a round writes fewer pages (64)")
    p.add_argument("--max-growth", type=_fraction, default=0.10, help="stop when the dirty set grows more (10%%)")
    p.add_argument("--no-compare", action="store_true", help="skip the stop-and-copy timing comparison")
    p.add_argument("--leave-stopped", action="store_true",
                   help="leave the process stopped (SIGSTOP, as CRIU's --leave-stopped); kill -CONT resumes it")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_dump)

    p = add("verify", "stop PID and compare the image in DIR with its memory",
            "  softdirty verify ./img 1234\n  softdirty verify ./img 1234 --json\n")
    p.add_argument("directory")
    p.add_argument("pid", type=_pid)
    p.add_argument("--no-check-data", action="store_true", help="skip checking the image's checksums first")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.set_defaults(func=cmd_verify)

    p = add("emulate", "replay emulator scenarios (TOML) and print the entries after each step",
            "  softdirty emulate s.toml\n  softdirty emulate list\n  softdirty emulate -q a.toml b.toml\n")
    p.add_argument("scenario", nargs="+", help="scenario file(s), or 'list' for the shipped ones")
    p.add_argument("--quiet", "-q", action="store_true", help="only failures and a summary per scenario")
    p.set_defaults(func=cmd_emulate)

    p = add("demo", "start a small workload and watch it on the best back end",
            "  softdirty demo\n  softdirty demo --rounds 10 --interval 0.2\n")
    p.add_argument("--rounds", type=_count, default=5)
    p.add_argument("--interval", type=_positive_float, default=0.5)
    p.add_argument("--size-mib", type=_count, default=64)
    p.add_argument("--backend", choices=backends, default="auto")
    p.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)
    return parser


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """``watch [options] -- CMD ARGS``: everything after the first ``--`` is the command."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    before, command = _split_command(args_list)
    parser = build_parser()
    args = parser.parse_args(before)
    if command:
        if args.command != "watch":
            parser.error(f"only watch takes -- COMMAND, not {args.command}")
        args.command_argv = command
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("softdirty: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BaseException as exc:
        if args.debug:
            raise
        code = _exit_code(exc)
        if code == EXIT_ERROR and not isinstance(exc, (SoftDirtyError, ValueError, OSError)):
            print(f"softdirty: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                  file=sys.stderr)
        else:
            print(f"softdirty: error: {_one_line(exc)}", file=sys.stderr)
        return code


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, NoSuchProcess):  # ProcessGone included
        return EXIT_NO_PROCESS
    if isinstance(exc, AccessDenied):
        return EXIT_DENIED
    if isinstance(exc, Unsupported):
        return EXIT_UNSUPPORTED
    if isinstance(exc, PermissionError):
        return EXIT_DENIED
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
