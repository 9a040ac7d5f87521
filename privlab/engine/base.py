"""The engine contract shared by the sequential, vectorised and Ray engines."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

State = dict[str, torch.Tensor]
Chunk = tuple[list[int], State]
"""(client ids, their trained floating tensors stacked along a new first axis)."""


@dataclass
class ClientShard:
    """What one client brings to local training: its (possibly poisoned) records and its own
    generator, whose state carries over between the rounds it takes part in."""

    client_id: int
    x: torch.Tensor
    y: torch.Tensor
    generator: torch.Generator

    @property
    def num_samples(self) -> int:
        return len(self.y)


class Engine(ABC):
    """Trains a set of clients from one start state."""

    name: ClassVar[str]

    def __init__(self, shards: list[ClientShard]) -> None:
        self.shards = shards

    def num_samples(self, k: int) -> int:
        return self.shards[k].num_samples

    @abstractmethod
    def train(self, start: State, ids: Sequence[int]) -> Iterator[Chunk]:
        """Train clients `ids` from `start`; yield their trained weights chunk by chunk."""

    def train_sums(
        self, start: State, ids: Sequence[int], coef: dict[int, float]
    ) -> Iterator[Chunk]:
        """Train clients `ids` from `start`; yield per chunk its clients and the sum of their
        trained floating tensors weighted by `coef` (FedAvg's mean, when nothing needs single
        updates)."""
        for chunk, stacked in self.train(start, ids):
            w = torch.tensor([coef[k] for k in chunk])
            yield chunk, {k: torch.tensordot(w.to(v.dtype), v, dims=1) for k, v in stacked.items()}

    def chunks(self, ids: Sequence[int]) -> list[list[int]]:
        """How `train` groups `ids`: each group trains as one unit (here one client at a time),
        so whoever trains whole groups gets exactly the engine's own results."""
        return [[k] for k in ids]

    def accountant(self, k: int) -> Any | None:
        """Client k's privacy accountant (Opacus-style, with a `history`), if it keeps one."""
        return None

    def privacy(self) -> dict[str, dict[str, Any] | None]:
        """Privacy spent per client (None: no formal guarantee)."""
        return {str(s.client_id): None for s in self.shards}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def floating_keys(state: State) -> list[str]:
    """The keys an update carries (FedAvg averages floating tensors only)."""
    return [k for k, v in state.items() if v.is_floating_point()]
