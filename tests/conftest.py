"""Shared fixtures: small scenarios so the default suite stays fast."""

from __future__ import annotations

import pytest
import torch

# Small models train fastest on one thread (as `privlab run` does by default); two threads on a
# loaded 2-core machine oversubscribe and slow every test down.
torch.set_num_threads(1)

# A tiny federated run: digits, 4 clients, 3 rounds.
TINY = [
    'attacks=[{name="loss_threshold", id="mia_loss"}]',  # the default's shadow attacks are slow
    "partition.num_clients=4",
    "topology.rounds=3",
    "topology.local_epochs=1",
    "model.params={hidden=[32]}",
    'variants=[{name="plain"}, '
    '{name="dp", defenses=[{name="dp_sgd", params={noise_multiplier=1.0}}]}]',
    "expectations=[]",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


pytest_plugins = ["pytester"]  # the privlab pytest plugin is tested in a pytest of its own


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs, as CI runs it (tests that use it skip without Ray)."""
    ray = pytest.importorskip("ray")
    from privlab.engine.ray_backend import start

    start(None)
    yield
    ray.shutdown()
