"""A round's clients as Ray tasks (`client_tasks`, only with `backend = "ray"`).

`RayClientEngine` wraps the engine the variant would use anyway (vectorised, sequential, or
sequential with a local-training defense's per-client trainers, as DP-SGD's) and sends a
round's clients out as a few Ray tasks, each training its group with that same inner engine:
- each client's records go to the object store once (not per round), and again only when an
  attack rewrote them in place (torch counts in-place writes in a tensor's `_version`, as the
  vectorised engine's store checks); the round's start state is put once per round;
- groups are whole chunks of the inner engine (the vectorised engine's chunks of about
  CHUNK_ROWS records; one client for the sequential engine) and each chunk trains exactly as
  locally, on the driver's torch thread count, so every chunk's stacked weights or weighted
  sums are bitwise the local ones and are yielded in the local order (FedAvg's sum is then
  the same sum);
- generators carry state across rounds (`ClientShard.generator`): a task starts each client's
  generator from the driver's state and sends the new state back, which the driver writes into
  its own generator; a trainer's accountant (DP-SGD, anything with an Opacus-style
  `accountant.history`) travels the same way, so privacy is accounted exactly as locally.
Tasks per round: one per CPU of the cluster (`client_tasks = true`) or N (`client_tasks = N`),
never more than the round has chunks. `cost.engine` of results.json is the inner engine's
description plus `client_tasks` (tasks per round); everything else is the local run's.

When it pays (benchmarks/bench_ray_clients.py: a local Ray with 2 CPUs on this shared 2-vCPU
machine; medians of 5-7 interleaved repeats; speed-up = local time / time with two tasks,
ranges over 4-5 runs). A task costs milliseconds: submission, its clients' generator states
(5 KB each) both ways, the start state, the weights back. The default FedAvg job (vectorised
MLP [256], 5 rounds) runs at 0.28-0.40x the local speed at 100 clients and 0.56-0.82x at
1,000. A CNN job (8 clients, sequential engine, 3 rounds) runs at 0.82-1.49x at 1-3 local
epochs and 0.93-1.41x at 10 (rounds of 1.7 s), though Ray's timeline shows both tasks running
side by side: during most runs two busy processes got about one CPU of this machine (the
benchmark prints this capacity: 0.9-2.1 CPUs), so the 2x of two free cores was not reachable
here. One task alone costs 0.94-1.20x local on the CNN job (noise) and 2.4-2.8x on the default
job at 100 clients. Rule of thumb: turn it on when a round's local training takes well over
0.1 s per cluster CPU and the cluster has idle cores (several nodes, CNNs, many local epochs,
DP-SGD through Opacus); keep it off for the vectorised MLP jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy
import torch

from privlab.engine.base import Chunk, ClientShard, Engine, State
from privlab.errors import ScenarioError

BLOCK = 64
"""Clients per object in the store (by id): a task fetches a few blocks, not one object per
client (each costs ~0.1 ms to pass); a round's clients come from any of them."""

Build = Callable[[list[ClientShard]], Engine]
"""Builds the inner engine for some shards; sent to the tasks, so it must pickle (no lambdas
holding the whole topology)."""


def split_groups(
    chunks: list[list[int]], sizes: Sequence[int], tasks: int
) -> list[list[list[int]]]:
    """Consecutive runs of chunks, about equal in records (a client's work grows with its
    records), at most `tasks` of them; order kept, so results come back in the local order."""
    tasks = max(1, min(tasks, len(chunks)))
    work = [sum(sizes[k] for k in c) for c in chunks]
    total, done, groups = float(sum(work)), 0.0, [[] for _ in range(tasks)]
    for c, w in zip(chunks, work, strict=True):
        g = min(tasks - 1, int((done + w / 2) * tasks / total)) if total else 0
        groups[g].append(c)  # by the chunk's midpoint: a big chunk does not drag its group
        done += w
    return [g for g in groups if g]


def _arrays(tensors: State) -> dict[str, numpy.ndarray]:
    return {k: v.detach().numpy() for k, v in tensors.items()}


def _tensor(a: numpy.ndarray) -> torch.Tensor:
    """A writable tensor from an array Ray handed over read-only (zero-copy from the store).
    Tensors travel as numpy arrays: Ray reads those straight from shared memory, while a
    pickled torch tensor goes through torch.load, ~0.15 ms each (1,000 clients: 0.3 s a round)."""
    return torch.from_numpy(a.copy())


