"""``softdirty.track()``: one tracker over any back end and any process.

Epochs
------
An *epoch* is the time between two checkpoints.  ``tracker.epoch`` is the
number of the epoch in progress: 0 until the first checkpoint, then 1, 2, ...
:meth:`Tracker.reset` starts a new epoch; so does a harvest that re-arms
(``harvest(reset=True)``).  Every harvest reports the epoch it closes or
looks into (``dirty.epoch``) and, when earlier harvests were handed back
(see below), every epoch it covers (``dirty.epochs``).

Whether ``harvest()`` re-arms, by default:

* ``uffd``: always: harvest and re-arm are one atomic pass (``reset=False``
  is refused);
* ``softdirty`` with ``exact=True``: yes: with every thread of the target
  stopped, read the soft-dirty bits, clear them (``clear_refs``), let the
  target go.  No write can fall between the read and the clear, so
  consecutive epochs chain without a gap;
* ``softdirty`` without ``exact``: no: the harvest only reads, and the next
  harvest reports the same pages plus new ones until :meth:`reset`.
  ``harvest(reset=True)`` reads then clears with the target running: a
  write landing between the two is lost (that is what ``exact`` is for).

A failed consumer loses nothing
-------------------------------
The value ``harvest()`` returns is a :class:`DirtySet` that is also a
context manager::

    with tracker.harvest() as dirty:
        copy(dirty)          # if this raises, ``dirty`` goes back to the tracker

If the block raises, the harvest is handed back (:meth:`Tracker.requeue`)
and merged (``DirtySet.union``) into the next harvest, whatever the back end
re-armed meanwhile.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from softdirty import causes
from softdirty.backends.base import Backend
from softdirty.dirtyset import DirtySet
from softdirty.errors import Unsupported
from softdirty.freeze import Freeze
from softdirty.maps import Vma
from softdirty.process import LiveProcess, ProcessInterface, check_pid

if TYPE_CHECKING:
    from softdirty.sampling import Sample

BACKENDS = ("auto", "softdirty", "uffd")
AUTO_ORDER = ("softdirty", "uffd")  # as softdirty.probe() ranks them
_FEATURE = {"softdirty": "soft_dirty", "uffd": "uffd_wp_async"}


def _softdirty(proc: ProcessInterface, **options: Any) -> Backend:
    from softdirty.backends.softdirty import SoftDirtyBackend

    return SoftDirtyBackend(proc, **options)


def _uffd(proc: ProcessInterface, **options: Any) -> Backend:
    from softdirty.backends.uffd import UffdBackend

    backend: Backend = UffdBackend(proc, **options)
    return backend


_FACTORIES: dict[str, Callable[..., Backend]] = {"softdirty": _softdirty, "uffd": _uffd}


class Harvested(DirtySet):
    """A harvest: a :class:`DirtySet` that hands itself back if its ``with`` block raises.

    ``epochs`` lists every epoch it covers (more than one when earlier
    harvests were handed back and merged in).
    """

    __slots__ = ("epochs", "_tracker")

    def __init__(self, base: DirtySet, epochs: Sequence[int], tracker: Tracker | None) -> None:
        self._adopt(base)  # base is normalised already: a second pass cost 37 % of a harvest
        self.epochs = tuple(epochs)
        self._tracker = tracker

    def __enter__(self) -> Harvested:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and self._tracker is not None:
            self._tracker.requeue(self)

    def to_dict(self) -> dict[str, object]:
        out = super().to_dict()
        out["epochs"] = list(self.epochs)
        return out

    def __repr__(self) -> str:
        span = f" epochs={list(self.epochs)}" if len(self.epochs) > 1 else ""
        return f"<Harvested epoch={self.epoch}{span} {len(self)} ranges, {self.page_count} pages>"


class Tracker:
    """Tracks one process's writes; a context manager.  See the module text for epochs."""

    def __init__(self, proc: ProcessInterface, backend: Backend, *, owns_process: bool, why: str = "",
                 exact: bool = False) -> None:
        self.proc = proc
        self.backend = backend
        self.why = why
        self.exact = exact
        self.epoch = 0
        self.last_freeze: Freeze | None = None  # the freeze of the last exact harvest (its timings)
        self._owns = owns_process
        self._closed = False
        self._pending: Harvested | None = None
        self._freeze: Freeze | None = None
        # The soft-dirty back end reports WRITTEN and NEW_MAPPING only; the tracker adds the rest.
        self._annotate = backend.name == "softdirty"
        self._before: list[Vma] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def pending(self) -> DirtySet | None:
        """Harvests handed back and not yet merged into a later harvest."""
        return self._pending

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the tracker is closed")

    # -- freezing -------------------------------------------------------------------
    @contextlib.contextmanager
    def frozen(self, using: Freeze | None = None) -> Iterator[Freeze | None]:
        """Every thread of the target stopped inside the block (nested uses share one freeze).

        Yields the :class:`~softdirty.freeze.Freeze`, or None for a process
        that is not a live one (an emulated process does not run between our
        calls; one with a ``freeze()`` method is frozen by it).  ``using``:
        a freeze already in effect (and left in effect) for the block.
        """
        self._check_open()
        if self._freeze is not None:
            yield self._freeze
            return
        if using is not None:
            if not using.frozen or using.pid != self.pid:
                raise ValueError(f"using= takes a Freeze in effect on process {self.pid}")
            self._freeze = using
            try:
                yield using
            finally:
                self._freeze = None
            return
        if not isinstance(self.proc, LiveProcess):
            own = getattr(self.proc, "freeze", None)
            if own is None:
                yield None
                return
            with own() as got:
                yield got
            return
        freeze = Freeze(self.proc)
        with freeze:
            self._freeze = freeze
            try:
                yield freeze
            finally:
                self._freeze = None

    # -- epochs ---------------------------------------------------------------------
    def reset(self) -> None:
        """Checkpoint: start a new epoch (handed-back harvests stay pending)."""
        self._check_open()
        self.backend.reset()
        self.epoch += 1
        if self._annotate:
            self._before = self.proc.read_maps()

    def _rearms(self, reset: bool | None) -> bool:
        if self.backend.rearms_on_harvest:
            if reset is False:
                raise ValueError(f"the {self.backend.name} back end re-arms at every harvest: reset=False is "
                                 "not possible")
            return True
        if reset is None:
            return self.exact
        if not isinstance(reset, bool):
            raise TypeError(f"reset must be a bool or None, not {type(reset).__name__}")
        return reset

    def harvest(self, *, reset: bool | None = None, **options: Any) -> Harvested:
        """What was written in the current epoch (plus anything handed back).

        ``reset``: start the next epoch in the same step (see the module
        text for the default of each back end).  ``options`` go to the back
        end (``method=`` for soft-dirty).
        """
        self._check_open()
        rearm = self._rearms(reset)
        freezing = self.exact and not self.backend.rearms_on_harvest
        with self.frozen() if freezing else contextlib.nullcontext() as freeze:
            got = self.backend.harvest(**options)
            if rearm and not self.backend.rearms_on_harvest:
                self.backend.reset()
        if isinstance(freeze, Freeze):
            self.last_freeze = freeze
        epoch = self.epoch
        if rearm:
            self.epoch += 1  # the next epoch has begun: from here on, this harvest exists only in memory
        try:
            triples, notes = got.triples, list(got.notes)
            if self._annotate:
                triples, more = causes.annotate(self.proc, triples, got.vmas, self._before)
                notes += more
            if freezing:
                notes.append("exact: read and cleared with every thread stopped" if freeze is not None
                             else "exact: read and cleared in one step")
            elif rearm and not self.backend.rearms_on_harvest:
                notes.append("not exact: a write between the read and the clear may be lost (use exact=True)")
            base = DirtySet(triples, got.vmas, epoch=epoch, backend=self.backend.name, pid=self.pid, notes=notes)
        except BaseException:
            if rearm:  # never lose a harvest the back end already forgot
                self.requeue(DirtySet(got.triples, got.vmas, epoch=epoch, backend=self.backend.name, pid=self.pid))
            raise
        if rearm and self._annotate:
            self._before = got.vmas
        epochs: list[int] = [epoch]
        if self._pending is not None:
            epochs = sorted(set(self._pending.epochs) | {epoch})
            base = self._pending.union(base)
            base.epoch = epoch
            self._pending = None
        return Harvested(base, epochs, self)

    def requeue(self, dirty: DirtySet) -> None:
        """Hand a harvest back: its pages are merged into the next harvest."""
        if not isinstance(dirty, DirtySet):
            raise TypeError(f"requeue() takes a DirtySet, not {type(dirty).__name__}")
        epochs = dirty.epochs if isinstance(dirty, Harvested) else (dirty.epoch,)
        if self._pending is None:
            self._pending = Harvested(dirty, epochs, self)
        else:
            merged = self._pending.union(dirty)
            self._pending = Harvested(merged, sorted(set(self._pending.epochs) | set(epochs)), self)

    def drop_pending(self) -> None:
        """Forget harvests handed back (they will not be reported again)."""
        self._pending = None

    @contextlib.contextmanager
    def consume(self, **options: Any) -> Iterator[Harvested]:
        """``with tracker.consume() as dirty:``: harvest, handed back if the block raises."""
        with self.harvest(**options) as dirty:
            yield dirty

    # -- rates ----------------------------------------------------------------------
    def sample(self, interval: float) -> Sample:
        """Pages/s and MB/s written over ``interval`` seconds, overall and per VMA."""
        from softdirty.sampling import Sampler

        return Sampler(self).sample(interval)

    # -- life -----------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.backend.close()
        finally:
            if self._owns:
                self.proc.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"epoch {self.epoch}"
        mode = " exact" if self.exact else ""
        return f"<Tracker pid={self.pid} backend={self.backend.name}{mode} {state}>"


