"""results JSON -> Markdown tables and PNG plots."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import MiB, Row, find, human

TARGET_OVERHEAD = 1.1  # python / c_ref, the target


def ms(x: float) -> str:
    if x >= 100e-3:
        return f"{x * 1e3:.0f}"
    if x >= 1e-3:
        return f"{x * 1e3:.2f}"
    return f"{x * 1e3:.3f}"


def rate(x: float) -> str:
    if x >= 1e9:
        return f"{x / 1e9:.2f} G"
    if x >= 1e6:
        return f"{x / 1e6:.1f} M"
    return f"{x / 1e3:.0f} k"


def spread(row: Row, fmt: Callable[[float], str]) -> str:
    """median (min–max)."""
    s = row.stats
    return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"


def ratio_text(num: Row, den: Row, *, invert: bool = False) -> str:
    a, b = num.stats, den.stats
    med = a["median"] / b["median"]
    best = a["min"] / b["min"]
    if invert:
        med, best = 1 / med, 1 / best
    return f"{med:.2f}x (best {best:.2f}x)"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def rows_of(data_rows: Sequence[Row], section: str) -> list[Row]:
    return [r for r in data_rows if r.section == section]


def cases(rows: Sequence[Row], keys: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    seen: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}
    for r in rows:
        k = (r.env, *(r.case.get(x) for x in keys))
        if k not in seen:
            seen[k] = (r.env, {x: r.case.get(x) for x in keys})
    return list(seen.values())


# -- sections ------------------------------------------------------------------------------------


def md_decode(rows: list[Row]) -> list[str]:
    rs = rows_of(rows, "decode")
    if not rs:
        return []
    names = [n for n in ("c", "python", "naive_struct", "naive_object") if any(r.variant == n for r in rs)]
    out = ["### 1. Decode (entries/s: median (min–max))", ""]
    body = []
    for _, case in cases(rs, ("span", "layout", "source")):
        cells = [human(case["span"]), case["layout"], case["source"]]
        got = {n: find(rs, "decode", n, **case) for n in names}
        any_row = next(r for r in got.values() if r is not None)
        cells.append(str(any_row.extra.get("ranges", "")))
        cells += [spread(got[n], rate) if got[n] is not None else "–" for n in names]  # type: ignore[arg-type]
        c, p, s = got.get("c"), got.get("python"), got.get("naive_struct")
        cells.append(ratio_text(c, p) if c and p else "–")
        cells.append(ratio_text(c, s) if c and s else "–")
        body.append(cells)
    out += table(["span", "layout", "source", "ranges", *names, "C / Python", "C / naive struct"], body)
    return out


def md_harvest(rows: list[Row]) -> list[str]:
    rs = rows_of(rows, "harvest")
    if not rs:
        return []
    out = ["### 2–3. Harvest end to end vs C reference and kernel ceiling (ms: median (min–max))", ""]
    body = []
    for env, case in cases(rs, ("backend", "size", "pattern")):
        here = [r for r in rs if r.env == env]
        py = find(here, "harvest", "python", **case)
        c = find(here, "harvest", "c_ref", **case)
        ceil = find(here, "harvest", "ceiling", **case)
        if py is None:
            continue
        over = "–"
        meets = "–"
        share = "–"
        if c is not None:
            over = ratio_text(py, c)
            meets = "yes" if py.stats["median"] / c.stats["median"] <= TARGET_OVERHEAD else "**no**"
        if ceil is not None:
            share = f"{ceil.stats['median'] / py.stats['median']:.0%}"
        body.append([env, case["backend"], human(case["size"]), case["pattern"],
                     str(py.extra.get("ranges_written", "")), spread(py, ms),
                     spread(c, ms) if c else "–", spread(ceil, ms) if ceil else "–", over, meets, share])
    out += table(["env", "back end", "region", "written", "ranges", "python", "C ref", "ceiling", "python / C",
                  f"≤ {TARGET_OVERHEAD}x", "ceiling / python"], body)
    return out + md_profiles(rows)


def md_scaling(rows: list[Row]) -> list[str]:
    rs = rows_of(rows, "scaling")
    if not rs:
        return []
    out = ["### 4. Cost growth: PAGEMAP_SCAN vs full pagemap reads (ms: median (min–max))", ""]
    body = []
    for env, case in cases(rs, ("size", "fraction", "layout")):
        got = {n: find([r for r in rs if r.env == env], "scaling", n, **case)
               for n in ("scan", "pagemap", "ceiling_scan", "ceiling_pread")}
        scan, pm = got["scan"], got["pagemap"]
        if scan is None or pm is None:
            continue
        body.append([env, human(case["size"]), f"{case['fraction']:.1%}", case["layout"],
                     str(scan.extra.get("ranges_written", "")), spread(scan, ms), spread(pm, ms),
                     spread(got["ceiling_scan"], ms) if got["ceiling_scan"] else "–",
                     spread(got["ceiling_pread"], ms) if got["ceiling_pread"] else "–",
                     f"{pm.stats['median'] / scan.stats['median']:.2f}x"])
    out += table(["env", "mapped", "written", "layout", "ranges", "scan (library)", "pagemap (library)",
                  "ceiling scan", "ceiling pread", "pagemap / scan"], body)
    return out


def md_memory(rows: list[Row]) -> list[str]:
    rs = rows_of(rows, "memory")
    if not rs:
        return []
    out = ["### 5. Peak memory of one harvest (MiB of VmHWM growth: median (min–max))", ""]
    body = []
    for r in rs:
        secs = r.extra.get("seconds", [])
        ranges = r.extra.get("ranges", [])
        body.append([r.env, human(r.case["size"]), r.variant, spread(r, lambda x: f"{x / MiB:.2f}"),
                     f"{sorted(secs)[len(secs) // 2] * 1e3:.1f}" if secs else "–",
                     str(ranges[0]) if ranges else "–"])
    out += table(["env", "mapping", "harvester", "peak growth (MiB)", "harvest ms", "ranges"], body)
    return out


def md_precopy(rows: list[Row]) -> list[str]:
    rs = rows_of(rows, "precopy")
    if not rs:
        return []
    out = ["### 6. Pre-copy: final-round freeze vs stop-and-copy (ms: median (min–max))", ""]
    body = []
    for env, case in cases(rs, ("size", "rate", "backend")):
        f = find(rs, "precopy", "final_freeze", **case)
        s = find(rs, "precopy", "stop_and_copy", **case)
        if f is None or s is None:
            continue
        runs = f.extra.get("runs", [])
        body.append([env, case["backend"], human(case["size"]), f"{case['rate']:.0%}/s", spread(f, ms), spread(s, ms),
                     ratio_text(f, s), ", ".join(str(x["rounds"]) for x in runs),
                     ", ".join(str(x["final_pages"]) for x in runs)])
    out += table(["env", "back end", "region", "writer", "final freeze", "stop-and-copy", "freeze / stop-and-copy",
                  "rounds", "final-round pages"], body)
    return out


def md_tracking(rows: list[Row]) -> list[str]:
    rs = rows_of(rows, "tracking")
    if not rs:
        return []
    out = ["### 7. Tracking cost to the target (8-byte writes/s: median (min–max))", ""]
    body = []
    for r in rs:
        base = find([x for x in rs if x.env == r.env], "tracking", "untracked", size=r.case["size"],
                    workload=r.case["workload"])
        runs = r.extra.get("runs", [])
        harvests = [x["harvests"] for x in runs]
        body.append([r.env, human(r.case["size"]), r.case["workload"], r.variant, spread(r, rate),
                     ratio_text(r, base) if base is not None else "–",
                     str(sorted(harvests)[len(harvests) // 2]) if harvests else "–"])
    out += table(["env", "working set", "workload", "variant", "writes/s", "vs untracked", "harvests"], body)
    return out


def md_emulator(rows: list[Row], data: dict[str, Any]) -> list[str]:
    rs = rows_of(rows, "emulator")
    ext = data.get("emulator_external")
    if not rs and not ext:
        return []
    out = ["### 8. Emulator (softdirty.emulator, kernel profile 6.18, THP never; median (min–max))", ""]
    if rs:
        body = []
        for r in rs:
            if r.metric == "seconds":
                fig = spread(r, ms) + " ms"
                entries = r.case.get("entries")
                per = (f"{rate(entries / r.stats['median'])} entries/s" if entries else
                       f"{r.stats['median'] * 1e6:.2f} µs each" if r.case.get("calls") else "")
            else:
                fig, per = spread(r, rate) + (f" {r.metric}" if r.metric.endswith("/s") else ""), ""
            body.append([_emulator_case(r), r.variant, fig, per])
        out += table(["case", "variant", "time or rate", "per entry / call"], body)
    if ext and ext.get("text"):
        out += ["", "Output of benchmarks/bench_emulator.py:", "", "```", ext["text"].rstrip(), "```"]
    return out


def _emulator_case(r: Row) -> str:
    c = r.case
    if "entries" in c:
        sd = "soft-dirty on" if c.get("soft_dirty") else "soft-dirty off"
        if c.get("after_clear"):
            sd += ", after clear_refs 4"
        return f"{human(c['entries'] * 4096)} fully populated ({c['entries']:,} entries), {sd}"
    if "faults" in c:
        return f"{c['faults']:,} write faults over {c.get('pages', 0):,} pages (first touch, then write-protect)"
    if "calls" in c:
        return f"{c['calls']:,} one-byte write() calls, each a first-touch fault"
    return ", ".join(f"{k}={v}" for k, v in c.items())


def summary(rows: list[Row]) -> list[str]:
    """The headline: one line per claim."""
    lines: list[list[str]] = []
    dec = rows_of(rows, "decode")
    if dec:
        big = max(r.case["span"] for r in dec)
        for layout in ("dense", "sparse"):
            c = find(dec, "decode", "c", span=big, layout=layout)
            p = find(dec, "decode", "python", span=big, layout=layout)
            o = find(dec, "decode", "naive_object", span=big, layout=layout)
            if c and p:
                lines.append([f"decode {human(big)} {layout}: C scanner vs pure-Python fallback"
                              + (" vs per-page objects" if o else ""),
                              f"{rate(c.stats['median'])}/s vs {rate(p.stats['median'])}/s"
                              + (f" vs {rate(o.stats['median'])}/s" if o else ""),
                              f"{c.stats['median'] / p.stats['median']:.1f}x" +
                              (f" / {c.stats['median'] / o.stats['median']:.0f}x" if o else "")])
    hv = rows_of(rows, "harvest")
    for env, case in cases(hv, ("backend", "size", "pattern")):
        py = find([r for r in hv if r.env == env], "harvest", "python", **case)
        c = find([r for r in hv if r.env == env], "harvest", "c_ref", **case)
        if py and c:
            r_ = py.stats["median"] / c.stats["median"]
            lines.append([f"harvest {env} {case['backend']} {human(case['size'])} {case['pattern']} "
                          f"({py.extra.get('ranges_written', '?')} ranges): python vs C reference",
                          f"{ms(py.stats['median'])} ms vs {ms(c.stats['median'])} ms",
                          f"{r_:.2f}x" + ("" if r_ <= TARGET_OVERHEAD else " (target 1.1x missed)")])
    sc = rows_of(rows, "scaling")
    for env in sorted({r.env for r in sc}):
        es = [r for r in sc if r.env == env]
        big = max(r.case["size"] for r in es)
        for frac in sorted({r.case["fraction"] for r in es if r.case["size"] == big}):
            s = find(es, "scaling", "scan", size=big, fraction=frac, layout="populated")
            p = find(es, "scaling", "pagemap", size=big, fraction=frac, layout="populated")
            if s and p:
                lines.append([f"scaling {env} {human(big)} mapped, {frac:.1%} written: pagemap reads vs "
                              "PAGEMAP_SCAN harvest", f"{ms(p.stats['median'])} ms vs {ms(s.stats['median'])} ms",
                              f"{p.stats['median'] / s.stats['median']:.2f}x"])
    mem = rows_of(rows, "memory")
    for env in sorted({r.env for r in mem}):
        es = [r for r in mem if r.env == env]
        small, big = min(r.case["size"] for r in es), max(r.case["size"] for r in es)
        for how in sorted({r.variant for r in es}):
            a = find(es, "memory", how, size=small)
            b = find(es, "memory", how, size=big)
            if a and b and small != big:
                lines.append([f"memory {env} {how}: peak growth of one harvest, {human(small)} vs {human(big)} "
                              "mapping", f"{a.stats['median'] / MiB:.2f} MiB vs {b.stats['median'] / MiB:.2f} MiB",
                              ""])
    pc = rows_of(rows, "precopy")
    for _, case in cases(pc, ("size", "rate", "backend")):
        f = find(pc, "precopy", "final_freeze", **case)
        s = find(pc, "precopy", "stop_and_copy", **case)
        if f and s:
            lines.append([f"pre-copy {human(case['size'])} at {case['rate']:.0%}/s: final freeze vs stop-and-copy",
                          f"{ms(f.stats['median'])} ms vs {ms(s.stats['median'])} ms",
                          f"{f.stats['median'] / s.stats['median']:.3f}x"])
    tr = rows_of(rows, "tracking")
    for r in tr:
        if r.variant == "untracked":
            continue
        base = find([x for x in tr if x.env == r.env], "tracking", "untracked", size=r.case["size"],
                    workload=r.case["workload"])
        if base:
            lines.append([f"tracking {r.env} {human(r.case['size'])} {r.case['workload']} writes, {r.variant}: "
                          "throughput vs untracked", f"{rate(r.stats['median'])}/s vs {rate(base.stats['median'])}/s",
                          f"{r.stats['median'] / base.stats['median']:.2f}x"])
    for r in rows_of(rows, "emulator"):
        c = r.case
        if r.variant == "pagemap read" and c.get("soft_dirty") and not c.get("after_clear") and c.get("entries"):
            lines.append([f"emulator: pagemap read of {_emulator_case(r)}", f"{ms(r.stats['median'])} ms",
                          f"{rate(c['entries'] / r.stats['median'])} entries/s"])
        elif r.variant == "write faults" and r.metric == "faults/s":
            lines.append([f"emulator: {_emulator_case(r)}", f"{rate(r.stats['median'])} faults/s", ""])
    if not lines:
        return []
    return ["### Summary (medians; ratios from the same run)", ""] + table(["claim", "figures", "ratio"], lines)


def machine_lines(data: dict[str, Any]) -> list[str]:
    out = []
    m = data.get("machine", {})
    def yn(key: str) -> str:
        return "yes" if m.get(key) else "no"

    if m:
        out.append(f"* host: Linux {m.get('kernel')} ({m.get('arch')}), {m.get('cpu')}, {m.get('cpus')} CPUs, "
                   f"{human(m.get('memory', 0))} RAM, virtual machine: {m.get('hypervisor')}; Python "
                   f"{m.get('python')}, scanner {m.get('scanner')}, THP {m.get('thp')}; soft-dirty "
                   f"{yn('soft_dirty')}, PAGEMAP_SCAN {yn('pagemap_scan')}, uffd-wp async {yn('uffd_wp_async')}; "
                   f"{data.get('compiler', '')}")
    load = data.get("load", {})
    if load:
        values = [x for pair in load.values() for x in pair]
        out.append(f"* host 1-minute load average during the host sections: {min(values):.1f}–{max(values):.1f} "
                   f"on {m.get('cpus')} CPUs (the machine is shared: above {m.get('cpus')}, absolute figures are "
                   "inflated by contention; ratios measured interleaved suffer less)")
    vm = data.get("vm", {})
    if vm.get("machine"):
        v = vm["machine"]
        out.append(f"* VM: Linux {v.get('kernel')} under QEMU {vm.get('accel', 'tcg').upper()} ({vm.get('cpus')} "
                   f"vCPUs, {vm.get('mem')} RAM) on the same host; soft-dirty {'yes' if v.get('soft_dirty') else 'no'}"
                   f", PAGEMAP_SCAN {'yes' if v.get('pagemap_scan') else 'no'}. Absolute VM times are emulated-CPU "
                   "times: only ratios inside the VM mean anything.")
    elif vm.get("skipped"):
        out.append(f"* VM: not run: {vm['skipped']}")
    return out


def markdown(data: dict[str, Any], rows: list[Row]) -> str:
    out = [f"## softdirty benchmarks ({data['mode']} mode, {data['started']})", ""]
    for u in data.get("updated", []):
        out.append(f"* re-run on {u['at']}: {', '.join(u['sections'])}")
    out += machine_lines(data) + [""]
    out += ["Every figure is median (min–max) over the repeats of one run; ratios compare variants measured in the "
            "same run, interleaved. `python` is the library end to end; see benchmarks/README.md for what each "
            "variant does.", ""]
    for part in (summary(rows), md_decode(rows), md_harvest(rows), md_scaling(rows), md_memory(rows),
                 md_precopy(rows), md_tracking(rows), md_emulator(rows, data)):
        if part:
            out += part + [""]
    notes = data.get("notes", {})
    if notes:
        out += ["### Notes", ""]
        for section, texts in notes.items():
            out += [f"* {section}: {t}" for t in texts]
        out.append("")
    skipped = data.get("skipped", [])
    if skipped:
        out += ["### Not measured", ""] + [f"* {s['section']} ({s['env']}): {s['reason']}" for s in skipped] + [""]
    errors = data.get("errors", [])
    if errors:
        out += ["### Errors", ""] + [f"* {e['section']} ({e['env']}): {e['error']}" for e in errors] + [""]
    return "\n".join(out)


# -- plots ------------------------------------------------------------------------------------------------


def plots(rows: list[Row], out_dir: Path, prefix: str) -> list[Path]:
    """PNG figures; [] if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made: list[Path] = []

    def errbar(ax: Any, xs: Sequence[float], rs: Sequence[Row], scale: float = 1.0, **kw: Any) -> None:
        med = [r.stats["median"] * scale for r in rs]
        lo = [m - r.stats["min"] * scale for m, r in zip(med, rs, strict=True)]
        hi = [r.stats["max"] * scale - m for m, r in zip(med, rs, strict=True)]
        ax.errorbar(xs, med, yerr=[lo, hi], capsize=3, marker="o", **kw)

    def save(fig: Any, name: str) -> None:
        path = out_dir / f"{prefix}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    dec = rows_of(rows, "decode")
    if dec:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, color in (("c", "C0"), ("python", "C1"), ("naive_struct", "C2"), ("naive_object", "C3")):
            for layout, style in (("dense", "-"), ("sparse", "--")):
                rs = sorted([r for r in dec if r.variant == name and r.case["layout"] == layout],
                            key=lambda r: r.case["span"])
                if rs:
                    errbar(ax, [r.case["span"] / MiB for r in rs], rs, color=color, linestyle=style,
                           label=f"{name} {layout}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("address space scanned (MiB)")
        ax.set_ylabel("entries decoded per second")
        ax.set_title("1. Decode: entries/s (min–max bars)")
        ax.legend(fontsize=7, ncol=2)
        save(fig, "decode")

    hv = [r for r in rows_of(rows, "harvest") if not r.case["backend"].startswith("emulated")]
    if hv:
        keys = cases(hv, ("backend", "size", "pattern"))
        fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(keys)), 4.5))
        width = 0.27
        for i, (variant, color) in enumerate((("python", "C0"), ("c_ref", "C2"), ("ceiling", "C7"))):
            xs, rs = [], []
            for j, (env, case) in enumerate(keys):
                r = find([x for x in hv if x.env == env], "harvest", variant, **case)
                if r is not None:
                    xs.append(j + (i - 1) * width)
                    rs.append(r)
            if rs:
                med = [r.stats["median"] * 1e3 for r in rs]
                lo = [m - r.stats["min"] * 1e3 for m, r in zip(med, rs, strict=True)]
                hi = [r.stats["max"] * 1e3 - m for m, r in zip(med, rs, strict=True)]
                ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, color=color, label=variant)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{env}\n{c['backend']}\n{human(c['size'])} {c['pattern']}" for env, c in keys],
                           fontsize=6)
        ax.set_yscale("log")
        ax.set_ylabel("harvest time (ms)")
        ax.set_title("2–3. Harvest: library vs C reference vs kernel ceiling")
        ax.legend(fontsize=8)
        save(fig, "harvest")

    sc = rows_of(rows, "scaling")
    if sc:
        envs = sorted({r.env for r in sc})
        fig, axes = plt.subplots(len(envs), 2, figsize=(10, 4 * len(envs)), squeeze=False)
        for row_i, env in enumerate(envs):
            for col, layout in enumerate(("populated", "sparse")):
                ax = axes[row_i][col]
                for k, frac in enumerate(sorted({r.case["fraction"] for r in sc if r.env == env})):
                    for variant, style in (("scan", "-"), ("pagemap", "--")):
                        rs = sorted([r for r in sc if r.env == env and r.variant == variant
                                     and r.case["fraction"] == frac and r.case["layout"] == layout],
                                    key=lambda r: r.case["size"])
                        if rs:
                            errbar(ax, [r.case["size"] / MiB for r in rs], rs, scale=1e3, color=f"C{k}",
                                   linestyle=style, label=f"{variant} {frac:.1%}")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("mapped (MiB)")
                ax.set_ylabel("harvest (ms)")
                ax.set_title(f"4. {env}, {layout}: scan (solid) vs pagemap (dashed)", fontsize=9)
                ax.legend(fontsize=7)
        save(fig, "scaling")

        # The kernel alone: bare PAGEMAP_SCAN vs bare pread, from C (no Python per range).
        fig, axes = plt.subplots(len(envs), 2, figsize=(10, 4 * len(envs)), squeeze=False)
        for row_i, env in enumerate(envs):
            for col, layout in enumerate(("populated", "sparse")):
                ax = axes[row_i][col]
                for k, frac in enumerate(sorted({r.case["fraction"] for r in sc if r.env == env})):
                    for variant, style in (("ceiling_scan", "-"), ("ceiling_pread", "--")):
                        rs = sorted([r for r in sc if r.env == env and r.variant == variant
                                     and r.case["fraction"] == frac and r.case["layout"] == layout],
                                    key=lambda r: r.case["size"])
                        if rs:
                            errbar(ax, [r.case["size"] / MiB for r in rs], rs, scale=1e3, color=f"C{k}",
                                   linestyle=style, label=f"{variant} {frac:.1%}")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("mapped (MiB)")
                ax.set_ylabel("system calls only (ms)")
                ax.set_title(f"4. {env}, {layout}: PAGEMAP_SCAN (solid) vs pread (dashed), from C", fontsize=9)
                ax.legend(fontsize=7)
        save(fig, "scaling-kernel")

    mem = rows_of(rows, "memory")
    if mem:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for k, (env, how) in enumerate(sorted({(r.env, r.variant) for r in mem})):
            rs = sorted([r for r in mem if r.env == env and r.variant == how], key=lambda r: r.case["size"])
            errbar(ax, [r.case["size"] / MiB for r in rs], rs, scale=1 / MiB, color=f"C{k}", label=f"{env} {how}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xlabel("mapping (MiB), same written pages")
        ax.set_ylabel("peak RSS growth of one harvest (MiB)")
        ax.set_title("5. Memory of one harvest")
        ax.legend(fontsize=7)
        save(fig, "memory")

    pc = rows_of(rows, "precopy")
    if pc:
        keys = cases(pc, ("size", "rate", "backend"))
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys)), 4.5))
        for i, (variant, color) in enumerate((("final_freeze", "C0"), ("stop_and_copy", "C3"))):
            xs, rs = [], []
            for j, (_, case) in enumerate(keys):
                r = find(pc, "precopy", variant, **case)
                if r is not None:
                    xs.append(j + (i - 0.5) * 0.4)
                    rs.append(r)
            med = [r.stats["median"] * 1e3 for r in rs]
            lo = [m - r.stats["min"] * 1e3 for m, r in zip(med, rs, strict=True)]
            hi = [r.stats["max"] * 1e3 - m for m, r in zip(med, rs, strict=True)]
            ax.bar(xs, med, 0.4, yerr=[lo, hi], capsize=2, color=color, label=variant)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{human(c['size'])}\n{c['rate']:.0%}/s" for _, c in keys], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("target frozen (ms)")
        ax.set_title("6. Pre-copy: final round vs stop-and-copy")
        ax.legend(fontsize=8)
        save(fig, "precopy")

    tr = rows_of(rows, "tracking")
    if tr:
        fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(tr)), 4.5))
        labels, vals, los, his = [], [], [], []
        for r in tr:
            base = find([x for x in tr if x.env == r.env], "tracking", "untracked", size=r.case["size"],
                        workload=r.case["workload"])
            if base is None:
                continue
            b = base.stats["median"]
            labels.append(f"{r.env}\n{human(r.case['size'])} {r.case['workload']}\n{r.variant}")
            vals.append(r.stats["median"] / b)
            los.append((r.stats["median"] - r.stats["min"]) / b)
            his.append((r.stats["max"] - r.stats["median"]) / b)
        ax.bar(range(len(vals)), vals, yerr=[los, his], capsize=2)
        ax.set_xticks(range(len(vals)))
        ax.set_xticklabels(labels, fontsize=6)
        ax.set_ylabel("throughput / untracked median")
        ax.axhline(1.0, color="k", linewidth=0.5)
        ax.set_title("7. Tracking cost to the target")
        save(fig, "tracking")
    return made


def md_profiles(rows: list[Row]) -> list[str]:
    out: list[str] = []
    for r in rows_of(rows, "harvest"):
        prof = r.extra.get("profile")
        if not prof:
            continue
        out += ["", f"Where `python` spends its time: {r.env} {r.case['backend']} {human(r.case['size'])} "
                f"{r.case['pattern']} ({r.extra.get('ranges_written', '?')} ranges; cProfile, own time per harvest, "
                "top functions; profiling inflates Python-side shares)", ""]
        out += table(["function", "calls", "own ms", "share"],
                     [[p["function"], str(p["calls"]), f"{p['own_seconds'] * 1e3:.3f}", f"{p['share']:.0%}"]
                      for p in prof])
    return out
