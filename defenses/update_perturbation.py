"""Cheap client-side defenses against gradient inversion: pruning and additive noise.

Gradient pruning / top-k sparsification (Zhu et al. 2019, "Deep Leakage from Gradients",
Sec. 5: pruning more than ~20% of the smallest gradients stops DLG on their models; Lin et al.
2018 deep gradient compression) keeps only the largest-magnitude entries of the update.
Additive Gaussian noise (Zhu et al. 2019, Sec. 5) perturbs every entry; with `clip_norm` the
update is first clipped to an L2 norm, as in DP-FedAvg's client step (no accounting here: this
is a heuristic comparison point, DP-SGD is the defense with a formal guarantee).
Both run on the device before the update leaves it, so every observer sees the changed update.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from privlab.defenses.base import ClientUpdateDefense

Update = dict[str, torch.Tensor]


class PruningParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prune_fraction: float = Field(default=0.9, ge=0, lt=1)
    """Share of entries set to zero (the smallest by magnitude)."""
    scope: Literal["global", "layer"] = "global"
    """Rank magnitudes over the whole update, or within each tensor."""


def prune_smallest(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero the `fraction` of entries with the smallest magnitude (ties broken by position)."""
    flat = values.reshape(-1)
    drop = int(fraction * flat.numel())
    if drop == 0:
        return values.clone()
    order = torch.argsort(flat.abs(), stable=True)
    out = flat.clone()
    out[order[:drop]] = 0
    return out.reshape(values.shape)


class GradientPruning(ClientUpdateDefense):
    """Gradient pruning / top-k sparsification of each client update (Zhu et al. 2019)."""

    Params = PruningParams

    def transform(self, update: Update, *, generator: torch.Generator) -> Update:
        p: PruningParams = self.params
        if p.scope == "layer":
            return {k: prune_smallest(v, p.prune_fraction) for k, v in update.items()}
        keys = list(update)
        flat = torch.cat([update[k].reshape(-1) for k in keys])
        pruned = prune_smallest(flat, p.prune_fraction)
        out, pos = {}, 0
        for k in keys:
            n = update[k].numel()
            out[k] = pruned[pos : pos + n].reshape(update[k].shape)
            pos += n
        return out


class NoiseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    std: float = Field(default=1e-2, ge=0)
    """Standard deviation of the Gaussian noise added to every entry."""
    clip_norm: float | None = Field(default=None, gt=0)
    """Clip the update's L2 norm to this value before adding noise (none: no clipping)."""


def clip_update(update: Update, max_norm: float) -> Update:
    norm = torch.sqrt(sum((v.double() ** 2).sum() for v in update.values()))
    scale = min(1.0, max_norm / (float(norm) + 1e-12))
    return {k: v * scale for k, v in update.items()}


class UpdateNoise(ClientUpdateDefense):
    """Additive Gaussian noise on each client update, optionally after L2 clipping."""

    Params = NoiseParams

    def transform(self, update: Update, *, generator: torch.Generator) -> Update:
        p: NoiseParams = self.params
        if p.clip_norm is not None:
            update = clip_update(update, p.clip_norm)
        return {
            k: v + p.std * torch.randn(v.shape, generator=generator, dtype=v.dtype)
            for k, v in update.items()
        }
