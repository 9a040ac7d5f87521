"""DP-SGD's clipped-and-noised gradient without per-sample gradients, for stacks of Linear layers.

Book-keeping clipping (Bu, Wang, Zha and Karypis 2023, "Differentially Private Optimization on
Large Model at Small Cost", ICML; the norm trick is Goodfellow 2015's): for a Linear layer
z = a W^T + b on a batch of flat inputs, record i's gradient of W is the outer product g_i a_i^T
of its output gradient g_i and input a_i, so its squared norm is ||g_i||^2 ||a_i||^2 (plus
||g_i||^2 for the bias), and the clipped sum is sum_i c_i g_i a_i^T = (c * G)^T A: one forward,
one backward to the layer outputs, then one matmul per layer. No (B, d_out, d_in) tensor is
ever built. The per-sample norms, clip factors C / (norm + 1e-6) capped at 1, the noise
N(0, (sigma C)^2) drawn per parameter in parameter order with torch.normal and the division by
the expected batch size are Opacus' DPOptimizer's (loss_reduction="mean"), so for the same
generator state both produce the same step (tests/test_dp_fast.py compares them).

`supports(model)` says where this applies: an nn.Sequential of Flatten, Linear and parameter-free
element-wise activations, every trainable parameter in a Linear. Anything else trains through
Opacus. This module's autograd version (backward to the layer outputs) serves every such model;
Linear stacks with biases and ReLU / tanh / sigmoid (the built-in MLP and logistic regression)
take the same step written out in privlab.stacked_dp (`private_step`: no autograd, buffers
reused), in FastDPSGDTrainer and, stacked over clients, privlab.engine.vectorised_dp.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Identity)


def supports(model: nn.Module) -> bool:
    """True when every module is Flatten, Linear or an element-wise activation (in a Sequential)
    and every parameter belongs to a Linear layer."""
    if not isinstance(model, nn.Sequential):
        return False
    for m in model:
        if isinstance(m, nn.Linear):
            continue
        if isinstance(m, nn.Flatten) and m.end_dim == -1:
            continue
        if isinstance(m, ELEMENTWISE) and not any(True for _ in m.parameters()):
            continue
        return False
    return True


def dp_parameters(model: nn.Sequential) -> list[nn.Parameter]:
    """The trainable parameters in the order the fast path fills and noises them (the order of
    model.parameters(), as Opacus' DPOptimizer uses)."""
    return [p for p in model.parameters() if p.requires_grad]


def clipped_grad_sum(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float
) -> tuple[list[torch.Tensor], torch.Tensor, float]:
    """(sum_i clip(grad_i) per trainable parameter, per-sample gradient norms, mean loss).

    grad_i is the gradient of record i's own cross-entropy; clip scales it by
    min(1, C / (||grad_i|| + 1e-6)). An empty batch gives zeros."""
    params = dp_parameters(model)
    if len(y) == 0:
        return [torch.zeros_like(p) for p in params], torch.zeros(0), 0.0
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    linears: list[nn.Linear] = []
    h = x
    for m in model:
        if isinstance(m, nn.Linear):
            inputs.append(h.detach())
            h = m(h)
            outputs.append(h)
            linears.append(m)
        else:
            h = m(h)
    loss = F.cross_entropy(h, y, reduction="sum")
    grads_out = torch.autograd.grad(loss, outputs)
    sq = torch.zeros(len(y), dtype=x.dtype)
    for lin, a, g in zip(linears, inputs, grads_out, strict=True):
        if lin.weight.requires_grad:
            sq += g.pow(2).sum(1) * a.pow(2).sum(1)
        if lin.bias is not None and lin.bias.requires_grad:
            sq += g.pow(2).sum(1)
    norms = sq.sqrt()
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    by_param: dict[int, torch.Tensor] = {}
    for lin, a, g in zip(linears, inputs, grads_out, strict=True):
        cg = g * factor[:, None]
        if lin.weight.requires_grad:
            by_param[id(lin.weight)] = cg.T @ a
        if lin.bias is not None and lin.bias.requires_grad:
            by_param[id(lin.bias)] = cg.sum(0)
    summed = [by_param[id(p)] for p in params]
    return summed, norms, float(loss.detach()) / len(y)


def add_noise_and_scale(
    summed: list[torch.Tensor],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    generator: torch.Generator | None,
) -> list[torch.Tensor]:
    """(clipped sum + N(0, (sigma C)^2)) / expected batch size, per parameter in order: the
    Gaussian mechanism of one DP-SGD step (noise drawn exactly as Opacus draws it)."""
    std = noise_multiplier * max_grad_norm
    out = []
    for s in summed:
        if std > 0:
            noise = torch.normal(mean=0, std=std, size=s.shape, generator=generator)
            s = s + noise
        out.append(s / expected_batch_size)
    return out


def dp_gradient(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: int,
    generator: torch.Generator | None,
) -> tuple[list[torch.Tensor], float]:
    """One DP-SGD gradient (a pure function of the model, batch, clip, noise and generator):
    the privatised gradient per trainable parameter, and the batch's mean loss."""
    summed, _, loss = clipped_grad_sum(model, x, y, max_grad_norm)
    grads = add_noise_and_scale(
        summed,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        generator=generator,
    )
    return grads, loss
