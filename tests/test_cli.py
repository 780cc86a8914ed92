"""Every ``softdirty`` command, run as ``python -m softdirty ...``: output and exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sdtargets import PAGE, Writer

from softdirty import vmio

uffd = pytest.mark.uffd_wp_async
COMMANDS = ("probe", "dirty", "watch", "dump", "verify", "emulate", "demo")


def sd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "softdirty", *args], capture_output=True, text=True,
                          timeout=timeout)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("softdirty: "), lines[0]
    return lines[0]


# -- help and usage -------------------------------------------------------------------------


def test_help_has_examples_and_exit_codes() -> None:
    r = sd("--help")
    assert r.returncode == 0
    assert "examples:" in r.stdout and "exit codes:" in r.stdout
    for cmd in COMMANDS:
        assert cmd in r.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help_with_examples(cmd: str) -> None:
    r = sd(cmd, "--help")
    assert r.returncode == 0 and "examples:" in r.stdout and f"softdirty {cmd}" in r.stdout


@pytest.mark.parametrize("args", [(), ("nope",), ("dirty", "abc"), ("dirty", "0"), ("watch",),
                                  ("dirty", "1", "--", "ls"), ("dump", "1")])
def test_usage_errors_exit_2_with_one_line(args: tuple[str, ...]) -> None:
    r = sd(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "error" in one_error_line(r)


# -- probe ----------------------------------------------------------------------------------


def test_probe_text_and_json() -> None:
    r = sd("probe")
    assert r.returncode == 0 and "best back end:" in r.stdout and "soft_dirty" in r.stdout
    j = sd("probe", "--json")
    caps = json.loads(j.stdout)
    assert j.returncode == 0 and {"soft_dirty", "uffd_wp_async", "best_backend"} <= set(caps)
    assert caps["kernel"] == os.uname().release


# -- dirty ------------------------------------------------------------------------------------


def test_dirty_of_a_dead_pid_is_exit_3_with_one_line() -> None:
    pid = dead_pid()
    r = sd("dirty", str(pid), "--interval", "0.1")
    assert r.returncode == 3 and str(pid) in one_error_line(r)
    assert r.stdout == ""


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where: str) -> None:
    args = ["dirty", str(dead_pid()), "--interval", "0.1"]
    r = sd("--debug", *args) if where == "before" else sd(*args, "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "NoSuchProcess" in r.stderr


@uffd
def test_dirty_json_and_table() -> None:
    with Writer(pages=128, writers=1, pause_every=32) as w:
        r = sd("dirty", str(w.pid), "--interval", "0.3", "--json")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert got["pid"] == w.pid and got["backend"] == "uffd" and got["pages"] > 0
        assert any(s <= w.addr + PAGE < e for s, e, _ in got["ranges"])  # the writer's pages are there
        assert all(set(causes) <= {"WRITTEN", "NEW_MAPPING", "HUGE", "MOVED", "UNTRACKED", "PROTECTION_LOST"}
                   for _, _, causes in got["ranges"])
        t = sd("dirty", str(w.pid), "--interval", "0.2", "--ranges", "3")
        assert t.returncode == 0 and f"PID {w.pid}, back end uffd" in t.stdout and "pages/s" in t.stdout


# -- watch ------------------------------------------------------------------------------------


@uffd
def test_watch_pid_json_lines() -> None:
    with Writer(pages=128, writers=1, pause_every=32) as w:
        r = sd("watch", str(w.pid), "--count", "3", "--interval", "0.2", "--json")
        assert r.returncode == 0, r.stderr
        lines = [json.loads(line) for line in r.stdout.splitlines()]
        assert len(lines) == 3
        assert [x["epoch"] for x in lines] == [1, 2, 3]
        for x in lines:
            assert x["pid"] == w.pid and x["pages_per_s"] == pytest.approx(x["pages"] / x["seconds"], rel=1e-3)
            assert len(x["vmas"]) <= 3
        assert sum(x["pages"] for x in lines) > 0


@uffd
def test_watch_a_command_prints_a_table_and_stops_it() -> None:
    prog = "import time\nb = bytearray(1 << 22)\nwhile True:\n    b[::4096] = b'x' * 1024\n    time.sleep(0.01)\n"
    r = sd("watch", "--count", "2", "--interval", "0.2", "--", sys.executable, "-c", prog)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert "pages/s" in out[1] and "MB/s" in out[1]
    rows = out[2:]
    assert len(rows) == 2 and all(int(row.split()[2].replace(",", "")) > 0 for row in rows)
    assert "stopped the command" in r.stderr


@uffd
def test_watch_a_command_that_ends_by_itself() -> None:
    prog = ("import time\nb = bytearray(1 << 20)\n"
            "for _ in range(60):\n    b[::4096] = b'y' * 256\n    time.sleep(0.01)\n")
    r = sd("watch", "--interval", "0.1", "--json", "--", sys.executable, "-c", prog)
    assert r.returncode == 0, r.stderr
    assert "exited with status 0" in r.stderr  # it ended by itself: no --count needed
    samples = [json.loads(line) for line in r.stdout.splitlines()]
    assert samples and sum(x["pages"] for x in samples) > 0


def test_watch_a_command_that_cannot_start() -> None:
    r = sd("watch", "--count", "1", "--", "/nonexistent/program")
    assert r.returncode == 1 and "cannot run" in one_error_line(r)


@uffd
def test_watch_plot(tmp_path: Path) -> None:
    out = tmp_path / "rate.png"
    with Writer(pages=64, writers=1, pause_every=32) as w:
        r = sd("watch", str(w.pid), "--count", "2", "--interval", "0.1", "--plot", str(out))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r.returncode == 5 and "matplotlib" in one_error_line(r)
        assert not out.exists()
        return
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- dump and verify --------------------------------------------------------------------------


@uffd
def test_dump_verify_and_a_mismatch(tmp_path: Path) -> None:
    d = tmp_path / "img"
    with Writer(pages=256, writers=1, pause_every=64) as w:
        r = sd("dump", str(w.pid), str(d), "--leave-stopped", "--json")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["pid"] == w.pid and report["rounds"][-1]["kind"] == "final"
        assert report["stop_and_copy_seconds"] > 0 and report["final_freeze_seconds"] > 0
        assert set(w.task_states().values()) == {"T"}  # left in a group stop, as asked
        v = sd("verify", str(d), str(w.pid))
        assert v.returncode == 0, v.stdout + v.stderr
        assert "matches" in v.stdout
        vmio.write(w.pid, w.addr + 9 * PAGE, b"changed")
        bad = sd("verify", str(d), str(w.pid), "--json")
        assert bad.returncode == 6
        got = json.loads(bad.stdout)
        assert got["mismatches"] == [[w.addr + 9 * PAGE, w.addr + 10 * PAGE]]
        text = sd("verify", str(d), str(w.pid))
        assert text.returncode == 6 and "DIFFERS" in text.stdout and "mismatching: 1 ranges" in text.stdout
        os.kill(w.pid, signal.SIGCONT)
        count = w.stores()
        w.wait_for(lambda: w.stores() > count, "the writer to resume after SIGCONT")
        again = sd("dump", str(w.pid), str(d), "--quiet")
        assert again.returncode == 1 and "force" in one_error_line(again)
        table = sd("dump", str(w.pid), str(d), "--force", "--quiet", "--max-rounds", "2")
        assert table.returncode == 0, table.stderr
        assert "stop-and-copy" in table.stdout and "final round froze the process" in table.stdout


def test_verify_without_an_image(tmp_path: Path) -> None:
    r = sd("verify", str(tmp_path), "1")
    assert r.returncode == 1 and "no complete image" in one_error_line(r)


def test_dump_of_a_dead_pid(tmp_path: Path) -> None:
    r = sd("dump", str(dead_pid()), str(tmp_path / "img"))
    assert r.returncode == 3 and one_error_line(r)


# -- emulate and demo --------------------------------------------------------------------------


def test_emulate_a_missing_scenario_is_one_error_line(tmp_path: Path) -> None:
    r = sd("emulate", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "cannot read" in one_error_line(r)


def test_emulate_replays_a_shipped_scenario_and_reports_a_broken_one(tmp_path: Path) -> None:
    from softdirty.emulator import scenario_dir

    r = sd("emulate", "-q", str(scenario_dir() / "04-anon-write.toml"))
    assert r.returncode == 0 and "all expectations held" in r.stdout, r.stdout + r.stderr
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[[step]]\nop = 'mmap'\nname = 'a'\npages = 1\nexpect.pagemap = { 'a' = 'P' }\n")
    r = sd("emulate", str(wrong))
    assert r.returncode == 6 and "FAIL" in r.stdout, r.stdout + r.stderr


@uffd
def test_demo_runs_and_watches() -> None:
    r = sd("demo", "--rounds", "2", "--interval", "0.2", "--size-mib", "8")
    assert r.returncode == 0, r.stderr
    assert "workload PID" in r.stdout and "pages/s" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.strip().endswith(tuple("0123456789")) or "," in line]
    assert len([line for line in r.stdout.splitlines() if line.lstrip()[:1].isdigit()]) == 2, rows


# -- progress bars (in-process: they draw only on a terminal) ------------------------------------


class _Tty:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_progress_bars_draw_with_tqdm_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm", reason="tqdm is the optional 'progress' extra")
    from softdirty import cli

    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    with cli._progress(True) as update:
        assert update is not None
        update(0, "full", 0, 1 << 20)
        update(0, "full", 1 << 20, 1 << 20)
        update(1, "dirty", 4096, 4096)
    assert "round 0 (full)" in tty.text and "round 1 (dirty)" in tty.text


def test_progress_falls_back_silently_without_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from softdirty import cli

    real = importlib.import_module

    def no_tqdm(name: str, *a: object) -> object:
        if name == "tqdm":
            raise ImportError("No module named 'tqdm'")
        return real(name, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib, "import_module", no_tqdm)
    with cli._progress(True) as update:
        assert update is None
    with cli._progress(False) as update:
        assert update is None
