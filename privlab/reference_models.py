"""Reference (shadow) models for membership attacks: trained together, cached by content.

LiRA and RMIA need many models trained with the target's recipe on subsets of data the attacker
holds. Training them one by one is the cost that makes LiRA slow, so here all M models train in
one loop: their parameters are stacked (torch.func.stack_module_state) and one vmapped
functional_call runs every model on its own mini-batch. Summing the models' losses gives each
model exactly its own gradient (the models share no parameters), so a plain torch.optim.SGD over
the stacked tensors takes M independent SGD steps with the recipe's lr, momentum and weight
decay. Every model's subset has the same size, so all models take the same number of steps.
A federated recipe is emulated faithfully: each reference model is a FedAvg run whose subset is
split across `num_clients` lanes that train `local_epochs` from the model's global weights each
round and are then averaged (all clients every round; equal shares, so the plain mean).
Training-time defenses are mirrored as the recipe states them: DP-SGD (`dp`: per-sample
clipping and noise on Poisson batches, privlab.stacked_dp), FedProx's proximal step, and the
client-side update transforms (clipping, noise, pruning: `update_transforms`, applied to each
lane's update before averaging).

Trained models are cached under `.privlab-cache/` (or $PRIVLAB_CACHE_DIR) keyed by a SHA-256 of
everything that defines them: the pool's bytes, the membership masks, the recipe, the model
spec, the mirrored defenses, the starting weights, the seed and the privlab version. A changed
target or data set therefore never reuses a stale cache; entries carry a content checksum and
are rebuilt when damaged (privlab.reference_cache).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from privlab import __version__
from privlab.reference_cache import load_entry, save_entry
from privlab.stacked_dp import PrivateRecipe, per_sample_grads, poisson_batches, private_gradients
from privlab.training import State, TrainSettings, seeded_generator

UpdateTransform = Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]
CACHE_FORMAT = 2
CACHE_ENV = "PRIVLAB_CACHE_DIR"
DEFAULT_CACHE_DIR = ".privlab-cache"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


@dataclass(frozen=True)
class ReferenceJob:
    """Everything that defines a set of reference models (and hence their cache key)."""

    x: np.ndarray
    y: np.ndarray
    masks: np.ndarray
    """(M, N) booleans: model i trains on the pool records where masks[i] is True."""
    settings: TrainSettings
    rounds: int
    """Rounds of `settings.local_epochs` local epochs (a central recipe: num_clients = 1)."""
    num_clients: int
    server_lr: float
    model_key: str
    """JSON of the model spec with input shape and class count: the architecture."""
    seed: int
    client_fraction: float = 1.0
    init_state: State | None = None
    """Common starting weights (e.g. the global model of a round); None: fresh inits."""
    dp: PrivateRecipe | None = None
    """The target's DP-SGD (None: plain SGD)."""
    update_transforms: tuple[UpdateTransform, ...] = ()
    """Client-side transforms of each lane's update (clip, noise, ...), in the target's order."""
    defenses_key: str = ""
    """JSON of the mirrored defenses (names and params): their part of the cache key."""

    def key(self) -> str:
        h = hashlib.sha256()
        for arr in (self.x, self.y, self.masks):
            a = np.ascontiguousarray(arr)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        meta = {
            "settings": self.settings.__dict__,
            "rounds": self.rounds,
            "num_clients": self.num_clients,
            "server_lr": self.server_lr,
            "client_fraction": self.client_fraction,
            "model": self.model_key,
            "seed": self.seed,
            "dp": None if self.dp is None else dataclasses.asdict(self.dp),
            "defenses": self.defenses_key,
            "version": __version__,
            "format": CACHE_FORMAT,
        }
        h.update(json.dumps(meta, sort_keys=True).encode())
        if self.init_state is not None:
            for name in sorted(self.init_state):
                t = self.init_state[name].detach().contiguous().cpu()
                h.update(name.encode())
                h.update(t.numpy().tobytes())
        return h.hexdigest()


