"""Training one group of reference models: a FedAvg emulation over client lanes.

Each reference model is a FedAvg run whose subset is dealt out to `num_clients` lanes (all
equal shares). Every round the model's sampled lanes train `local_epochs` from the model's
global weights, their updates pass the target's client-side transforms, and the model's
global weights become g + server_lr * (mean of the sampled lanes - g). A lane is a client of
its own: its records, its own generator (seeded by the model's and lane's index, so a model's
result does not depend on which group it trains in), and it shuffles each epoch with
torch.randperm, as `LocalTrainer` does. Three lane trainers run the local epochs:
- `vectorised`: all lanes as one batched computation (privlab.engine.vectorised, per-lane
  starts), for Flatten-Linear-activation models;
- `stacked`: stacked parameters and one vmapped functional_call (any architecture);
- `sequential`: one `LocalTrainer` rebound to each lane in turn (the reference path).
Without DP the three agree to floating-point rounding (tests/test_reference_training.py).
DP-SGD (privlab.stacked_dp: Poisson batches and noise from the group's generator, per-sample
clipping as Opacus does) runs in the stacked trainer, or for Linear stacks with per-record
norms and clipped sums written out (ghost clipping; the same batches and noise: equal to
rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from privlab.engine.base import ClientShard
from privlab.engine.vectorised import VectorisedEngine, linear_stack
from privlab.stacked_dp import (
    linear_private_gradients,
    per_sample_grads,
    poisson_batches,
    private_gradients,
)
from privlab.training import LocalTrainer, State, seeded_generator

if TYPE_CHECKING:
    from privlab.reference_models import ReferenceJob

Tensors = dict[str, torch.Tensor]
TRAINERS = ("auto", "vectorised", "stacked", "sequential")


def init_models(
    model_factory: Callable[[], nn.Module], rows: Sequence[int], seed: int, init: State | None
) -> list[nn.Module]:
    """Model i's fresh weights come from its own seed (or all start from `init`)."""
    models = []
    for i in rows:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeded_generator(seed, i, 31).initial_seed() % (2**31)))
            model = model_factory()
        if init is not None:
            model.load_state_dict(init)
        models.append(model)
    return models


def lane_members(mask: np.ndarray, num_clients: int, seed: int, row: int) -> np.ndarray:
    """(C, size // C) pool indices: model `row`'s subset dealt out to its C lanes."""
    idx = np.random.default_rng([seed, 39, row]).permutation(np.flatnonzero(mask))
    share = len(idx) // num_clients
    return np.stack([idx[c * share : (c + 1) * share] for c in range(num_clients)])


def pick_trainer(job: ReferenceJob, model: nn.Module) -> str:
    """'auto': vectorised where the model is a Linear stack, else stacked. DP-SGD (Poisson
    batches, per-sample clipping, noise) runs in the stacked and vectorised trainers only."""
    linear = linear_stack(model) is not None
    if job.trainer == "sequential" and job.dp is not None:
        return "stacked"  # LocalTrainer steps plainly: the vmapped autograd path is the reference
    if job.trainer in ("auto", "vectorised"):
        return "vectorised" if linear else "stacked"
    return job.trainer


