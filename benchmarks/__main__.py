"""python -m benchmarks [--quick | --full] [options]: run the suite, write results under benchmarks/results/.

Writes ``<mode>.json`` (every sample), ``<mode>.md`` (the tables),
``<mode>-*.png`` (plots, if matplotlib is installed) and ``<mode>.log``.
The soft-dirty measurements run inside a QEMU VM booting a soft-dirty
kernel (tools/vmtest/run-in-vm); ``--no-vm`` skips them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/__main__.py` or an installed softdirty elsewhere
    sys.path.insert(0, str(ROOT))

from benchmarks import (  # noqa: E402
    bench_decode,
    bench_harvest,
    bench_memory,
    bench_precopy,
    bench_scaling,
    bench_tracking,
    report,
    run_emulator,
)
from benchmarks.build import BuildError, build  # noqa: E402
from benchmarks.common import PLANS, SCHEMA, Context, RefLib, Results, Row, dump_json, machine_info  # noqa: E402

SECTIONS: dict[str, ModuleType] = {
    "decode": bench_decode,
    "harvest": bench_harvest,
    "scaling": bench_scaling,
    "memory": bench_memory,
    "precopy": bench_precopy,
    "tracking": bench_tracking,
    "emulator": run_emulator,
}
VM_SECTIONS = ("harvest", "scaling", "memory", "tracking")
RUN_IN_VM = ROOT / "tools" / "vmtest" / "run-in-vm"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small sizes, few repeats, populates at most 1 GiB (the default; what CI runs)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="up to 16 GiB mapped / 64 GiB sparse, populates at most ~4 GiB at once")
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                      help="tiny sizes: the smoke test's mode (numbers mean little)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output directory")
    ap.add_argument("--only", default="", help=f"comma-separated sections ({', '.join(SECTIONS)})")
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out")
    ap.add_argument("--repeats", type=int, help="override the mode's repeats (host and VM)")
    ap.add_argument("--no-vm", action="store_true", help="do not run the soft-dirty part in the VM")
    ap.add_argument("--vm-kernel", default="6.12", help="kernel for the VM part (default 6.12)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="measure nothing: rewrite <mode>.md and the plots from <mode>.json")
    ap.add_argument("--update", action="store_true",
                    help="replace only the chosen sections' figures in an existing <mode>.json (then rewrite the "
                         "Markdown and plots from all of it)")
    # Internal: the VM part.
    ap.add_argument("--in-vm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--part-json", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ref", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.mode = args.mode or "quick"
    for name in ("only", "skip"):
        chosen = [s for s in getattr(args, name).split(",") if s]
        unknown = [s for s in chosen if s not in SECTIONS]
        if unknown:
            ap.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
        setattr(args, name, chosen)
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be at least 1")
    return args


def selected(args: argparse.Namespace, names: tuple[str, ...] | list[str]) -> list[str]:
    return [n for n in names if (not args.only or n in args.only) and n not in args.skip]


class Logger:
    def __init__(self, path: Path | None, prefix: str = "") -> None:
        self.file = path.open("w") if path else None
        self.prefix = prefix
        self.t0 = time.monotonic()

    def __call__(self, text: str) -> None:
        line = f"{self.prefix}[{time.monotonic() - self.t0:6.1f}s] {text}"
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def raw(self, text: str) -> None:
        print(text, flush=True)
        if self.file:
            self.file.write(text + "\n")
            self.file.flush()


def run_sections(ctx: Context, names: list[str], errors: list[dict[str, str]]) -> dict[str, Any]:
    """Run sections; returns extra report data, including the load average around each (others share the box)."""
    extra: dict[str, Any] = {"load": {}}
    for name in names:
        ctx.log(f"== {name} ({ctx.env})")
        t0 = time.monotonic()
        load0 = os.getloadavg()[0]
        try:
            got = SECTIONS[name].run(ctx)
            if name == "emulator" and got:
                extra["emulator_external"] = got
        except Exception as exc:  # one section failing must not hide the others: reported as an error
            errors.append({"section": name, "env": ctx.env, "error": f"{type(exc).__name__}: {exc}",
                           "traceback": traceback.format_exc()})
            ctx.log(f"!! {name} failed: {type(exc).__name__}: {exc}")
        load1 = os.getloadavg()[0]
        extra["load"][name] = [round(load0, 2), round(load1, 2)]
        ctx.log(f"   {name} took {time.monotonic() - t0:.1f} s (1-min load average {load0:.1f} -> {load1:.1f})")
    return extra


def vm_env() -> str:
    release = platform.release()
    return "vm-" + ".".join(release.split(".")[:2])


def in_vm(args: argparse.Namespace) -> int:
    plan = plan_of(args)
    log = Logger(None, prefix="[vm] ")
    results = Results(vm_env())
    ctx = Context(plan, results, args.target, RefLib(args.ref), results.env, log, args.part_json.parent)
    errors: list[dict[str, str]] = []
    extra = run_sections(ctx, selected(args, VM_SECTIONS), errors)
    dump_json(args.part_json, {"machine": machine_info(), "results": results.to_dict(), "errors": errors,
                               "load": extra["load"]})
    return 0


def run_vm(args: argparse.Namespace, built: Any, out: Path, results: Results, data: dict[str, Any],
           errors: list[dict[str, str]], log: Logger) -> None:
    names = selected(args, VM_SECTIONS)
    if not names:
        return
    plan = plan_of(args)
    why = None
    if not RUN_IN_VM.exists():
        why = f"{RUN_IN_VM} is missing"
    elif shutil.which("qemu-system-x86_64") is None:
        why = "qemu-system-x86_64 is not installed (tools/vmtest/setup)"
    if why:
        data["vm"] = {"skipped": why}
        results.skip("vm", why)
        return
    part = out / f"{plan.mode}-vm-part.json"
    part.unlink(missing_ok=True)
    python = os.path.realpath(sys.executable)  # not a pyenv shim: those cost seconds each under TCG
    cmd = [str(RUN_IN_VM), "--kernel", args.vm_kernel, "--mem", plan.vm_mem, "--cpus", "2",
           "--timeout", str(plan.vm_timeout), "--rw", str(out), "--",
           "env", f"PYTHONPATH={ROOT}", python, "-m", "benchmarks", f"--{plan.mode}", "--in-vm",
           "--only", ",".join(names), "--part-json", str(part), "--target", str(built.target), "--ref", str(built.ref)]
    if args.repeats:
        cmd += ["--repeats", str(args.repeats)]
    log(f"== VM part: Linux {args.vm_kernel} under QEMU, sections {', '.join(names)}")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        log.raw(line.rstrip("\n"))
        tail = (tail + [line.rstrip("\n")])[-20:]
    rc = proc.wait()
    elapsed = time.monotonic() - t0
    if rc != 0 or not part.exists():
        why = f"run-in-vm exited with status {rc}" + (" (timeout)" if rc == 124 else "")
        data["vm"] = {"skipped": why}
        errors.append({"section": "vm", "env": "vm", "error": why + ": " + " | ".join(tail[-5:]), "traceback": ""})
        return
    got = json.loads(part.read_text())
    results.merge(got["results"])
    errors.extend(got.get("errors", []))
    data["vm"] = {"kernel": got["machine"]["kernel"], "machine": got["machine"], "accel": "tcg", "cpus": 2,
                  "mem": plan.vm_mem, "seconds": round(elapsed, 1), "guest_load": got.get("load", {}),
                  "host_load_after": round(os.getloadavg()[0], 2)}
    part.unlink()


def write_report(out: Path, mode: str, no_plots: bool) -> int:
    path = out / f"{mode}.json"
    if not path.exists():
        print(f"benchmarks: no {path} to report from", file=sys.stderr)
        return 2
    data = json.loads(path.read_text())
    rows = [Row(**r) for r in data["rows"]]
    (out / f"{mode}.md").write_text(report.markdown(data, rows) + "\n")
    pngs = [] if no_plots else report.plots(rows, out, mode)
    print(f"wrote {out / f'{mode}.md'} and {len(pngs)} plots from {path}")
    return 0


def merge_previous(data: dict[str, Any], old: dict[str, Any], rerun: set[str], results: Results) -> None:
    """--update: keep the old run's figures of the sections not re-run (and, with --no-vm, its VM figures)."""
    keep_vm = data["vm"].get("skipped") == "--no-vm"

    def kept(x: dict[str, Any]) -> bool:
        return x["section"] not in rerun or (keep_vm and x.get("env", "host") != "host")

    results.rows[:0] = [Row(**r) for r in old.get("rows", []) if kept(r)]
    data["rows"] = [dataclasses.asdict(r) for r in results.rows]
    data["notes"] = {**{k: v for k, v in old.get("notes", {}).items() if k not in rerun}, **data["notes"]}
    for key in ("skipped", "errors"):
        data[key] = [x for x in old.get(key, []) if kept(x)] + data[key]
    data["load"] = {**old.get("load", {}), **data.get("load", {})}
    if not rerun & set(VM_SECTIONS) or data["vm"].get("skipped") == "--no-vm":
        data["vm"] = old.get("vm", data["vm"])
    data["updated"] = old.get("updated", []) + [{"sections": sorted(rerun), "at": data["started"]}]
    data["started"] = old.get("started", data["started"])