def train_group(
    build: Build,
    threads: int,
    start: State,
    chunks: list[list[int]],
    generators: numpy.ndarray,
    histories: list[list | None],
    coef: dict[int, float] | None,
    blocks: list[int],
    *data: list[tuple[numpy.ndarray, numpy.ndarray]],
) -> tuple[list[tuple[list[int], dict[str, numpy.ndarray]]], numpy.ndarray, list[list | None]]:
    """One task: the group's clients (ids in ascending order, as `generators` lists them) train
    chunk by chunk with the inner engine; `data` holds the records of the client blocks numbered
    `blocks` (top-level arguments: Ray fetches them before the task starts). Returns the chunks
    (client ids, stacked weights or weighted sums), each client's new generator state (one row
    each) and accountant history."""
    torch.set_num_threads(threads)
    ids = sorted(k for c in chunks for k in c)
    pos = {k: i for i, k in enumerate(ids)}  # local positions keep the global order
    shards = []
    held = dict(zip(blocks, data, strict=True))
    for k, state in zip(ids, generators, strict=True):
        x, y = held[k // BLOCK][k % BLOCK]
        gen = torch.Generator()
        gen.set_state(_tensor(state))
        shards.append(ClientShard(k, _tensor(x), _tensor(y), gen))
    engine = build(shards)
    for i, history in enumerate(histories):
        if history is not None:
            engine.accountant(i).history = list(history)
    out: list[Chunk] = []
    for chunk in chunks:
        mine = [pos[k] for k in chunk]
        if coef is None:
            produced = engine.train(start, mine)
        else:
            produced = engine.train_sums(start, mine, {pos[k]: coef[k] for k in chunk})
        out += [([ids[i] for i in got], _arrays(tensors)) for got, tensors in produced]
    states = numpy.stack([s.generator.get_state().numpy() for s in shards])
    new = [
        None if h is None else list(engine.accountant(i).history) for i, h in enumerate(histories)
    ]
    return out, states, new


class RayClientEngine(Engine):
    """The inner engine's clients trained as Ray tasks, bitwise as the inner engine would."""

    def __init__(
        self, shards: list[ClientShard], build: Build, tasks: bool | int, address: str | None
    ) -> None:
        from privlab.engine.ray_backend import start

        super().__init__(shards)
        self.ray = start(address)
        try:
            self._build = self.ray.put(build)  # the model travels once, not with every task
        except Exception as exc:  # a plug-in model or defense that cannot be pickled
            raise ScenarioError(
                f"client_tasks: the clients' engine cannot be sent to Ray tasks ({exc}); "
                "set client_tasks = false"
            ) from None
        self.local = build(shards)  # chunking, sample counts, the accountants' totals
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.tasks = max(1, cpus) if tasks is True else int(tasks)
        self._task = self.ray.remote(num_cpus=1)(train_group)
        self._refs: dict[int, tuple[Any, tuple]] = {}
        self.tasks_per_round: list[int] = []
        self.name = self.local.name  # type: ignore[misc]

    def num_samples(self, k: int) -> int:
        return self.local.num_samples(k)

    def describe(self) -> dict[str, Any]:
        return {
            **self.local.describe(),
            "client_tasks": {
                "backend": "ray",
                "tasks": self.tasks,
                "tasks_per_round": self.tasks_per_round,
            },
        }

    def privacy(self) -> dict[str, dict[str, Any] | None]:
        return self.local.privacy()

    def train(self, start: State, ids: Sequence[int]) -> Iterator[Chunk]:
        return self._run(start, ids, None)

    def train_sums(
        self, start: State, ids: Sequence[int], coef: dict[int, float]
    ) -> Iterator[Chunk]:
        return self._run(start, ids, coef)

    def _ref(self, b: int) -> Any:
        """Block b's records in the object store: put once, again only if one was rewritten."""
        shards = self.shards[b * BLOCK : (b + 1) * BLOCK]
        stamp = tuple((id(s.x), s.x._version, id(s.y), s.y._version) for s in shards)
        held = self._refs.get(b)
        if held is None or held[1] != stamp:
            held = (self.ray.put([(s.x.numpy(), s.y.numpy()) for s in shards]), stamp)
            self._refs[b] = held
        return held[0]

    def _run(
        self, start: State, ids: Sequence[int], coef: dict[int, float] | None
    ) -> Iterator[Chunk]:
        if not ids:
            return
        sizes = [self.local.num_samples(k) for k in range(len(self.shards))]
        groups = split_groups(self.local.chunks(ids), sizes, self.tasks)
        self.tasks_per_round.append(len(groups))
        start_ref = self.ray.put(start)
        threads = torch.get_num_threads()
        pending = []
        for chunks in groups:
            members = sorted(k for c in chunks for k in c)
            accountants = [self.local.accountant(k) for k in members]
            blocks = sorted({k // BLOCK for k in members})
            gens = numpy.stack([self.shards[k].generator.get_state().numpy() for k in members])
            ref = self._task.remote(
                self._build,
                threads,
                start_ref,
                chunks,
                gens,
                [None if a is None else list(a.history) for a in accountants],
                None if coef is None else {k: coef[k] for k in members},
                blocks,
                *[self._ref(b) for b in blocks],
            )
            pending.append((members, accountants, ref))
        for members, accountants, ref in pending:
            out, states, histories = self.ray.get(ref)
            for k, state, acc, history in zip(members, states, accountants, histories, strict=True):
                self.shards[k].generator.set_state(_tensor(state))
                if acc is not None:
                    acc.history = history
            for got, arrays in out:
                yield got, {key: _tensor(a) for key, a in arrays.items()}
