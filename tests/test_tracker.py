"""The tracker layer: back-end choice, epochs, handing failed harvests back, causes, sampling."""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator
from typing import Any

import pytest
from sdtargets import PAGE, Writer

import softdirty
from softdirty import Cause
from softdirty import tracker as tracker_mod
from softdirty.answer import Answer
from softdirty.backends.base import Backend, Harvest
from softdirty.causes import _or_flags, huge_candidates, moved_vmas, untracked_reason
from softdirty.dirtyset import DirtySet
from softdirty.errors import Unsupported
from softdirty.maps import Vma
from softdirty.sampling import Sampler, rates

BASE = 0x7F0000000000
W = int(Cause.WRITTEN)


# -- fakes ------------------------------------------------------------------------------


class FakeProcess:
    """Just enough of a ProcessInterface for the tracker (no kernel behind it)."""

    def __init__(self, sd: bool = True, uffd: bool = False) -> None:
        self.answers = {"soft_dirty": Answer(sd, "sd says so"), "uffd_wp_async": Answer(uffd, "uffd says so"),
                        "pagemap_scan": Answer(False, "no")}
        self.vmas = [Vma(BASE, BASE + 64 * PAGE, "rw-p")]
        self.closed = False

    @property
    def pid(self) -> int:
        return 4242

    def feature(self, name: str) -> Answer:
        return self.answers.get(name, Answer(False, "not faked"))

    def read_maps(self) -> list[Vma]:
        return list(self.vmas)

    def close(self) -> None:
        self.closed = True

    # The rest of ProcessInterface: never called by these tests.
    def read_pagemap(self, offset: int, count: int) -> bytes:
        raise AssertionError("not used")

    def pagemap_fileno(self) -> None:
        return None

    def write_clear_refs(self, value: bytes) -> int:
        raise AssertionError("not used")

    def pagemap_scan_ioctl(self, start: int, end: int, **kw: int) -> Any:
        raise AssertionError("not used")

    def ensure_alive(self) -> None:
        pass

    def mm_gone_error(self) -> Any:
        raise AssertionError("not used")

    def open_uffd(self, features: int) -> Any:
        raise AssertionError("not used")


class ScriptedBackend(Backend):
    """Reports the pages written (``write()``) since the last reset; can re-arm on harvest."""

    def __init__(self, proc: Any, rearms: bool = False, name: str = "scripted") -> None:
        self.proc = proc
        self.name = name
        self._rearms = rearms
        self.written: set[int] = set()
        self.resets = 0
        self.fail_next = False

    @property
    def rearms_on_harvest(self) -> bool:
        return self._rearms

    def write(self, *pages: int) -> None:
        self.written.update(pages)

    def reset(self) -> None:
        self.resets += 1
        self.written.clear()

    def harvest(self) -> Harvest:
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "injected harvest failure")
        out = array("Q")
        for p in sorted(self.written):
            out.extend((BASE + p * PAGE, BASE + (p + 1) * PAGE, W))
        if self._rearms:
            self.written.clear()
        return Harvest(out, self.proc.read_maps())


