"""The first Linear layer of stacked clients in record space.

The first Linear layer is usually the widest (64 or 784 inputs) while a client holds few
records. Its weight after any number of SGD steps stays in the span of the client's own records:
every gradient is dz^T x_batch, a combination of the client's rows, and momentum, weight decay
and FedProx's proximal step are linear in the weight (the representer form of a linear layer's
gradient). So, when that is cheaper, each client's first weight is kept as

    W = alpha * W0 + C^T X        (X: the client's n records, C: [n, out], alpha: a scalar)

with the SGD, momentum and proximal arithmetic applied to (alpha, C) instead of W, by the same
elementwise functions (privlab.engine.sgd). A forward pass is then alpha * (x W0^T) + (x X^T) C:
X W0^T is one large matrix product per round shared by all steps, x X^T are rows of the
client's Gram matrix, and the per-step cost falls from batch * in * out to batch * n * out; W
itself is formed once, at the end of the round, or not at all when only a weighted mean over
clients is wanted (sum_i c_i C_i^T X_i is one product over every record). The bias rides along
as a constant record feature. `record_space_pays` picks the form by counting multiply-adds
(e.g. 12 records of 64 features into 256 hidden units, 4 full-batch steps: ~2.8x fewer).
With plain SGD on full batches the pre-activations A = alpha X W0^T + G C themselves are kept and
moved with C (RecordSpaceLinear.track), and the per-step [clients, records, hidden] blocks live
in reused scratch memory (privlab.engine.scratch).
Results equal the dense path's to rounding (tests/test_engine.py checks both against the
sequential engine).
"""

from __future__ import annotations

import torch

from privlab import gemm
from privlab.engine.chunk_plan import ChunkPlan, prefix, take
from privlab.engine.scratch import Scratch


def record_space_pays(plan: ChunkPlan, out_features: int) -> bool:
    """Whether the first layer is cheaper in record space (multiply-adds per client per round:
    dense forward and update each step, against X W0^T, the Gram matrix, the per-step
    correction and forming W once)."""
    slots = plan.steps() * plan.rows_per_step()
    d, n1, o = plan.x.shape[1], plan.n1, out_features
    return 2 * n1 * d * o + n1 * n1 * d + slots * n1 * o < 2 * slots * d * o


class RecordSpaceLinear:
    """The chunk's first-layer weights and bias in record space (see module doc): each record
    gets a constant feature r = 1 (0 on padding rows), so [W | b] = alpha * [W0 | b0] + C^T
    [X | r] and the bias needs no separate sums or updates."""

    def __init__(
        self, w0: torch.Tensor, b0: torch.Tensor, plan: ChunkPlan, scratch: Scratch
    ) -> None:
        m, n1, d = plan.m, plan.n1, plan.x.shape[1]
        o = w0.shape[0]
        self.n1, self.w0, self.b0, self.x = n1, w0, b0, plan.x.view(m, n1, d)
        self.real = plan.real.view(m, n1, 1)
        # Every record times the start weights, plus the start bias: [m * n1, out].
        self.xw = gemm.linear(plan.x, w0, b0)
        gram = torch.baddbmm(self.real * self.real.transpose(1, 2), self.x, self.x.transpose(1, 2))
        self.gram = gram.view(m * n1, n1)
        self.coef = scratch.zeros("coef", (m, n1, o), w0.dtype)
        self.scratch = scratch
        self.alpha = w0.new_ones(m, 1, 1)
        self.pre: torch.Tensor | None = None

    def track(self) -> None:
        """Plain SGD on full batches: keep every record's pre-activation A = X W0^T + G C and
        update it with C (A -= lr G dC, one product written in place) instead of recomputing
        G C into a fresh copy of X W0^T each step."""
        self.pre = self.xw.view(self.coef.shape)

    def forward(self, rows: torch.Tensor | None, m: int, step: int, scaled: bool):
        """Pre-activations [m, rows, out] of the first m clients' batch rows (a new tensor)."""
        xw = take(self.xw, rows, m, self.n1)
        if step == 0:  # alpha is 1 and C zero before the first step
            return xw.clone() if rows is None else xw
        gram = take(self.gram, rows, m, self.n1)
        if scaled:
            return (xw * self.alpha[:m]).baddbmm_(gram, prefix(self.coef, m))
        return torch.baddbmm(xw, gram, prefix(self.coef, m))

    def grad(self, dz: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """d(loss)/dC [m, n1, out]: each batch row's dz lands on its record's row."""
        if rows is None:
            return dz
        m, o = dz.shape[0], dz.shape[2]
        g = dz.new_zeros(m, self.n1, o)
        g.view(-1, o).index_add_(0, rows, dz.reshape(-1, o))
        return g

    def sgd_step(self, dz: torch.Tensor, rows: torch.Tensor | None, lr: float, last: bool) -> None:
        """Plain SGD: C -= lr * grad, straight into C's rows (and the tracked pre-activations
        with it, unless this was the last step)."""
        m, o = dz.shape[0], dz.shape[2]
        if rows is None:
            prefix(self.coef, m).sub_(dz, alpha=lr)
            if self.pre is not None and not last:
                gram = self.gram.view(-1, self.n1, self.n1)
                prefix(self.pre, m).baddbmm_(prefix(gram, m), dz, alpha=-lr)
        else:
            self.coef.view(-1, o).index_add_(0, rows, dz.reshape(-1, o), alpha=-lr)

    def weights(self, scaled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """W = alpha * W0 + C^T X [m, out, in] and b = alpha * b0 + C^T r [m, out]."""
        m = self.x.shape[0]
        ct = self.coef.transpose(1, 2)
        w, b = self.w0.expand(m, -1, -1), self.b0.expand(m, -1)
        if scaled:
            w, b = w * self.alpha, b * self.alpha.view(m, 1)
        return torch.baddbmm(w, ct, self.x), b + torch.bmm(ct, self.real).view(m, -1)

    def weighted_sum(self, coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sum_i coef_i [W_i | b_i] = (sum_i coef_i alpha_i) [W0 | b0] + (coef * C)^T [X | r]
        over all clients' records at once: one large matrix product, no per-client weights
        (computed as its transpose [X | r]^T (coef * C), the faster layout for oneDNN)."""
        m, n1, o = self.coef.shape
        d = self.x.shape[2]
        c = self.coef.view(m * n1, o)
        per_row = coef.repeat_interleave(n1)  # scale the (narrower) records, not C
        beta = float(coef @ self.alpha.view(m))
        xr = self.scratch.take("xs", (d + 1, m * n1), c.dtype)  # [X | r]^T, rows scaled
        torch.mul(self.x.reshape(m * n1, d).t(), per_row, out=xr[:d])
        torch.mul(self.real.view(-1), per_row, out=xr[d])
        wb = gemm.linear(xr, c.t())  # [d + 1, out]
        return wb[:d].t().add_(self.w0, alpha=beta), wb[d].add_(self.b0, alpha=beta)