class Lanes:
    """Every lane of one group: data, generators, and the local-epochs step per trainer."""

    def __init__(
        self, job: ReferenceJob, model_factory: Callable[[], nn.Module], rows: Sequence[int]
    ) -> None:
        self.job, self.factory = job, model_factory
        c = job.num_clients
        members = [lane_members(job.masks[i], c, job.seed, i) for i in rows]
        self.members = torch.as_tensor(np.concatenate(members))
        self.lane_ids = [i * c + k for i in rows for k in range(c)]  # global lane numbers
        self.x, self.y = torch.as_tensor(job.x), torch.as_tensor(job.y)
        self.gens = [seeded_generator(job.seed, lane, 37) for lane in self.lane_ids]
        self.group_gen = seeded_generator(job.seed, 37, rows[0])  # DP-SGD's batches and noise
        self.base = model_factory().to("meta")
        model = model_factory()
        self.trainer = pick_trainer(job, model)
        self.arch = linear_stack(model)
        self._engine: VectorisedEngine | None = None
        self._worker: LocalTrainer | None = None

    def train(self, starts: Tensors, lanes: list[int]) -> Tensors:
        """Lanes `lanes` (positions in the group) trained from `starts` (stacked, one row
        each) for the local epochs -> their trained parameters, stacked likewise."""
        if self.trainer == "vectorised" and self.job.dp is None:
            return self._vectorised(starts, lanes)
        if self.trainer == "sequential":
            return self._sequential(starts, lanes)
        return self._stacked(starts, lanes)

    def _vectorised(self, starts: Tensors, lanes: list[int]) -> Tensors:
        if self._engine is None:
            shards = [
                ClientShard(k, self.x[m], self.y[m], g)
                for k, (m, g) in enumerate(zip(self.members, self.gens, strict=True))
            ]
            self._engine = VectorisedEngine(shards, self.factory(), self.job.settings)
        out = {k: torch.empty_like(v) for k, v in starts.items()}
        where = {k: i for i, k in enumerate(lanes)}
        for chunk, trained in self._engine.train_each(starts, lanes):
            rows = torch.tensor([where[k] for k in chunk])
            for key in out:
                out[key][rows] = trained[key]
        return out

    def _sequential(self, starts: Tensors, lanes: list[int]) -> Tensors:
        out = {k: torch.empty_like(v) for k, v in starts.items()}
        for i, lane in enumerate(lanes):
            m = self.members[lane]
            if self._worker is None:
                model = self.factory()
                self._worker = LocalTrainer(
                    model, self.x[m], self.y[m], self.job.settings, self.gens[lane]
                )
            self._worker.rebind(self.x[m], self.y[m], self.gens[lane])
            self._worker.train({k: v[i] for k, v in starts.items()})
            state = self._worker.model.state_dict()
            for k in out:
                out[k][i] = state[k].detach()
        return out

    def _stacked(self, starts: Tensors, lanes: list[int]) -> Tensors:
        s, dp = self.job.settings, self.job.dp
        params = {k: v.detach().clone().requires_grad_(True) for k, v in starts.items()}
        members = self.members[lanes]
        gens = [self.gens[k] for k in lanes]
        opt = torch.optim.SGD(  # fresh optimiser state every round, as the local trainers do
            list(params.values()), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
        )
        anchor = {k: v.detach() for k, v in starts.items()}
        for _ in range(s.local_epochs):
            if dp is None:
                self._plain_epoch(params, opt, members, gens, anchor)
            else:
                self._private_epoch(params, opt, members, anchor)
        return {k: v.detach() for k, v in params.items()}

    def _forward_each(self, params: Tensors, x: torch.Tensor) -> torch.Tensor:
        call = lambda p, xb: functional_call(self.base, (p, {}), (xb,))  # noqa: E731
        return vmap(call)(params, x)

    def _plain_epoch(self, params, opt, members, gens, anchor) -> None:  # type: ignore[no-untyped-def]
        """One shuffled epoch of mini-batch SGD in every lane, each lane's batches in its own
        generator's order (a short last batch averages over its own records)."""
        size, bs = members.shape[1], self.job.settings.batch_size
        order = torch.stack([torch.randperm(size, generator=g) for g in gens])
        shuffled = torch.gather(members, 1, order)
        for start in range(0, size, bs):
            idx = shuffled[:, start : start + bs]
            logits = self._forward_each(params, self.x[idx])
            loss = F.cross_entropy(logits.flatten(0, 1), self.y[idx].flatten(), reduction="sum")
            opt.zero_grad(set_to_none=True)
            (loss / idx.shape[1]).backward()
            opt.step()
            self._proximal(params, anchor)

    def _private_epoch(self, params, opt, members, anchor) -> None:  # type: ignore[no-untyped-def]
        """One DP-SGD epoch in every lane: ceil(n / batch_size) Poisson batches, as the
        target's DP trainer takes, each a clipped, noised, expected-batch-scaled step."""
        dp, size = self.job.dp, members.shape[1]
        assert dp is not None
        expected = max(1, round(dp.sample_rate * size))
        for _ in range(self.job.settings.steps_per_epoch(size)):
            idx, weight = poisson_batches(members, dp.sample_rate, self.group_gen)
            how = dict(
                max_grad_norm=dp.max_grad_norm,
                noise_multiplier=dp.noise_multiplier,
                expected_batch_size=expected,
                generator=self.group_gen,
            )
            xb, yb = self.x[idx], self.y[idx]
            if self.trainer == "vectorised":
                assert self.arch is not None
                private = linear_private_gradients(self.arch.ops, params, xb, yb, weight, **how)
            else:
                grads = per_sample_grads(self.base, params, {}, xb, yb)
                private = private_gradients(grads, weight, **how)
            for name, p in params.items():
                p.grad = private[name]
            opt.step()
            self._proximal(params, anchor)

    def _proximal(self, params: Tensors, anchor: Tensors) -> None:
        """FedProx's proximal step towards the round's start, after each optimiser step, as
        LocalTrainer._proximal_step does."""
        s = self.job.settings
        if s.fedprox_mu <= 0:
            return
        with torch.no_grad():
            for k, p in params.items():
                p.sub_(p - anchor[k], alpha=s.lr * s.fedprox_mu)


def train_group(
    job: ReferenceJob, model_factory: Callable[[], nn.Module], rows: Sequence[int]
) -> Tensors:
    """Reference models `rows` of the job, trained as FedAvg runs -> parameters (len(rows),
    ...). A model's result depends only on its own row, never on the rest of the group."""
    c = job.num_clients
    models = init_models(model_factory, rows, job.seed, job.init_state)
    glob = {k: v.detach().clone() for k, v in stack_module_state(models)[0].items()}
    lanes = Lanes(job, model_factory, rows)
    samplers = [np.random.default_rng([job.seed, 47, i]) for i in rows]
    per_round = max(1, round(job.client_fraction * c))
    average = c > 1 or job.server_lr != 1.0
    for r in range(job.rounds):
        picked = [
            sorted(j * c + int(k) for k in rng.choice(c, size=per_round, replace=False))
            for j, rng in enumerate(samplers)
        ]
        flat = [lane for model in picked for lane in model]
        owner = torch.tensor([lane // c for lane in flat])
        start = {k: v[owner] for k, v in glob.items()}
        local = lanes.train(start, flat)
        if job.update_transforms:
            _transform_updates(local, start, job, [lanes.lane_ids[k] for k in flat], r)
        if not average:
            glob = local
            continue
        for k, g in glob.items():
            mean = local[k].view(len(rows), per_round, *g.shape[1:]).mean(dim=1)
            glob[k] = g + job.server_lr * (mean - g)
    return glob


def _transform_updates(
    local: Tensors, start: Tensors, job: ReferenceJob, lane_ids: list[int], round_: int
) -> None:
    """Apply the client-side update defenses to each lane's update (local - start)."""
    with torch.no_grad():
        for i, lane in enumerate(lane_ids):
            update = {k: p[i] - start[k][i] for k, p in local.items()}
            gen = seeded_generator(job.seed, lane, round_, 53)
            for transform in job.update_transforms:
                update = transform(update, gen)
            for k, p in local.items():
                p[i].copy_(start[k][i] + update[k])
