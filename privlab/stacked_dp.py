"""DP-SGD for stacked (vmapped) reference models: per-sample clipping and Gaussian noise.

The target's DP-SGD is Opacus' (Abadi et al. 2016, "Deep Learning with Differential Privacy"):
per-sample gradients, each clipped to L2 norm C (factor min(1, C / (norm + 1e-6))), summed,
plus N(0, sigma^2 C^2) noise per coordinate, divided by the expected batch size q * n, on
Poisson-sampled batches. Reference models that mirror such a target must train the same way,
or they understate its leakage: here torch.func computes per-sample gradients of every model
and every record in one nested vmap, and the same clip, sum, noise and scaling follow
(tests/test_reference_dp.py checks one step against Opacus' DPOptimizer).

For Linear stacks the same step is written out (`clipped_sums`: ghost norms, no per-record
gradients; `private_step`: noise from each model's own generator, in reused buffers). It is
the DP-SGD step of the targets themselves too: FastDPSGDTrainer (one model) and the vectorised
DP engine (privlab.engine.vectorised_dp: many clients stacked), tests/test_dp_fast.py.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from privlab.engine.stacked_sgd import activation_grad

Tensors = dict[str, torch.Tensor]
OPACUS_NORM_EPS = 1e-6
_ACT = {"relu": torch.relu_, "tanh": torch.tanh_, "sigmoid": torch.sigmoid_}  # in place


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
    """`private_gradients(per_sample_grads(...))` for a Linear stack without per-record
    gradients in memory (`clipped_sums`), then the same noise draws in the parameters' order
    from one generator (tests/test_reference_training.py)."""
    summed, _ = clipped_sums(ops, params, x, y, weight, max_grad_norm)
    return _noised_mean(summed, noise_multiplier * max_grad_norm, expected_batch_size, generator)


def clipped_sums(
    ops: tuple[tuple[str, str], ...],
    params: Tensors,
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | float | None,
    max_grad_norm: float,
    *,
    out: Tensors | None = None,
    losses: bool = False,
) -> tuple[Tensors, torch.Tensor | None]:
    """Per model, sum_i clip(grad_i) for a Linear stack (the ops of
    privlab.engine.vectorised.LinearStack; params stacked [M, ...]) on x [M, B, ...], y [M, B]:
    one forward and one backward to the layer outputs, written out.

    A record's weight gradient is the outer product dz h^T of the layer's output gradient and
    input, so its squared norm is |dz|^2 |h|^2 (plus |dz|^2 for the bias; Goodfellow 2015's
    trick, ghost / book-keeping clipping in Li et al. 2022 and Bu et al. 2023) and the clipped
    sum is one batched product (dz * factor)^T h: no per-record gradient is ever built. The
    factor is Opacus' min(1, C / (norm + 1e-6)), times `weight` ([M, B]: 0 on padding; a
    float; None: 1). With `out` the sums are added into it (onto drawn noise, say).
    Returns the sums in the parameters' order and, with `losses`, each model's summed
    cross-entropy over its rows [M] (padding included: ask only without padding)."""
    m, b = y.shape
    h = x.flatten(2) if x.dim() > 3 else x  # [M, B, features], also for an empty batch
    layout = _layout(ops, tuple(params))
    inputs: list[torch.Tensor] = []
    outputs: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for i, kind, name, w_key, b_key in layout.forward:
            if kind == "linear":
                inputs.append(h)
                w = params[w_key].transpose(1, 2)
                h = torch.baddbmm(params[b_key].unsqueeze(1), h, w)
            else:  # in place on the Linear layer's fresh output
                h = outputs[i] = _ACT[name](h)
        loss = None
        if losses:
            flat, labels = h.flatten(0, 1), y.reshape(-1)
            if m == 1:
                loss = F.cross_entropy(flat, labels, reduction="sum").view(1)
            else:
                loss = F.cross_entropy(flat, labels, reduction="none").view(m, b).sum(1)
        dz = torch.softmax(h, dim=2)  # minus the one-hot: the gradient of one record's loss
        dz.scatter_add_(2, y.unsqueeze(2), _minus_one(dz.dtype).expand(m, b, 1))
        grads: list[torch.Tensor] = []  # per Linear layer, last first
        for i, kind, name, w_key, _ in reversed(layout.forward):
            if kind == "act":
                dz = activation_grad(name, outputs[i], dz)
                continue
            grads.append(dz)
            if i > 0:
                dz = torch.bmm(dz, params[w_key])
        grads.reverse()
        sq: torch.Tensor | None = None
        for d, a in zip(grads, inputs, strict=True):  # |dz|^2 (|h|^2 + 1), over the layers
            h_sq = torch.linalg.vecdot(a, a).add_(1.0)
            d_sq = torch.linalg.vecdot(d, d)
            sq = d_sq.mul_(h_sq) if sq is None else sq.addcmul_(d_sq, h_sq)
        assert sq is not None
        factor = _clip_factor(sq, weight, max_grad_norm).unsqueeze(2)
        scaled = [d * factor for d in grads]
        summed = {}
        for key, layer, is_weight in layout.order:  # the parameters' order (noise's order)
            d = scaled[layer]
            if is_weight:
                dt, a = d.transpose(1, 2), inputs[layer]
                summed[key] = torch.bmm(dt, a) if out is None else out[key].baddbmm_(dt, a)
            else:
                summed[key] = d.sum(1) if out is None else out[key].add_(d.sum(1))
    return summed, loss


@dataclass(frozen=True)
class _Layout:
    forward: tuple[tuple[int, str, str, str, str], ...]  # (op index, kind, name, keys)
    order: tuple[tuple[str, int, bool], ...]  # per parameter: (key, Linear layer, weight?)


@functools.cache
def _layout(ops: tuple[tuple[str, str], ...], keys: tuple[str, ...]) -> _Layout:
    """The ops with their parameter keys, and each parameter's Linear layer (cached: the
    step runs thousands of times on the same ops)."""
    forward = tuple((i, k, n, f"{n}.weight", f"{n}.bias") for i, (k, n) in enumerate(ops))
    layer = {n: j for j, n in enumerate(n for k, n in ops if k == "linear")}
    order = []
    for key in keys:
        name, kind = key.rsplit(".", 1)
        order.append((key, layer[name], kind == "weight"))
    return _Layout(forward, tuple(order))


@functools.cache
def _minus_one(dtype: torch.dtype) -> torch.Tensor:
    return torch.full((1, 1, 1), -1.0, dtype=dtype)


def _clip_factor(
    sq: torch.Tensor, weight: torch.Tensor | float | None, max_grad_norm: float
) -> torch.Tensor:
    """Opacus' per-record clip factor min(1, C / (norm + 1e-6)), times the record's weight."""
    factor = (max_grad_norm / (sq.sqrt_() + OPACUS_NORM_EPS)).clamp_(max=1.0)
    return factor if weight is None else factor.mul_(weight)


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
    return pack_batches(members, poisson_mask(lanes, n, sample_rate, generator))


def poisson_mask(
    lanes: int, n: int, sample_rate: float, generator: torch.Generator
) -> torch.Tensor:
    """Poisson sampling (Opacus' DPDataLoader): record j joins batch l independently with rate
    q, one uniform draw per (batch, record) in one call: (L, n) booleans."""
    return torch.rand(lanes, n, generator=generator) < sample_rate


def pack_batches(members: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each lane's chosen members first, in member order, padded to the largest batch (at
    least 1) with weight 0: (indices (L, B), weight (L, B))."""
    width = max(1, int(chosen.sum(dim=1).max()))
    order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :width]
    return torch.gather(members, 1, order), torch.gather(chosen, 1, order).float()