def subset_masks(
    pool_size: int, num_models: int, subset_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Membership masks, each row holding exactly `subset_size` records, balanced per record.

    Model i takes the `subset_size` records that are IN the fewest earlier models (ties broken
    at random), so every record is IN for about subset_size / pool_size of the models (counts
    differ by at most one), as the LiRA reference code keeps each record in a fixed share of
    the models. When the subset is half the pool, models come in complementary pairs and every
    record has both IN and OUT models.
    """
    if not 0 < subset_size <= pool_size:
        raise ValueError(f"subset size {subset_size} must lie in 1..{pool_size}")
    masks = np.zeros((num_models, pool_size), dtype=bool)
    counts = np.zeros(pool_size, dtype=np.int64)
    for i in range(num_models):
        order = np.lexsort((rng.random(pool_size), counts))
        masks[i, order[:subset_size]] = True
        counts += masks[i]
    return masks


class StackedModels:
    """M models of one architecture with stacked parameters, evaluated by one vmapped call."""

    def __init__(self, base: nn.Module, params: dict[str, torch.Tensor], buffers: dict) -> None:
        self.base = base
        self.params = params
        self.buffers = buffers

    @property
    def num_models(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def _call(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def forward_each(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, B, ...) one batch per model -> logits (M, B, C)."""
        return vmap(self._call)(self.params, self.buffers, x)

    @torch.no_grad()
    def logits(self, x: np.ndarray | torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """Every model on the same inputs -> logits (M, N, C), float64."""
        self.base.eval()
        xt = torch.as_tensor(x)
        outs = []
        shared = vmap(self._call, in_dims=(0, 0, None))
        for s in range(0, len(xt), chunk):
            outs.append(shared(self.params, self.buffers, xt[s : s + chunk]).double())
        return torch.cat(outs, dim=1)


def _init_models(
    model_factory: Callable[[], nn.Module], num_models: int, seed: int, init: State | None
) -> list[nn.Module]:
    models = []
    for i in range(num_models):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeded_generator(seed, i, 31).initial_seed() % (2**31)))
            model = model_factory()
        if init is not None:
            model.load_state_dict(init)
        models.append(model)
    return models


def _lane_members(masks: np.ndarray, num_clients: int, gen: np.random.Generator) -> np.ndarray:
    """(M * C, size // C) pool indices: each model's subset dealt out to its C client lanes."""
    lanes = []
    for row in masks:
        idx = gen.permutation(np.flatnonzero(row))
        share = len(idx) // num_clients
        lanes += [idx[c * share : (c + 1) * share] for c in range(num_clients)]
    return np.stack(lanes)


def _plain_epoch(stacked, opt, members, x, y, bs, gen, prox) -> None:  # type: ignore[no-untyped-def]
    """One shuffled epoch of mini-batch SGD in every lane."""
    lanes, size = members.shape
    order = torch.argsort(torch.rand(lanes, size, generator=gen), dim=1)
    shuffled = torch.gather(members, 1, order)
    for s in range(0, size, bs):
        idx = shuffled[:, s : s + bs]
        logits = stacked.forward_each(x[idx])
        loss = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), reduction="sum")
        opt.zero_grad(set_to_none=True)
        (loss / idx.shape[1]).backward()
        opt.step()
        prox()


def _private_epoch(stacked, opt, members, x, y, settings, dp, gen, prox) -> None:  # type: ignore[no-untyped-def]
    """One DP-SGD epoch in every lane: ceil(n / batch_size) Poisson batches, as the target's
    DP trainer takes, each a clipped, noised, expected-batch-scaled step."""
    size = members.shape[1]
    expected = max(1, round(dp.sample_rate * size))
    for _ in range(settings.steps_per_epoch(size)):
        idx, weight = poisson_batches(members, dp.sample_rate, gen)
        grads = per_sample_grads(stacked.base, stacked.params, stacked.buffers, x[idx], y[idx])
        private = private_gradients(
            grads,
            weight,
            max_grad_norm=dp.max_grad_norm,
            noise_multiplier=dp.noise_multiplier,
            expected_batch_size=expected,
            generator=gen,
        )
        for name, p in stacked.params.items():
            p.grad = private[name]
        opt.step()
        prox()


def _proximal(params: dict[str, torch.Tensor], start: State, settings: TrainSettings) -> None:
    """FedProx's proximal step towards the round's start, after each optimiser step, as
    LocalTrainer._proximal_step does."""
    if settings.fedprox_mu <= 0:
        return
    with torch.no_grad():
        for k, p in params.items():
            p.sub_(p - start[k], alpha=settings.lr * settings.fedprox_mu)


