"""SGD arithmetic without torch.optim.

Building any `torch.optim` optimiser imports `torch._dynamo` (about 1.3 s on this machine, via
`Optimizer.add_param_group`'s `_disable_dynamo` wrapper), so plain local training steps with
these functions instead. They repeat `torch.optim.SGD`'s single-tensor update op for op
(weight decay added to the gradient, heavy-ball momentum without dampening, then the step), so
results are bitwise the same (tests/test_engine.py compares them with torch.optim.SGD). They
are elementwise, so they serve one client's tensors and stacked [clients, ...] tensors alike.
"""

from __future__ import annotations

import torch


def sgd_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    buffers: list[torch.Tensor | None],
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> None:
    """One in-place SGD step; `buffers` holds momentum buffers (None before the first step)."""
    with torch.no_grad():
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if weight_decay != 0:
                g = g.add(p, alpha=weight_decay)
            if momentum != 0:
                buf = buffers[i]
                if buf is None:
                    buf = g.detach().clone()
                    buffers[i] = buf
                else:
                    buf.mul_(momentum).add_(g, alpha=1)
                g = buf
            p.add_(g, alpha=-lr)


def proximal_update(
    params: list[torch.Tensor], anchor: list[torch.Tensor], *, lr: float, mu: float
) -> None:
    """FedProx (Li et al. 2020): the gradient step of mu/2 ||w - w_global||^2, applied after the
    optimiser step (it does not depend on data, so it also composes with DP-SGD)."""
    if mu == 0:
        return
    with torch.no_grad():
        for p, a in zip(params, anchor, strict=True):
            p.sub_(p - a, alpha=lr * mu)