def private_step(
    ops: tuple[tuple[str, str], ...],
    params: Tensors,
    noise: Tensors,
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None,
    *,
    max_grad_norm: float,
    stds: Sequence[float],
    generators: Sequence[torch.Generator],
    expected_batch_size: Sequence[int] | torch.Tensor,
    losses: bool = False,
) -> tuple[Tensors, torch.Tensor | None]:
    """One DP-SGD gradient (Abadi et al. 2016, as Opacus' DPOptimizer computes it) for each of
    M stacked Linear-stack models, each with its own generator and expected batch size E_m:
    (sum_i clip(grad_i) + N(0, std_m^2)) / E_m, written into the reusable `noise` buffers
    (stacked like `params`, at least M rows) and returned. `weight` [M, B]: 1 on real rows, 0
    on padding (None: all real). Model m's noise is drawn first, per parameter in
    order with torch.normal from generators[m] (`draw_noise`), and the clipped sum is added
    onto it: the draws are those Opacus makes for that model alone. The division by E_m is
    folded into the noise's standard deviation and the clip factors (equal to dividing the
    sum, to rounding). `expected_batch_size`: E per model, a sequence or a tensor [M]."""
    m = y.shape[0]
    rows = {k: v if v.shape[0] == m else v[:m] for k, v in noise.items()}
    sizes = (
        expected_batch_size.tolist()
        if isinstance(expected_batch_size, torch.Tensor)
        else expected_batch_size
    )
    draw_noise(rows, [s / e for s, e in zip(stds, sizes, strict=True)], generators)
    if m == 1:
        scale: torch.Tensor | float = 1.0 / sizes[0]
        scale = scale if weight is None else weight * scale
    else:
        if not isinstance(expected_batch_size, torch.Tensor):
            expected_batch_size = torch.tensor(expected_batch_size, dtype=x.dtype)
        inv = expected_batch_size.reciprocal().unsqueeze(1)
        scale = inv if weight is None else weight * inv
    return clipped_sums(ops, params, x, y, scale, max_grad_norm, out=rows, losses=losses)


def draw_noise(out: Tensors, stds: Sequence[float], generators: Sequence[torch.Generator]) -> None:
    """Model m's Gaussian noise N(0, stds[m]^2) per coordinate into row m of each tensor of
    `out`, parameter by parameter in order, from generators[m]: Opacus' `_generate_noise`
    draws (torch.normal of the parameter's shape) for each model alone."""
    for i, (std, gen) in enumerate(zip(stds, generators, strict=True)):
        for t in out.values():
            row = t[i]
            if std > 0:  # = torch.normal(0, std, size=row.shape, generator=gen, out=row)
                row.normal_(0.0, std, generator=gen)
            else:
                row.zero_()
