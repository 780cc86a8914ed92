"""The spec's section 7 items as scenario files, replayed on the emulator.

Each file under softdirty/emulator/scenarios/ lists operations and what the
kernel shows after them (spec facts, observed [O] or read in source [S],
plus what the real-kernel equivalence test found).  A failing expectation
names the step and the page.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from softdirty.emulator import ScenarioError, emulate_main, load_scenario, replay
from softdirty.emulator.scenario import parse_scenario, scenario_dir

SCENARIOS = sorted(scenario_dir().glob("*.toml"))


def test_scenarios_are_shipped() -> None:
    assert len(SCENARIOS) >= 50, f"expected the section 7 scenarios, found {len(SCENARIOS)}"


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    results = replay(path)
    failed = [f"step {r.index} ({r.op}): " + "; ".join(r.mismatches) for r in results if not r.ok]
    assert not failed, f"{path.name}:\n  " + "\n  ".join(failed)


def test_a_wrong_expectation_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "wrong.toml"
    p.write_text('[scenario]\nkernel = "6.18"\n[[step]]\nop = "mmap"\nname = "a"\npages = 1\n'
                 '[[step]]\nop = "write"\nat = "a"\nexpect.pagemap = { "a" = "" }\n')
    results = replay(p)
    assert results[0].ok and not results[1].ok
    assert "expected ''" in results[1].mismatches[0] and "P,X" in results[1].mismatches[0]


@pytest.mark.parametrize("text, fragment", [
    ("[[step]]\nop = 'teleport'\n", "unknown op"),
    ("[scenario]\nkernel = '5.4'\n[[step]]\nop = 'mmap'\n", "bad kernel profile"),
    ("[scenario]\nprofile = { no_such_field = 1 }\n[[step]]\nop = 'mmap'\n", "unknown profile field"),
    ("[scenario]\nname = 'x'\n", "at least one [[step]]"),
    ("[[step]]\nop = 'mmap'\nexpect.colour = 'red'\n", "unknown expectation"),
    ("junk = 1\n[[step]]\nop = 'mmap'\n", "unknown top-level"),
    ("[[step]\nop = 'mmap'\n", "not valid TOML"),
])
def test_loader_errors_are_clear(tmp_path: Path, text: str, fragment: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(p)
    assert fragment in str(info.value) and "bad.toml" in str(info.value)


def test_bad_step_arguments_are_clear(tmp_path: Path) -> None:
    p = tmp_path / "labels.toml"
    p.write_text("[[step]]\nop = 'write'\nat = 'nowhere+1'\n")
    with pytest.raises(ScenarioError, match="unknown label 'nowhere'"):
        replay(p)
    with pytest.raises(ScenarioError, match="unknown mmap flag"):
        from softdirty.emulator.scenario import run_scenario

        run_scenario(parse_scenario({"step": [{"op": "mmap", "pages": 1, "flags": "private|sparkly"}]}))


def test_emulate_cli_prints_entries(capsys: pytest.CaptureFixture[str]) -> None:
    path = scenario_dir() / "04-anon-write.toml"
    assert emulate_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "step 3 write" in out and "{P,X,D}" in out and "all expectations held" in out


def test_emulate_cli_fails_on_a_broken_expectation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "wrong.toml"
    p.write_text("[[step]]\nop = 'mmap'\nname = 'a'\npages = 1\nexpect.pagemap = { 'a' = 'P' }\n")
    assert emulate_main([str(p)]) == 1
    assert "FAIL" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense")
    assert emulate_main([str(bad)]) == 2
    assert "bad.toml" in capsys.readouterr().err
