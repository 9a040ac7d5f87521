"""Shared fixtures: small scenarios so the default suite stays fast."""

from __future__ import annotations

import pytest

# A tiny federated run: digits, 4 clients, 3 rounds.
TINY = [
    "partition.num_clients=4",
    "topology.rounds=3",
    "topology.local_epochs=1",
    "model.params={hidden=[32]}",
    'variants=[{name="plain"}, {name="dp", defenses=[{name="dp_sgd", params={noise_multiplier=1.0}}]}]',
    "expectations=[]",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)