def plan_of(args: argparse.Namespace) -> Any:
    plan = PLANS[args.mode]
    if args.repeats:
        plan = dataclasses.replace(plan, repeats=args.repeats, vm_repeats=args.repeats)
    return plan


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: targets are killed, scratch images removed


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse(argv)
    if args.in_vm:
        return in_vm(args)
    plan = plan_of(args)
    out: Path = args.out.resolve()
    if args.report_only:
        return write_report(out, plan.mode, args.no_plots)
    out.mkdir(parents=True, exist_ok=True)
    log = Logger(out / f"{plan.mode}.log")
    try:
        built = build(out / "build")
    except BuildError as exc:
        print(f"benchmarks: cannot build the C helpers: {exc}", file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results = Results("host")
    ctx = Context(plan, results, built.target, RefLib(built.ref), "host", log, out)
    errors: list[dict[str, str]] = []
    data: dict[str, Any] = {"schema": SCHEMA, "mode": plan.mode, "started": started, "machine": machine_info(),
                            "compiler": built.compiler, "plan": dataclasses.asdict(plan), "vm": {}}
    log(f"softdirty benchmarks, {plan.mode} mode, on Linux {data['machine']['kernel']} "
        f"({data['machine']['cpu']}, {data['machine']['cpus']} CPUs)")
    t0 = time.monotonic()
    data.update(run_sections(ctx, selected(args, list(SECTIONS)), errors))
    if not args.no_vm:
        run_vm(args, built, out, results, data, errors, log)
    else:
        data["vm"] = {"skipped": "--no-vm"}
    data["seconds"] = round(time.monotonic() - t0, 1)
    data.update(results.to_dict())
    data["errors"] = errors
    previous = out / f"{plan.mode}.json"
    if args.update and previous.exists():
        merge_previous(data, json.loads(previous.read_text()), set(selected(args, list(SECTIONS))), results)
    dump_json(out / f"{plan.mode}.json", data)
    md = report.markdown(data, results.rows)
    (out / f"{plan.mode}.md").write_text(md + "\n")
    pngs = [] if args.no_plots else report.plots(results.rows, out, plan.mode)
    log(f"wrote {out / f'{plan.mode}.json'}, {out / f'{plan.mode}.md'}"
        + (f" and {len(pngs)} plots" if pngs else " (no plots: matplotlib missing or --no-plots)")
        + f" in {data['seconds']} s")
    for e in errors:
        log(f"ERROR {e['section']} ({e['env']}): {e['error']}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

