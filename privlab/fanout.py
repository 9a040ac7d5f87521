"""Fan-out of independent units of work: variants, and groups of reference models.

A unit is a module-level function and its arguments; it seeds itself, so where it runs never
changes its result. Three ways to run a list of units, all returning results in input order:
- `Serial`: one after another in this process (the default, `workers = 1`);
- `Processes`: over local worker processes (`workers = N`; spawn context, so no forked torch
  state; each worker sets the parent's torch thread count);
- `RayTasks` (privlab.engine.ray_backend): as Ray tasks (`backend = "ray"`).
`plan` decides per scenario run: with several variants, variants fan out (their reference
models then run serially inside each worker, which is already busy), Ray excepted: there a
variant task sends its reference models out as Ray tasks too; with one variant, its reference
models fan out. The current fan-out for reference models is a context variable (`using`), so
attacks need no argument for it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privlab.scenario import Scenario

Unit = Callable[..., Any]


class Serial:
    kind = "serial"

    def map(self, fn: Unit, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [fn(*a) for a in args]

    def close(self) -> None:
        pass


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class Processes:
    """A pool of `workers` local processes, started on first use and kept for the run."""

    kind = "processes"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Unit, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        if len(args) < 2 or not _picklable(fn, args):
            return Serial().map(fn, args)  # same results; nothing to gain or not sendable
        if self._pool is None:
            import torch

            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(torch.get_num_threads(),),
            )
        futures = [self._pool.submit(fn, *a) for a in args]
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _picklable(fn: Unit, args: Sequence[tuple[Any, ...]]) -> bool:
    """Units built in code may hold lambdas (a custom model factory): those run serially."""
    try:
        pickle.dumps((fn, args[0]))
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


_current: ContextVar[Any] = ContextVar("privlab_fanout", default=None)


def current() -> Any:
    """Where reference-model groups run now (Serial unless a run set it)."""
    return _current.get() or Serial()


@contextlib.contextmanager
def using(fanout: Any) -> Iterator[None]:
    token = _current.set(fanout)
    try:
        yield
    finally:
        _current.reset(token)


def variant_task(scenario: Scenario, index: int, threads: int, refs: str) -> tuple[str, Any]:
    """One variant, run in a worker: its reference models run serially or as Ray tasks."""
    import torch

    from privlab.runner import ScenarioRun

    torch.set_num_threads(threads)
    inner: Any = Serial()
    if refs == "ray":
        from privlab.engine.ray_backend import RayTasks

        inner = RayTasks(None)
    with using(inner):
        return ScenarioRun(scenario).run_variant(index)


@contextlib.contextmanager
def plan(scenario: Scenario, count: int) -> Iterator[tuple[Any, Any]]:
    """(fan-out for the variants or None, fan-out for reference models in this process)."""
    outer: Any = None
    inner: Any = Serial()
    if scenario.backend == "ray":
        from privlab.engine.ray_backend import RayTasks

        inner = RayTasks(scenario.ray_address)
        outer = inner if count > 1 else None
    elif scenario.workers > 1:
        inner = Processes(scenario.workers)
        outer = inner if count > 1 else None
    try:
        yield outer, inner
    finally:
        inner.close()


def run_variants(scenario: Scenario, count: int, outer: Any) -> dict[str, Any]:
    """Every variant of `scenario` as one unit of `outer`; results in the variants' order."""
    import torch

    # The backend stays: a variant's scenario rebuilt with its `set` overrides must still pass
    # `client_tasks`' check (Ray only); a variant itself never reads the backend.
    local = scenario.model_copy(update={"ray_address": None, "workers": 1})
    refs = "ray" if scenario.backend == "ray" else "serial"
    args = [(local, i, torch.get_num_threads(), refs) for i in range(count)]
    return dict(outer.map(variant_task, args))