def track(target: int | ProcessInterface | Any, backend: str = "auto", *, exact: bool = False,
          **options: Any) -> Tracker:
    """Track the writes of ``target``: a PID, a spawned child, or an emulated process.

    ``backend`` is ``"auto"`` (the best that works for this process, see
    :func:`softdirty.probe`; ``tracker.why`` says why), ``"softdirty"`` or
    ``"uffd"``.  A PID is always a real process: when no real back end works
    for it, :class:`~softdirty.errors.Unsupported` lists every reason (the
    emulator never stands in for a real process).

    ``exact=True``: no write may fall between a harvest and the next epoch.
    Soft-dirty then stops every thread of the target (ptrace) while it reads
    and clears; uffd is exact by construction.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be a bool, not {type(exact).__name__}")
    owns = False
    if isinstance(target, ProcessInterface):
        proc: ProcessInterface = target
    elif hasattr(target, "process_interface"):  # a softdirty.spawn() handle
        proc = target.process_interface()
        owns = True
    else:
        proc = LiveProcess(check_pid(target))
        owns = True
    try:
        made, why = _make(proc, backend, options)
        if exact and made.name == "softdirty" and isinstance(proc, LiveProcess) and proc.pid == os.getpid():
            made.close()
            raise ValueError("exact=True with soft-dirty stops the target, and a process cannot stop itself: "
                             "track another process, or use the uffd back end")
    except BaseException:
        if owns:
            proc.close()
        raise
    if exact:
        if made.name != "softdirty":
            why += "; exact by construction (atomic harvest-and-rearm)"
        elif isinstance(proc, LiveProcess):
            why += "; exact: harvests read and clear with every thread stopped (ptrace)"
        else:
            why += "; exact: harvests read and clear in one step (the process does not run meanwhile)"
    return Tracker(proc, made, owns_process=owns, why=why, exact=exact)


def _make(proc: ProcessInterface, backend: str, options: dict[str, Any]) -> tuple[Backend, str]:
    if backend != "auto":
        return _FACTORIES[backend](proc, **options), "asked for"
    reasons: list[str] = []
    for name in AUTO_ORDER:
        answer = proc.feature(_FEATURE[name])
        if not answer.ok:
            reasons.append(f"{name}: {answer.reason}")
            continue
        try:
            made = _FACTORIES[name](proc, **options)
        except Unsupported as exc:
            reasons.append(f"{name}: {exc.reason}")
            continue
        why = f"{name}: {answer.reason}"
        if reasons:
            why += f" (passed over: {'; '.join(reasons)})"
        return made, why
    raise Unsupported("write tracking", f"no back end works for process {proc.pid}: {'; '.join(reasons)}")


def candidates(proc: ProcessInterface) -> Iterable[tuple[str, bool, str]]:
    """Each real back end, whether it works for ``proc``, and why (for reports)."""
    for name in AUTO_ORDER:
        answer = proc.feature(_FEATURE[name])
        yield name, answer.ok, answer.reason
