"""Shared test fixtures for the engine tests: synthetic client shards, trained weights by client."""

from __future__ import annotations

import torch

from privlab.engine.base import ClientShard
from privlab.training import seeded_generator


def make_shards(
    sizes: list[int], seed: int = 0, *, scale: float = 1.0, data_seed: int | None = None
) -> list[ClientShard]:
    """Clients of `sizes` records (1 x 12 features, 5 classes) drawn from `data_seed` (default
    `seed`), each with its own generator seeded from `seed` as the topologies seed them."""
    g = torch.Generator().manual_seed(seed if data_seed is None else data_seed)
    return [
        ClientShard(
            k,
            torch.randn(n, 1, 12, generator=g) * scale,
            torch.randint(0, 5, (n,), generator=g),
            seeded_generator(seed, k, 7),
        )
        for k, n in enumerate(sizes)
    ]


def collect(engine, start, ids) -> dict[int, dict[str, torch.Tensor]]:
    """Each client's trained tensors from an engine's stacked chunks."""
    out = {}
    for chunk, stacked in engine.train(start, ids):
        for i, k in enumerate(chunk):
            out[k] = {key: v[i] for key, v in stacked.items()}
    return out