def _transform_updates(
    params: dict[str, torch.Tensor],
    start: State,
    transforms: tuple[UpdateTransform, ...],
    seed: int,
    round_: int,
) -> None:
    """Apply the client-side update defenses to each lane's update (local - start)."""
    lanes = next(iter(params.values())).shape[0]
    with torch.no_grad():
        for lane in range(lanes):
            update = {k: p[lane] - start[k][lane] for k, p in params.items()}
            gen = seeded_generator(seed, lane, round_, 53)
            for transform in transforms:
                update = transform(update, gen)
            for k, p in params.items():
                p[lane].copy_(start[k][lane] + update[k])


def _train(job: ReferenceJob, model_factory: Callable[[], nn.Module]) -> StackedModels:
    masks = np.asarray(job.masks, dtype=bool)
    num_models, clients = masks.shape[0], job.num_clients
    sizes = masks.sum(axis=1)
    if len(set(sizes.tolist())) != 1:
        raise ValueError("every reference model must train on the same number of records")
    if sizes[0] < clients:
        raise ValueError(f"{sizes[0]} records cannot be shared by {clients} clients")
    models = _init_models(model_factory, num_models, job.seed, job.init_state)
    lanes_models = [m for m in models for _ in range(clients)]
    params, buffers = stack_module_state(lanes_models)
    base = model_factory().to("meta")
    stacked = StackedModels(base, params, buffers)
    x, y = torch.as_tensor(job.x), torch.as_tensor(job.y)
    members = torch.as_tensor(_lane_members(masks, clients, np.random.default_rng([job.seed, 39])))
    bs = job.settings.batch_size
    gen = seeded_generator(job.seed, 37)
    sampler = np.random.default_rng([job.seed, 47])
    per_round = max(1, round(job.client_fraction * clients))
    base.train()
    dp = job.dp
    for r in range(job.rounds):
        start = {k: v.detach().clone() for k, v in params.items()}
        opt = torch.optim.SGD(  # fresh optimiser state every round, as the local trainers do
            list(params.values()),
            lr=job.settings.lr,
            momentum=job.settings.momentum,
            weight_decay=job.settings.weight_decay,
        )
        prox = functools.partial(_proximal, params, start, job.settings)
        for _ in range(job.settings.local_epochs):
            if dp is None:
                _plain_epoch(stacked, opt, members, x, y, bs, gen, prox)
            else:
                _private_epoch(stacked, opt, members, x, y, job.settings, dp, gen, prox)
        if job.update_transforms:
            _transform_updates(params, start, job.update_transforms, job.seed, r)
        if clients > 1 or job.server_lr != 1.0:
            keep = np.zeros((num_models, clients))
            for i in range(num_models):
                keep[i, sampler.choice(clients, size=per_round, replace=False)] = 1.0 / per_round
            weight = torch.as_tensor(keep, dtype=torch.float32)
            with torch.no_grad():
                for k, p in params.items():
                    g = start[k].view(num_models, clients, *p.shape[1:])[:, :1]
                    local = p.view(num_models, clients, *p.shape[1:])
                    w = weight.view(num_models, clients, *([1] * (p.dim() - 1)))
                    new = g + job.server_lr * ((w * local).sum(dim=1, keepdim=True) - g)
                    p.copy_(new.expand_as(local).reshape(p.shape))
    keep = torch.arange(num_models) * clients
    final = {k: p.detach()[keep].clone() for k, p in params.items()}
    bufs = {k: b[keep].clone() for k, b in buffers.items()}
    return StackedModels(base, final, bufs)


def train_reference_models(
    job: ReferenceJob,
    model_factory: Callable[[], nn.Module],
    *,
    use_cache: bool = True,
) -> tuple[StackedModels, bool]:
    """Train (or load from the cache) the job's models; returns (models, loaded_from_cache)."""
    key = job.key()
    path = cache_dir() / f"ref-{key}.pt"
    base = model_factory().to("meta")
    if use_cache:
        num = len(job.masks)
        expected = {k: (num, *v.shape) for k, v in base.named_parameters()}
        loaded = load_entry(path, key, expected)
        if loaded is not None:
            return StackedModels(base, *loaded), True
    stacked = _train(job, model_factory)
    if use_cache:
        save_entry(path, key, stacked.params, stacked.buffers)
    return stacked, False


def model_key(spec_json: str, input_shape: tuple[int, ...], num_classes: int) -> str:
    return json.dumps({"spec": spec_json, "shape": list(input_shape), "classes": num_classes})