def pages(ds: DirtySet) -> set[int]:
    return {(a - BASE) // PAGE for r in ds for a in range(r.start, r.end, PAGE)}


def make(rearms: bool = False, exact: bool = False) -> tuple[softdirty.Tracker, ScriptedBackend]:
    proc = FakeProcess()
    backend = ScriptedBackend(proc, rearms=rearms)
    return softdirty.Tracker(proc, backend, owns_process=False, exact=exact), backend  # type: ignore[arg-type]


# -- epochs -----------------------------------------------------------------------------


def test_epochs_are_numbered_and_a_rearming_harvest_starts_the_next() -> None:
    t, b = make(rearms=True)
    assert t.epoch == 0
    t.reset()
    assert t.epoch == 1
    b.write(1, 2)
    first = t.harvest()
    assert (first.epoch, first.epochs, t.epoch) == (1, (1,), 2)
    assert pages(first) == {1, 2}
    b.write(3)
    second = t.harvest()
    assert (second.epoch, pages(second)) == (2, {3})


def test_a_harvest_that_does_not_rearm_keeps_the_epoch() -> None:
    t, b = make(rearms=False)
    t.reset()
    b.write(1)
    assert t.harvest().epoch == 1 and t.epoch == 1
    assert b.resets == 1
    t.harvest(reset=True)  # read, then clear: the next epoch starts
    assert t.epoch == 2 and b.resets == 2


def test_exact_mode_defaults_to_harvest_and_reset() -> None:
    t, b = make(rearms=False, exact=True)
    t.reset()
    b.write(5)
    got = t.harvest()  # a fake process is not live: nothing to freeze, but it still resets
    assert pages(got) == {5} and b.resets == 2 and t.epoch == 2
    assert any("exact" in n for n in got.notes)
    b.write(6)
    assert pages(t.harvest()) == {6}


def test_reset_false_on_a_rearming_backend_is_refused() -> None:
    t, _ = make(rearms=True)
    with pytest.raises(ValueError, match="re-arms"):
        t.harvest(reset=False)


# -- a failed consumer loses nothing ------------------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failing_consumer_hands_its_harvest_back(error: type[BaseException]) -> None:
    t, b = make(rearms=True)
    t.reset()
    b.write(1, 2)
    with pytest.raises(error):
        with t.harvest() as dirty:
            assert pages(dirty) == {1, 2}
            raise error("consumer failed")
    assert t.pending is not None and pages(t.pending) == {1, 2}
    b.write(7)
    merged = t.harvest()
    assert pages(merged) == {1, 2, 7}  # the back end had re-armed: without the merge 1 and 2 were gone
    assert merged.epochs == (1, 2) and merged.epoch == 2
    assert t.pending is None
    assert pages(t.harvest()) == set()


def test_a_successful_consumer_is_not_merged_again() -> None:
    t, b = make(rearms=True)
    t.reset()
    b.write(1)
    with t.harvest() as dirty:
        assert pages(dirty) == {1}
    assert t.pending is None
    assert pages(t.harvest()) == set()


def test_handed_back_harvests_accumulate_until_a_harvest_succeeds() -> None:
    t, b = make(rearms=True)
    t.reset()
    for p in (1, 2):
        b.write(p)
        with pytest.raises(RuntimeError), t.consume():
            raise RuntimeError
    b.fail_next = True
    with pytest.raises(OSError):
        t.harvest()
    assert t.pending is not None and pages(t.pending) == {1, 2}  # a failed harvest keeps them
    got = t.harvest()
    assert pages(got) == {1, 2} and got.epochs == (1, 2, 3)


def test_requeue_and_drop_pending() -> None:
    t, b = make(rearms=True)
    t.reset()
    b.write(4)
    got = t.harvest()
    t.requeue(got)
    t.drop_pending()
    assert pages(t.harvest()) == set()
    with pytest.raises(TypeError):
        t.requeue([1, 2])  # type: ignore[arg-type]


def test_pending_survives_a_reset() -> None:
    t, b = make(rearms=False)
    t.reset()
    b.write(3)
    with pytest.raises(ValueError), t.harvest():
        raise ValueError
    t.reset()  # a checkpoint does not throw away what a consumer never got
    assert pages(t.harvest()) == {3}


def test_harvested_is_a_dirtyset() -> None:
    t, b = make(rearms=True)
    t.reset()
    b.write(2)
    got = t.harvest()
    assert isinstance(got, DirtySet) and BASE + 2 * PAGE in got and got.page_count == 1
    assert got.to_dict()["epochs"] == [1]


# -- choosing a back end ------------------------------------------------------------------


def fake_factories(monkeypatch: pytest.MonkeyPatch, fail: dict[str, str] | None = None) -> None:
    def factory(name: str) -> Any:
        def make_backend(proc: Any, **options: Any) -> Backend:
            if fail and name in fail:
                raise Unsupported(f"the {name} back end", fail[name])
            return ScriptedBackend(proc, rearms=name == "uffd", name=name)
        return make_backend

    monkeypatch.setattr(tracker_mod, "_FACTORIES", {"softdirty": factory("softdirty"), "uffd": factory("uffd")})


def test_auto_prefers_softdirty_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_factories(monkeypatch)
    t = softdirty.track(FakeProcess(sd=True, uffd=True))
    assert t.backend_name == "softdirty" and "sd says so" in t.why


def test_auto_falls_back_to_uffd_and_names_what_it_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_factories(monkeypatch)
    t = softdirty.track(FakeProcess(sd=False, uffd=True))
    assert t.backend_name == "uffd"
    assert "uffd says so" in t.why and "softdirty: sd says so" in t.why


def test_auto_passes_over_a_backend_that_fails_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_factories(monkeypatch, fail={"softdirty": "clear_refs refused"})
    t = softdirty.track(FakeProcess(sd=True, uffd=True))
    assert t.backend_name == "uffd" and "clear_refs refused" in t.why


def test_auto_with_nothing_working_is_unsupported_with_every_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_factories(monkeypatch, fail={"uffd": "injection refused"})
    with pytest.raises(Unsupported) as info:
        softdirty.track(FakeProcess(sd=False, uffd=True))
    assert "softdirty: sd says so" in info.value.reason and "uffd: injection refused" in info.value.reason


def test_a_real_pid_never_falls_back_to_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    from softdirty.process import LiveProcess

    monkeypatch.setattr(LiveProcess, "feature", lambda self, name: Answer(False, f"{name} faked off"))
    with pytest.raises(Unsupported) as info:
        softdirty.track(os.getpid())
    assert "soft_dirty faked off" in info.value.reason and "uffd_wp_async faked off" in info.value.reason


def test_exact_must_be_a_bool() -> None:
    with pytest.raises(TypeError):
        softdirty.track(FakeProcess(), exact="yes")  # type: ignore[arg-type]


# -- causes ------------------------------------------------------------------------------


def vma(start: int, pages: int, perms: str = "rw-p", path: str = "", inode: int = 0, offset: int = 0) -> Vma:
    return Vma(start, start + pages * PAGE, perms, offset, "08:01" if inode else "00:00", inode, path)


def test_moved_file_mapping_is_sure_and_anonymous_is_a_guess() -> None:
    f_old, f_new = vma(BASE, 4, path="/lib/x", inode=9), vma(BASE + (1 << 30), 4, path="/lib/x", inode=9)
    a_old, a_new = vma(BASE + (2 << 30), 8), vma(BASE + (3 << 30), 8)
    stay = vma(BASE + (4 << 30), 2)
    got = moved_vmas([f_old, a_old, stay], [f_new, a_new, stay])
    assert (f_new, True) in got and (a_new, False) in got and all(v != stay for v, _ in got)
    assert moved_vmas([stay], [stay]) == []


def test_a_file_mapping_of_another_range_is_not_moved() -> None:
    old = vma(BASE, 4, path="/lib/x", inode=9, offset=0)
    new = vma(BASE + (1 << 30), 4, path="/lib/x", inode=9, offset=64 * PAGE)
    assert moved_vmas([old], [new]) == []


def test_untracked_reasons() -> None:
    assert "device" in (untracked_reason(vma(BASE, 4, "rw-s", path="/dev/dri/card0", inode=5)) or "")
    assert untracked_reason(vma(BASE, 4, "r--s", path="/dev/dri/card0", inode=5)) is None  # not writable
    assert untracked_reason(vma(BASE, 4, "rw-s", path="/dev/zero", inode=5)) is None  # shared anonymous
    assert untracked_reason(vma(BASE, 4)) is None


def test_or_flags_splits_at_the_edges() -> None:
    t = array("Q", [BASE, BASE + 4 * PAGE, W])
    out = _or_flags(t, BASE + PAGE, BASE + 2 * PAGE, int(Cause.MOVED))
    assert list(out) == [BASE, BASE + PAGE, W, BASE + PAGE, BASE + 2 * PAGE, W | int(Cause.MOVED),
                         BASE + 2 * PAGE, BASE + 4 * PAGE, W]


def test_huge_candidates_are_whole_aligned_blocks_inside_one_vma() -> None:
    h = 2 << 20
    start = 0x7F0000000000
    t = array("Q", [start + PAGE, start + 3 * h, W])
    v = Vma(start, start + 4 * h, "rw-p")
    assert huge_candidates(t, [v]) == [start + h, start + 2 * h]
    assert huge_candidates(t, [Vma(start, start + h + h // 2, "rw-p")]) == []


def test_emulated_mremap_is_reported_moved() -> None:
    emulator = pytest.importorskip("softdirty.emulator")
    p = emulator.EmulatedProcess(emulator.get_profile("6.12", soft_dirty=True))
    a = p.mmap(0, 16 * PAGE, 3, 0x22)
    p.write(a, b"x")
    with softdirty.track(p, backend="softdirty", exact=True) as t:
        t.reset()
        p.write(a + 3 * PAGE, b"y")
        first = t.harvest()
        assert [(r.start - a, r.end - a, r.flags) for r in first] == [(3 * PAGE, 4 * PAGE, Cause.WRITTEN)]
        b = p.mremap(a, 16 * PAGE, 16 * PAGE, 3, a + (1 << 30))
        moved = t.harvest()
        assert moved.ranges and all(r.flags & Cause.MOVED and b <= r.start < b + 16 * PAGE for r in moved)
        assert any("moved" in n for n in moved.notes)


def test_emulated_populated_new_mapping_is_new_not_written() -> None:
    """A VMA mapped since the checkpoint reads wholly soft-dirty (VM_SOFTDIRTY); all of it present
    (MAP_POPULATE) must still be NEW_MAPPING, not WRITTEN, while an old VMA's write stays WRITTEN."""
    emulator = pytest.importorskip("softdirty.emulator")
    p = emulator.EmulatedProcess(emulator.get_profile("6.12", soft_dirty=True))
    a = p.mmap(0, 16 * PAGE, 3, 0x22)
    with softdirty.track(p, backend="softdirty") as t:
        t.reset()
        p.write(a, b"x")
        b = p.mmap(a + (1 << 30), 8 * PAGE, 3, 0x22 | 0x10 | 0x8000)  # MAP_FIXED (no merge), MAP_POPULATE
        got = t.harvest()
        assert (a, a + PAGE, Cause.WRITTEN) in [(r.start, r.end, r.flags) for r in got]
        new = [r for r in got if b <= r.start < b + 8 * PAGE]
        assert sum(r.end - r.start for r in new) == 8 * PAGE
        assert all(r.flags == Cause.NEW_MAPPING for r in new), new
        assert any("mapped since the checkpoint" in n for n in got.notes)


# -- live, uffd (the host) ------------------------------------------------------------------


@pytest.fixture
def writer() -> Iterator[Writer]:
    with Writer(pages=64, writers=0) as w:
        yield w


@pytest.mark.uffd_wp_async
def test_live_failing_consumer_loses_nothing(writer: Writer) -> None:
    from softdirty import vmio

    target = writer.addr + 5 * PAGE
    with softdirty.track(writer.pid, backend="uffd") as t:
        t.reset()
        vmio.write(writer.pid, target, b"\x01")
        with pytest.raises(RuntimeError), t.harvest() as dirty:
            assert target in dirty
            raise RuntimeError("the copy failed")
        again = t.harvest()  # uffd re-armed at the first harvest: only the merge can report it
        assert target in again and again.flags_at(target) & Cause.WRITTEN
        assert len(again.epochs) == 2
        assert target not in t.harvest()


@pytest.mark.uffd_wp_async
def test_live_auto_and_exact_on_uffd(writer: Writer) -> None:
    with softdirty.track(writer.pid, exact=True) as t:
        assert t.backend_name == "uffd"  # the host has no soft-dirty
        assert "exact by construction" in t.why and "softdirty:" in t.why
        t.reset()
        assert t.harvest().epoch == 1 and t.epoch == 2


@pytest.mark.uffd_wp_async
def test_live_sample_rates_per_vma() -> None:
    with Writer(pages=256, writers=1, pause_every=64) as w, softdirty.track(w.pid) as t:
        sampler = Sampler(t)
        sample = sampler.sample(0.2)
        assert sample.pages == sample.dirty.page_count and sample.pages > 0
        assert sample.pages_per_s == pytest.approx(sample.pages / sample.seconds)
        assert sample.mb_per_s == pytest.approx(sample.pages * PAGE / sample.seconds / 1e6)
        buffer = [r for r in sample.vmas if r.vma.start <= w.addr < r.vma.end]
        assert buffer and buffer[0].pages > 0  # the writer's buffer is among the VMAs written
        assert buffer[0].pages_per_s == pytest.approx(buffer[0].pages / sample.seconds)
        assert [r.pages for r in sample.vmas] == sorted((r.pages for r in sample.vmas), reverse=True)
        assert sum(r.pages for r in sample.vmas) <= sample.pages
        nxt = sampler.sample(0.1)
        assert nxt.epoch == sample.epoch + 1 and nxt.start >= sample.start + sample.seconds


# -- sampling arithmetic ------------------------------------------------------------------


def test_sampler_measures_from_the_epoch_start_with_a_fake_clock() -> None:
    t, b = make(rearms=True)
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    s = Sampler(t, clock=lambda: now[0], sleep=sleep)
    s.start()
    b.write(*range(10))
    got = s.sample(2.0)
    assert slept == [2.0] and got.seconds == 2.0 and got.pages == 10
    assert got.pages_per_s == 5.0 and got.bytes_per_s == 10 * PAGE / 2.0
    now[0] += 0.5  # time spent elsewhere counts: the epoch was running
    b.write(1)
    got = s.sample(1.0)
    assert slept[-1] == 0.5 and got.seconds == 1.0 and got.pages == 1


def test_rates_rejects_an_empty_interval() -> None:
    with pytest.raises(ValueError):
        rates(DirtySet(), 0.0)


def test_a_harvest_that_fails_after_the_clear_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from softdirty import causes

    proc = FakeProcess()
    backend = ScriptedBackend(proc, rearms=True, name="softdirty")  # the tracker annotates soft-dirty harvests
    t = softdirty.Tracker(proc, backend, owns_process=False)  # type: ignore[arg-type]
    t.reset()
    backend.write(4)

    def broken(*a: object, **kw: object) -> object:
        raise OSError(5, "annotation failed")

    monkeypatch.setattr(causes, "annotate", broken)
    with pytest.raises(OSError, match="annotation"):
        t.harvest()
    monkeypatch.undo()
    assert t.epoch == 2  # the back end had re-armed: the epoch did end
    got = t.harvest()
    assert pages(got) == {4} and got.epochs == (1, 2)
