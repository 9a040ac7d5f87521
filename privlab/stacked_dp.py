"""DP-SGD for stacked (vmapped) reference models: per-sample clipping and Gaussian noise.

The target's DP-SGD is Opacus' (Abadi et al. 2016, "Deep Learning with Differential Privacy"):
per-sample gradients, each clipped to L2 norm C (factor min(1, C / (norm + 1e-6))), summed,
plus N(0, sigma^2 C^2) noise per coordinate, divided by the expected batch size q * n, on
Poisson-sampled batches. Reference models that mirror such a target must train the same way,
or they understate its leakage: here torch.func computes per-sample gradients of every model
and every record in one nested vmap, and the same clip, sum, noise and scaling follow
(tests/test_reference_dp.py checks one step against Opacus' DPOptimizer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

Tensors = dict[str, torch.Tensor]
OPACUS_NORM_EPS = 1e-6


@dataclass(frozen=True)
class PrivateRecipe:
    """The target's DP-SGD as its recipe states it (all public: the adversary knows them)."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    """Poisson sampling rate q of each party's batches."""


def per_sample_grads(
    base: nn.Module, params: Tensors, buffers: Tensors, x: torch.Tensor, y: torch.Tensor
) -> Tensors:
    """x (M, B, ...), y (M, B): gradient of each record's loss under its own model,
    -> {name: (M, B, *param_shape)}."""

    def loss(p: Tensors, b: Tensors, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(base, (p, b), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_record = vmap(grad(loss), in_dims=(None, None, 0, 0))
    detached = {k: v.detach() for k, v in params.items()}
    return vmap(per_record, in_dims=(0, 0, 0, 0))(detached, buffers, x, y)


def private_gradients(
    grads: Tensors,
    weight: torch.Tensor,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: int,
    generator: torch.Generator | None,
) -> Tensors:
    """Clip each record's gradient (all parameters jointly), sum the records with `weight`
    (M, B) (0 for padding), add N(0, (sigma C)^2) per coordinate, divide by the expected
    batch size: Opacus' DPOptimizer.pre_step for each of the M models."""
    first = next(iter(grads.values()))
    m, b = first.shape[:2]
    sq = sum(g.reshape(m, b, -1).pow(2).sum(-1) for g in grads.values())
    factor = _clip_factor(sq, weight, max_grad_norm)
    summed = {n: torch.einsum("mb,mb...->m...", factor.to(g.dtype), g) for n, g in grads.items()}
    return _noised_mean(summed, noise_multiplier * max_grad_norm, expected_batch_size, generator)


def linear_private_gradients(
    ops: tuple[tuple[str, str], ...],
    params: Tensors,
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: int,
    generator: torch.Generator | None,
) -> Tensors:
    """`private_gradients(per_sample_grads(...))` for a Linear stack (the ops of
    privlab.engine.vectorised.LinearStack) without per-record gradients in memory: a record's
    weight gradient is the outer product dz h^T of the layer's output gradient and input, so
    its squared norm is |dz|^2 |h|^2 (plus |dz|^2 for the bias; "ghost clipping", Goodfellow
    2015 / Li et al. 2022) and the clipped sum is one batched product (dz * factor)^T h. The
    same noise draws follow, in the parameters' order (tests/test_reference_training.py)."""
    m, b = y.shape
    h = x.reshape(m, b, -1)
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for i, (kind, name) in enumerate(ops):
            if kind == "linear":
                inputs[i] = h
                w, bias = params[f"{name}.weight"], params[f"{name}.bias"]
                h = torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))
            else:
                h = outputs[i] = getattr(torch, name)(h)
        dz = torch.softmax(h, dim=2) - F.one_hot(y, h.shape[2]).to(h.dtype)  # one record's loss
        layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for i in reversed(range(len(ops))):
            kind, name = ops[i]
            if kind == "act":
                dz = dz * _act_slope(name, outputs[i])
                continue
            layers[name] = (dz, inputs[i])
            if i > 0:
                dz = torch.bmm(dz, params[f"{name}.weight"])
        sq = sum(d.pow(2).sum(-1) * (a.pow(2).sum(-1) + 1) for d, a in layers.values())
        factor = _clip_factor(sq, weight, max_grad_norm).unsqueeze(2)
        summed = {}
        for key in params:  # the parameters' order, in which the noise is drawn
            name, kind = key.rsplit(".", 1)
            d, a = layers[name]
            scaled = d * factor
            summed[key] = (
                torch.bmm(scaled.transpose(1, 2), a) if kind == "weight" else scaled.sum(1)
            )
    return _noised_mean(summed, noise_multiplier * max_grad_norm, expected_batch_size, generator)


def _act_slope(name: str, out: torch.Tensor) -> torch.Tensor:
    """d(activation)/d(input) from the activation's output."""
    if name == "relu":
        return (out > 0).to(out.dtype)
    if name == "tanh":
        return 1 - out * out
    return out * (1 - out)  # sigmoid


def _clip_factor(sq: torch.Tensor, weight: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Opacus' per-record clip factor min(1, C / (norm + 1e-6)), times the record's weight."""
    return (max_grad_norm / (sq.sqrt() + OPACUS_NORM_EPS)).clamp(max=1.0) * weight


def _noised_mean(
    summed: Tensors, std: float, expected_batch_size: int, generator: torch.Generator | None
) -> Tensors:
    out = {}
    for name, g in summed.items():
        if std > 0:
            g = g + torch.normal(0.0, std, size=g.shape, generator=generator, dtype=g.dtype)
        out[name] = g / expected_batch_size
    return out


def poisson_batches(
    members: torch.Tensor, sample_rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Poisson-sampled batch per lane: members (L, n) pool indices -> (indices (L, B),
    weight (L, B)): each record joins independently with rate q, padded to the largest batch
    with weight 0 (an empty batch is all padding: a pure-noise step, as Opacus takes)."""
    lanes, n = members.shape
    chosen = torch.rand(lanes, n, generator=generator) < sample_rate
    width = max(1, int(chosen.sum(dim=1).max()))
    order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :width]
    return torch.gather(members, 1, order), torch.gather(chosen, 1, order).float()
