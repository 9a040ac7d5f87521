"""Reference (shadow) models for membership attacks: trained together, cached by content.

LiRA and RMIA need many models trained with the target's recipe on subsets of data the attacker
holds. Training them one by one is the cost that makes LiRA slow, so here they train together:
each model is a FedAvg run of `num_clients` lanes (privlab.reference_training), and all lanes
of a group of GROUP_SIZE models run as one batched computation: the vectorised engine's batched
matrix products for Flatten-Linear-activation models, else stacked parameters under one vmapped
functional_call; `trainer = "sequential"` trains one lane after another (the reference path,
equal to the others to floating-point rounding). Every model's randomness (initial weights,
lane split, client sampling, batch order; DP-SGD's batches and noise: its group's) comes from
its own index, so groups are independent units of work: they run one after another, over local
worker processes or as Ray tasks (privlab.fanout) with the same result. Every model's subset
has the same size.
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
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from privlab import __version__, fanout
from privlab.reference_cache import load_entry, save_entry
from privlab.reference_training import train_group
from privlab.stacked_dp import PrivateRecipe
from privlab.training import State, TrainSettings

UpdateTransform = Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]
CACHE_FORMAT = 3
GROUP_SIZE = 8
"""Models per unit of work (fixed, so results never depend on where groups run)."""
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
    trainer: str = "auto"
    """Lane trainer (privlab.reference_training.TRAINERS); "auto": vectorised where it can."""

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
            "trainer": self.trainer,
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
    sizes = np.asarray(job.masks, dtype=bool).sum(axis=1)
    if len(set(sizes.tolist())) != 1:
        raise ValueError("every reference model must train on the same number of records")
    if sizes[0] < job.num_clients:
        raise ValueError(f"{sizes[0]} records cannot be shared by {job.num_clients} clients")
    groups = [
        (job, model_factory, list(range(s, min(s + GROUP_SIZE, len(job.masks)))))
        for s in range(0, len(job.masks), GROUP_SIZE)
    ]
    trained = fanout.current().map(train_group, groups)
    params = {k: torch.cat([g[k] for g in trained]) for k in trained[0]}
    stacked = StackedModels(base, params, {})
    if use_cache:
        save_entry(path, key, stacked.params, stacked.buffers)
    return stacked, False


def model_key(spec_json: str, input_shape: tuple[int, ...], num_classes: int) -> str:
    return json.dumps({"spec": spec_json, "shape": list(input_shape), "classes": num_classes})
