"""8. The emulator: runs benchmarks/bench_emulator.py (written with the emulator) if it is there.

Its command line is its own; we ask its ``--help`` which of ``--quick``,
``--full`` and ``--json PATH`` it takes and pass those that fit (``--full``:
a pagemap read of 1 GiB fully populated, 262,144 entries, and 10^6 write
faults; ``--quick``: a quarter of that; the smoke test's tiny mode: 64 MiB
and 20,000 faults through ``--gib``/``--faults``/``--repeat``).  Rows in our
format (a JSON object with ``rows`` of ``section/case/variant/metric/samples``)
are merged into the results; anything else is kept as it printed it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Context, Row

SECTION = "emulator"
SCRIPT = Path(__file__).resolve().parent / "bench_emulator.py"


def run(ctx: Context) -> dict[str, Any] | None:
    res = ctx.results
    if not SCRIPT.exists():
        res.skip(SECTION, f"{SCRIPT.name} is not in benchmarks/ (the emulator's own benchmark)")
        return None
    root = SCRIPT.parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    helptext = subprocess.run([ctx.python, str(SCRIPT), "--help"], capture_output=True, text=True, cwd=root,
                              env=env, timeout=120).stdout
    args: list[str] = []
    if ctx.plan.mode == "tiny" and all(f"--{o}" in helptext for o in ("gib", "faults", "repeat")):
        args += ["--gib", "0.0625", "--faults", "20000", "--repeat", "2"]  # the smoke test: code paths only
    else:
        mode = "quick" if ctx.plan.mode in ("quick", "tiny") else "full"
        if f"--{mode}" in helptext:
            args.append(f"--{mode}")
    out_json = None
    if "--json" in helptext:
        fd, name = tempfile.mkstemp(prefix="bench-emulator-", suffix=".json")
        os.close(fd)
        out_json = Path(name)
        args += ["--json", str(out_json)]
    ctx.log(f"emulator: {SCRIPT.name} {' '.join(args)}")
    try:
        proc = subprocess.run([ctx.python, str(SCRIPT), *args], capture_output=True, text=True, cwd=root, env=env,
                              timeout=1800)
        if proc.returncode != 0:
            res.skip(SECTION, f"{SCRIPT.name} failed with status {proc.returncode}: "
                              f"{(proc.stderr or proc.stdout).strip()[-400:]}")
            return None
        data: Any = None
        if out_json is not None and out_json.stat().st_size:
            data = json.loads(out_json.read_text())
    finally:
        if out_json is not None:
            out_json.unlink(missing_ok=True)
    merged = 0
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        for r in data["rows"]:
            try:
                res.rows.append(Row(section=SECTION, env=ctx.env, case=dict(r.get("case", {})),
                                    variant=str(r["variant"]), metric=str(r["metric"]),
                                    samples=[float(x) for x in r["samples"]]))
                merged += 1
            except (KeyError, TypeError, ValueError):
                continue
    for line in proc.stdout.splitlines():
        ctx.log(f"  {line}")
    return {"args": args, "text": proc.stdout, "json": data if merged == 0 else None, "rows_merged": merged}
