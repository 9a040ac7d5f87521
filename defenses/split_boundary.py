"""Defenses at the split boundary: what crosses the cut layer, in either direction.

- NoPeek (Vepakomma et al. 2020, "NoPeek: Information leakage reduction to share activations in
  distributed deep learning"): the client adds alpha * dCor(x, activations) to its loss, so the
  activations it sends carry less information about its raw inputs.
- Activation noise: Gaussian noise on the activations before they leave the client (Titcombe et
  al. 2021, "Practical defences against model inversion attacks for split neural networks").
- Gradient perturbation protecting labels (Li et al. 2022, "Label Leakage and Protection in
  Two-party Split Learning"): the label party perturbs the cut-layer gradients it sends. The
  paper's `max_norm` heuristic adds Gaussian noise to each example's gradient so that every
  gradient has the expected norm of the largest one in the batch (norms stop telling classes
  apart); `gaussian` adds isotropic noise scaled to the batch's mean gradient norm.
DP-SGD on the bottom model is the ordinary `dp_sgd` defense: the split topology hands it the
bottom model as the local model to train.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from privlab.defenses.base import Defense, Placement


def _pairwise(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows, from the Gram matrix (|a|^2 + |b|^2 - 2 a.b): no
    [B, B, D] difference tensor (for a batch of 32 camera images that was 25 MB per call, and
    NoPeek made its rounds 8x slower). The diagonal is exactly zero and sqrt's gradient there
    is masked, as for the direct formula."""
    flat = x.reshape(len(x), -1).double()
    sq = flat.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * flat @ flat.T).clamp(min=0.0)
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    d2 = d2 * off
    return torch.sqrt(d2 + 1e-18) * (d2 > 0)


def _centred(d: torch.Tensor) -> torch.Tensor:
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation dCor(x, z) in [0, 1] (Szekely et al. 2007), differentiable.

    Rows are samples; any trailing shape is flattened. Uses the (biased) V-statistics with
    double-centred Euclidean distance matrices, as NoPeek does.
    """
    a, b = _centred(_pairwise(x)), _centred(_pairwise(z))
    dcov2_xz = (a * b).mean()
    dvar_x, dvar_z = (a * a).mean(), (b * b).mean()
    denom = torch.sqrt(dvar_x * dvar_z)
    if denom <= 0:
        return torch.zeros((), dtype=torch.float64)
    return torch.sqrt(torch.clamp(dcov2_xz / denom, min=0.0))


class SplitBoundaryDefense(Defense):
    """Base class: hooks the split topology calls at the cut layer (all default to no-ops)."""

    placement = Placement.SPLIT_BOUNDARY
    topologies = frozenset({"split"})

    def client_penalty(self, x: torch.Tensor, activations: torch.Tensor) -> torch.Tensor | None:
        """An extra term for the client's loss (differentiable in the activations)."""
        return None

    def protect_activations(
        self, activations: torch.Tensor, *, generator: torch.Generator
    ) -> torch.Tensor:
        return activations

    def protect_gradients(self, grad: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        return grad


class NoPeekParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(default=1.0, ge=0)
    """Weight of dCor(x, activations) in the client's loss."""


class NoPeek(SplitBoundaryDefense):
    """NoPeek: distance-correlation penalty between inputs and cut-layer activations."""

    Params = NoPeekParams

    def client_penalty(self, x: torch.Tensor, activations: torch.Tensor) -> torch.Tensor | None:
        if len(x) < 2 or self.params.alpha == 0:
            return None
        return self.params.alpha * distance_correlation(x, activations).to(activations.dtype)


class ActivationNoiseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sigma: float = Field(default=0.5, gt=0)
    """Standard deviation of the Gaussian noise added to each activation."""


class ActivationNoise(SplitBoundaryDefense):
    """Gaussian noise on cut-layer activations before they leave the client."""

    Params = ActivationNoiseParams

    def protect_activations(
        self, activations: torch.Tensor, *, generator: torch.Generator
    ) -> torch.Tensor:
        noise = torch.randn(activations.shape, generator=generator, dtype=activations.dtype)
        return activations + self.params.sigma * noise


class GradientPerturbationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["max_norm", "gaussian"] = "max_norm"
    scale: float = Field(default=1.0, gt=0)
    """max_norm: multiplies the noise that equalises norms; gaussian: noise std relative to
    the batch's mean per-example gradient norm."""


def max_norm_noise_std(grad: torch.Tensor) -> torch.Tensor:
    """Per-example noise std so that E||g_i + n_i||^2 = max_j ||g_j||^2 (Li et al. 2022)."""
    flat = grad.reshape(len(grad), -1)
    norms2 = flat.pow(2).sum(1)
    d = flat.shape[1]
    return torch.sqrt(torch.clamp(norms2.max() - norms2, min=0.0) / d)


class GradientPerturbation(SplitBoundaryDefense):
    """Label protection: noise on the cut-layer gradients the label party sends back."""

    Params = GradientPerturbationParams

    def protect_gradients(self, grad: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(grad.shape, generator=generator, dtype=grad.dtype)
        flat = grad.reshape(len(grad), -1)
        if self.params.mode == "max_norm":
            std = max_norm_noise_std(grad)
        else:
            std = flat.norm(dim=1).mean() / max(flat.shape[1], 1) ** 0.5 * torch.ones(len(grad))
        shape = (len(grad),) + (1,) * (grad.dim() - 1)
        return grad + self.params.scale * std.reshape(shape).to(grad.dtype) * noise
