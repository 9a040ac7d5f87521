"""The FedAvg job every framework runs, as a file: same data, partition, initial weights, recipe.

Written by benchmarks/frameworks.py from privlab's own scenario (so the data and partition are
privlab's), read by the framework scripts beside this file, which run in their own venvs and
need only numpy and torch from it. The model is privlab's MLP [128] (Flatten, Linear, ReLU,
Linear), rebuilt here with the same parameter names and loaded with the same initial weights.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Job:
    shards: list[tuple[torch.Tensor, torch.Tensor]]
    x_test: torch.Tensor
    y_test: torch.Tensor
    initial: dict[str, torch.Tensor]
    hidden: int
    rounds: int
    local_epochs: int
    batch_size: int
    lr: float


def save(path: Path, job: Job) -> None:
    offsets = np.cumsum([0] + [len(y) for _, y in job.shards])
    np.savez(
        path,
        x=torch.cat([x for x, _ in job.shards]).numpy(),
        y=torch.cat([y for _, y in job.shards]).numpy(),
        offsets=offsets,
        x_test=job.x_test.numpy(),
        y_test=job.y_test.numpy(),
        names=np.array(list(job.initial)),
        **{f"param_{i}": v.numpy() for i, v in enumerate(job.initial.values())},
        recipe=np.array([job.hidden, job.rounds, job.local_epochs, job.batch_size]),
        lr=np.array(job.lr),
    )


def load(path: str) -> Job:
    z = np.load(path)
    x, y, off = torch.as_tensor(z["x"]), torch.as_tensor(z["y"]), z["offsets"]
    shards = [(x[a:b], y[a:b]) for a, b in itertools.pairwise(off)]
    names = [str(n) for n in z["names"]]
    initial = {n: torch.as_tensor(z[f"param_{i}"]) for i, n in enumerate(names)}
    hidden, rounds, epochs, batch = (int(v) for v in z["recipe"])
    return Job(
        shards,
        torch.as_tensor(z["x_test"]),
        torch.as_tensor(z["y_test"]),
        initial,
        hidden,
        rounds,
        epochs,
        batch,
        float(z["lr"]),
    )


class MLP(nn.Sequential):
    """privlab's `mlp` model with one hidden layer: keys 1.weight, 1.bias, 3.weight, 3.bias."""

    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__(
            nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )


def model_of(job: Job) -> MLP:
    features = int(job.shards[0][0][0].numel())
    classes = int(job.initial[list(job.initial)[-1]].shape[0])
    model = MLP(features, job.hidden, classes)
    model.load_state_dict(job.initial)
    return model


def accuracy(model: nn.Module, job: Job) -> float:
    with torch.no_grad():
        return float((model(job.x_test).argmax(1) == job.y_test).float().mean())


def local_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, job: Job, seed: int) -> None:
    """The recipe: shuffled mini-batches, plain SGD, mean cross-entropy."""
    opt = torch.optim.SGD(model.parameters(), lr=job.lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(job.local_epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), job.batch_size):
            idx = order[i : i + job.batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def report(framework: str, job: Job, seconds: float, acc: float) -> None:
    """One JSON line on stdout: what the parent reads."""
    line = {"framework": framework, "clients": len(job.shards), "seconds": seconds, "accuracy": acc}
    sys.stdout.write("RESULT " + json.dumps(line) + "\n")
    sys.stdout.flush()


def clock() -> float:
    return time.perf_counter()
