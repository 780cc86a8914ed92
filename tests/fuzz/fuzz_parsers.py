"""Coverage-guided fuzzing (atheris/libFuzzer) of the parsers that take outside input.

    PYTHONPATH=. python tests/fuzz/fuzz_parsers.py TARGET [libFuzzer options, e.g. -runs=20000 -max_len=4096]

TARGET: ``maps`` (softdirty.maps.parse_maps), ``entry`` (softdirty.pagemap.Entry.decode and
from_bytes), ``image`` (softdirty.dump.load_image on a directory built from the input) or
``scenario`` (softdirty.emulator.scenario: load, parse and replay a scenario file).  Each must
answer with a result or its clear error (ValueError subclasses, our typed errors, ScenarioError);
anything else propagates, and libFuzzer reports it as a crash (non-zero exit, a crash-* file
under -artifact_prefix).  Without -runs= it fuzzes until stopped.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from softdirty import dump
    from softdirty.emulator import scenario
    from softdirty.errors import SoftDirtyError
    from softdirty.maps import parse_maps
    from softdirty.pagemap import Entry

CLEAR = (ValueError, SoftDirtyError)  # ScenarioError and ImageError are ValueErrors
SCRATCH = tempfile.mkdtemp(prefix="softdirty-fuzz-")


def fuzz_maps(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    try:
        vmas = parse_maps(text)
    except CLEAR:
        return
    for v in vmas:
        assert v.start <= v.end, v


def fuzz_entry(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    raw = fdp.ConsumeInt(9)  # 72 bits, sign included: some out of u64 range
    try:
        e = Entry.decode(raw)
    except CLEAR:
        assert not 0 <= raw < 2**64, f"a valid entry {raw:#x} was refused"
    else:
        assert e.encode() == raw
        repr(e)
    rest = fdp.ConsumeBytes(16)
    try:
        Entry.from_bytes(rest)
    except CLEAR:
        assert len(rest) != 8


IMAGE_NAMES = ["COMPLETE", "img/index.json", "img/round-0.bin", "img/round-1.bin", "img"]


def fuzz_image(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    with tempfile.TemporaryDirectory(dir=SCRATCH) as where:
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            name = IMAGE_NAMES[fdp.ConsumeIntInRange(0, len(IMAGE_NAMES) - 1)]
            if fdp.ConsumeBool():
                body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
            else:  # something index-like: JSON with fuzzed values
                body = json.dumps({"format": fdp.ConsumeUnicode(8), "version": fdp.ConsumeInt(4),
                                   "page_size": fdp.ConsumeInt(4),
                                   "runs": [{"vaddr": fdp.ConsumeInt(8), "nr_pages": fdp.ConsumeInt(8),
                                             "round": fdp.ConsumeInt(2), "offset": fdp.ConsumeInt(8)}],
                                   "rounds": [fdp.ConsumeUnicode(12)]}).encode()
            path = os.path.join(where, name)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(body)
            except (IsADirectoryError, NotADirectoryError, FileExistsError):
                continue
        try:
            dump.load_image(where, check_data=fdp.ConsumeBool()).close()
        except CLEAR:
            pass


def fuzz_scenario(data: bytes) -> None:
    path = os.path.join(SCRATCH, "scenario.toml")
    with open(path, "wb") as f:
        f.write(data)
    try:
        results = scenario.replay(path)
    except scenario.ScenarioError:
        return
    assert isinstance(results, list)


TARGETS = {"maps": fuzz_maps, "entry": fuzz_entry, "image": fuzz_image, "scenario": fuzz_scenario}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options, e.g. -runs=10000]")
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0]] + argv[2:], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
