"""The reference engine: clients train one after another on one reused model.

pfl-research's habit (one model per worker, parameters updated in place): a plain client needs
no model of its own, only its data and its generator, so one `LocalTrainer` is rebound to each
client in turn. That gives bitwise the results of one deep copy per client (the optimiser
state is reset every round either way) without 10,000 copies in memory. A local-training
defense that keeps per-client state (DP-SGD's accountant) still gets one trainer per client.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from privlab.engine.base import Chunk, ClientShard, Engine, State, floating_keys
from privlab.training import LocalTrainer, TrainSettings

TrainerFactory = Callable[[ClientShard], LocalTrainer]


class SequentialEngine(Engine):
    name = "sequential"

    def __init__(
        self,
        shards: list[ClientShard],
        model: torch.nn.Module,
        settings: TrainSettings,
        trainer_factory: TrainerFactory | None = None,
    ) -> None:
        super().__init__(shards)
        self._trainers: list[LocalTrainer] | None = None
        self._worker: LocalTrainer | None = None
        if trainer_factory is not None:
            self._trainers = [trainer_factory(s) for s in shards]
        else:
            first = shards[0]
            self._worker = LocalTrainer(
                copy.deepcopy(model), first.x, first.y, settings, first.generator
            )

    def trainer(self, k: int) -> LocalTrainer:
        """The trainer serving client k (the shared worker, rebound to k's data)."""
        if self._trainers is not None:
            return self._trainers[k]
        assert self._worker is not None
        s = self.shards[k]
        self._worker.rebind(s.x, s.y, s.generator)
        return self._worker

    def train(self, start: State, ids: Sequence[int]) -> Iterator[Chunk]:
        keys = floating_keys(start)
        for k in ids:
            trainer = self.trainer(k)
            trainer.train(start)
            trained = trainer.model.state_dict()
            yield [k], {key: trained[key].detach().clone().unsqueeze(0) for key in keys}

    def train_sums(
        self, start: State, ids: Sequence[int], coef: dict[int, float]
    ) -> Iterator[Chunk]:
        """As Engine.train_sums, one client at a time: its weights times its coefficient,
        straight from the trainer (no stacked copy; the same single product as the base
        class's one-term tensordot)."""
        keys = floating_keys(start)
        for k in ids:
            trainer = self.trainer(k)
            trainer.train(start)
            trained = trainer.model.state_dict()
            yield [k], {key: trained[key].detach() * coef[k] for key in keys}

    def accountant(self, k: int) -> Any | None:
        if self._trainers is None:
            return None  # one shared worker: no per-client state beyond the generators
        return getattr(self._trainers[k], "accountant", None)

    def privacy(self) -> dict[str, dict[str, Any] | None]:
        if self._trainers is None:
            return super().privacy()
        return {
            str(s.client_id): t.privacy() for s, t in zip(self.shards, self._trainers, strict=True)
        }
