"""``softdirty.track()``: one tracker over any back end and any process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from softdirty.backends.base import Backend
from softdirty.dirtyset import DirtySet
from softdirty.errors import Unsupported
from softdirty.process import LiveProcess, ProcessInterface, check_pid

BACKENDS = ("auto", "softdirty", "uffd")


def _softdirty(proc: ProcessInterface, **options: Any) -> Backend:
    from softdirty.backends.softdirty import SoftDirtyBackend

    return SoftDirtyBackend(proc, **options)


def _uffd(proc: ProcessInterface, **options: Any) -> Backend:
    from softdirty.backends.uffd import UffdBackend

    backend: Backend = UffdBackend(proc, **options)
    return backend


_FACTORIES: dict[str, Callable[..., Backend]] = {"softdirty": _softdirty, "uffd": _uffd}


class Tracker:
    """Tracks one process's writes; a context manager.

    ``reset()`` starts an epoch; ``harvest()`` returns what was written since
    and, on back ends that re-arm atomically (uffd), starts the next epoch.
    """

    def __init__(self, proc: ProcessInterface, backend: Backend, *, owns_process: bool, why: str = "") -> None:
        self.proc = proc
        self.backend = backend
        self.why = why
        self.epoch = 0
        self._owns = owns_process
        self._closed = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the tracker is closed")

    def reset(self) -> None:
        self._check_open()
        self.backend.reset()
        self.epoch += 1

    def harvest(self, **options: Any) -> DirtySet:
        self._check_open()
        got = self.backend.harvest(**options)
        dirty = DirtySet(got.triples, got.vmas, epoch=self.epoch, backend=self.backend.name, pid=self.pid,
                         notes=got.notes)
        if self.backend.rearms_on_harvest:
            self.epoch += 1
        return dirty

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
        return f"<Tracker pid={self.pid} backend={self.backend.name} {state}>"


def track(target: int | ProcessInterface | Any, backend: str = "auto", **options: Any) -> Tracker:
    """Track the writes of ``target``: a PID, a spawned child, or an emulated process.

    ``backend`` is ``"auto"`` (the best that works here, see
    :func:`softdirty.probe`), ``"softdirty"`` or ``"uffd"``.  Raises
    :class:`~softdirty.errors.Unsupported` with the reasons when nothing works.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
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
        name, why = _choose(proc, backend)
        made = _FACTORIES[name](proc, **options)
    except BaseException:
        if owns:
            proc.close()
        raise
    return Tracker(proc, made, owns_process=owns, why=why)


def _choose(proc: ProcessInterface, backend: str) -> tuple[str, str]:
    if backend != "auto":
        return backend, "asked for"
    sd = proc.feature("soft_dirty")
    if sd.ok:
        return "softdirty", sd.reason
    uffd = proc.feature("uffd_wp_async")
    if uffd.ok:
        return "uffd", f"soft-dirty is missing ({sd.reason}); {uffd.reason}"
    raise Unsupported("write tracking", f"soft-dirty: {sd.reason}; uffd-wp async: {uffd.reason}")
