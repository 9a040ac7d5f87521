"""Local SGD of one chunk of stacked clients, forward and backward written out.

The model is a stack of Linear layers and elementwise activations (`LinearStack`); the loss is
softmax cross-entropy, whose gradient is (softmax - onehot) / batch size, per client. Each
client's slice of a stacked tensor only ever meets its own slices, so the summed loss of the
chunk has each client's own gradient as its gradient, and one pass serves all clients.

The first Linear layer is kept in record space where that is cheaper
(privlab.engine.record_space); full-batch plain SGD of Linear-ReLU-Linear chunks runs through
the compiled kernel (privlab.engine.fused_kernel) where this machine has one.
Results equal the dense path's to rounding (tests/test_engine.py checks both against the
sequential engine).
"""

from __future__ import annotations

import torch

from privlab import gemm
from privlab.engine import fused_kernel
from privlab.engine.chunk_plan import ChunkPlan, prefix, take
from privlab.engine.record_space import RecordSpaceLinear, record_space_pays
from privlab.engine.scratch import Scratch
from privlab.engine.sgd import proximal_update, sgd_update
from privlab.training import TrainSettings

_THRESHOLD_BACKWARD = torch.ops.aten.threshold_backward.grad_input
_ACT = {"relu": torch.relu_, "tanh": torch.tanh_, "sigmoid": torch.sigmoid_}  # on fresh outputs
_ACT_INTO = {  # into a preallocated buffer
    "relu": lambda x, out: torch.clamp_min(x, 0, out=out),
    "tanh": lambda x, out: torch.tanh(x, out=out),
    "sigmoid": lambda x, out: torch.sigmoid(x, out=out),
}


def activation_grad(name: str, out: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(pre-activation) from the activation's output and d(loss)/d(output), written
    over `grad` (a fresh tensor that nothing else reads)."""
    if name == "relu":  # ReLU's own backward kernel: one pass over the tensor
        return _THRESHOLD_BACKWARD(grad, out, 0, grad_input=grad)
    if name == "tanh":
        return grad.mul_(1 - out * out)
    return grad.mul_(out * (1 - out))  # sigmoid


def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, shared: bool) -> torch.Tensor:
    """h [m, B, in] times each client's w [m, out, in]; a `shared` w [1, ...] (the start
    state, before the first step) is one large matrix product instead of m small ones."""
    if shared:
        m, bsz, d = h.shape
        return gemm.linear(h.reshape(m * bsz, d), w[0], b[0]).view(m, bsz, -1)
    if w.shape[1] <= 32 and gemm.MKL_INTEL_KERNELS:  # narrow: W h^T is faster there
        return torch.bmm(w, h.transpose(1, 2)).transpose(1, 2).add_(b.unsqueeze(1))
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


def _back_linear(
    dz: torch.Tensor, w: torch.Tensor, shared: bool, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The gradient reaching the layer's input: dz [m, B, out] times w [m|1, out, in]
    (written into `out` [m, B, in] when given)."""
    m, bsz, o = dz.shape
    if shared:  # a new tensor: oneDNN's product writes no `out`
        return gemm.linear(dz.reshape(m * bsz, o), w[0].t()).view(m, bsz, -1)
    return torch.bmm(dz, w, out=out)


def train_chunk(
    ops: tuple[tuple[str, str], ...],
    settings: TrainSettings,
    start: dict[str, torch.Tensor],
    plan: ChunkPlan,
    *,
    record_space: bool | None = None,
    coef: torch.Tensor | None = None,
    own: bool = False,
    scratch: Scratch | None = None,
) -> dict[str, torch.Tensor]:
    """Every client's local SGD; returns the Linear layers' weights stacked [m, ...], or with
    `coef` [m] only their sums weighted by it (a mean needs no per-client weights).
    `scratch`: memory reused across chunks for the temporaries (privlab.engine.scratch).

    Dense weights stay shared [1, ...] views of `start` until the first step gives each
    client its own. `record_space` forces the first layer's form (None: the cheaper one).
    `own`: `start` holds one stacked start per client (dense layers, nothing shared)."""
    s = settings
    fused = s.momentum == 0 and s.weight_decay == 0  # the SGD step as one batched product
    scaled = s.weight_decay != 0 or s.fedprox_mu > 0  # alpha moves away from 1
    first = ops[0][1]
    w0, b0 = start[f"{first}.weight"].detach(), start[f"{first}.bias"].detach()
    if own:
        record_space = False  # record space needs one shared start
    elif record_space is None:
        record_space = record_space_pays(plan, w0.shape[0])
    scratch = scratch or Scratch()
    rs = RecordSpaceLinear(w0, b0, plan, scratch) if record_space else None
    fused_act = rs is not None and fused and not scaled and plan.flat is None and len(ops) > 1
    if fused_act and _kernel_applies(ops, w0, plan):
        assert rs is not None
        return _kernel_chunk(ops, s, start, plan, rs, coef)
    if fused_act:  # the first layer's activation straight from the tracked pre-activations
        assert rs is not None and ops[1][0] == "act"
        rs.track()
        hidden_buf = scratch.take("hidden", tuple(rs.coef.shape), w0.dtype)
        grad_buf = scratch.take("grad", tuple(rs.coef.shape), w0.dtype)
    dense = [n for i, (k, n) in enumerate(ops) if k == "linear" and (i > 0 or rs is None)]
    if own:
        weights = {n: start[f"{n}.weight"].detach().clone() for n in dense}
        biases = {n: start[f"{n}.bias"].detach().clone() for n in dense}
    else:
        weights = {n: start[f"{n}.weight"].detach().unsqueeze(0) for n in dense}
        biases = {n: start[f"{n}.bias"].detach().unsqueeze(0) for n in dense}
    buffers: list[torch.Tensor | None] = []
    late: dict[str, torch.Tensor] = {}  # last steps' updates folded into the weighted sum
    minus = plan.x.new_full((plan.m, plan.rows_per_step(), 1), -1.0)  # the one-hot's -1
    for step, mt in enumerate(plan.active):
        shared = step == 0 and not own  # the start is still one [1, ...] copy
        last = step == plan.steps() - 1
        rows = plan.rows(step, mt)
        params, grads = [], []  # unfused: collected for one sgd_update over all layers
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        h = take(plan.x, rows, mt, plan.n1) if rs is None else plan.x
        for i, (kind, name) in enumerate(ops):
            if kind == "act":
                if not (fused_act and i == 1):
                    h = outputs[i] = _ACT[name](h)
                continue
            if fused_act and i == 0:
                assert rs is not None and rs.pre is not None
                into = prefix(hidden_buf, mt)
                h = outputs[1] = _ACT_INTO[ops[1][1]](prefix(rs.pre, mt), into)
                continue
            if i == 0 and rs is not None:
                h = rs.forward(rows, mt, step, scaled)
                continue
            w = weights[name] if shared else prefix(weights[name], mt)
            b = biases[name] if shared else prefix(biases[name], mt)
            inputs[i] = h
            h = _linear(h, w, b, shared)
        dz = h.sub_(h.amax(dim=2, keepdim=True)).exp_()  # softmax, in place on the logits
        dz.div_(dz.sum(dim=2, keepdim=True))
        y, weight = plan.labels(step, mt)
        dz.scatter_add_(2, y.unsqueeze(2), prefix(minus, mt))
        dz.mul_(weight)
        for i in reversed(range(len(ops))):
            kind, name = ops[i]
            if kind == "act":
                dz = activation_grad(name, outputs[i], dz)
                continue
            if i == 0 and rs is not None:
                if fused:
                    rs.sgd_step(dz, rows, s.lr, last=last)
                else:
                    params += [rs.alpha[:mt], rs.coef[:mt]]
                    grads += [torch.zeros_like(rs.alpha[:mt]), rs.grad(dz, rows)]
                continue
            gb = dz.sum(dim=1)
            w = weights[name] if shared else prefix(weights[name], mt)
            into = prefix(grad_buf, mt) if fused_act and i == 2 else None
            d_in = _back_linear(dz, w, shared, into) if i > 0 else None  # weights before the step
            dzt = dz.transpose(1, 2)
            if not fused:
                if shared:  # each client gets its own copy
                    weights[name] = w = _tile(w[0], mt)
                params.append(w)
                grads.append(torch.bmm(dzt, inputs[i]))
            elif shared:  # in scratch when only the weighted sum leaves the chunk
                into = None if coef is None else scratch.take(name, (mt, *w.shape[1:]), w.dtype)
                weights[name] = torch.baddbmm(
                    w.expand(mt, -1, -1), dzt, inputs[i], alpha=-s.lr, out=into
                )
            elif last and coef is not None and s.fedprox_mu == 0:  # only sum_i coef_i W_i leaves
                late[name] = _summed_step(dz, inputs[i], coef[:mt], s.lr)
            else:
                w.baddbmm_(dzt, inputs[i], alpha=-s.lr)
            if fused and shared:
                biases[name] = biases[name] - s.lr * gb
            elif fused:
                prefix(biases[name], mt).sub_(gb, alpha=s.lr)
            else:
                if shared:
                    biases[name] = _tile(biases[name][0], mt)
                params.append(biases[name][:mt])
                grads.append(gb)
            if d_in is not None:
                dz = d_in
        if not fused:
            bufs = [b[:mt] for b in buffers] if buffers else [None] * len(params)
            sgd_update(
                params, grads, bufs, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
            )
            if step == 0:
                buffers = bufs  # the first step (all clients) made full-height buffers
        if s.fedprox_mu > 0:
            _proximal(ops, rs, weights, biases, start, mt, s, own)
    out = {f"{n}.bias": b for n, b in biases.items()}
    out |= {f"{n}.weight": w for n, w in weights.items()}
    if coef is not None:
        out = {k: torch.tensordot(coef, v, dims=1) for k, v in out.items()}
        for name, step_sum in late.items():
            out[f"{name}.weight"].add_(step_sum)
    if rs is not None:
        w1, b1 = rs.weights(scaled) if coef is None else rs.weighted_sum(coef)
        out[f"{first}.weight"], out[f"{first}.bias"] = w1, b1
    return out


def _kernel_applies(ops: tuple[tuple[str, str], ...], w0: torch.Tensor, plan: ChunkPlan) -> bool:
    """The compiled kernel's case: Linear, ReLU, Linear in float32, every client on every step
    (full batches; the caller checked plain SGD and record space)."""
    if [k for k, _ in ops] != ["linear", "act", "linear"] or ops[1][1] != "relu":
        return False
    if w0.dtype != torch.float32 or any(a != plan.m for a in plan.active):
        return False
    return fused_kernel.available()


def _kernel_chunk(
    ops: tuple[tuple[str, str], ...],
    s: TrainSettings,
    start: dict[str, torch.Tensor],
    plan: ChunkPlan,
    rs: RecordSpaceLinear,
    coef: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """train_chunk's result through privlab.engine.fused_kernel."""
    first, name = ops[0][1], ops[2][1]
    w2, b2 = start[f"{name}.weight"].detach(), start[f"{name}.bias"].detach()
    m, n1 = plan.m, plan.n1
    args = dict(
        pre=rs.xw,
        gram=rs.gram,
        coef=rs.coef,
        w2=w2.contiguous(),
        b2=b2.contiguous(),
        labels=plan.y.reshape(m, n1).contiguous(),
        weight=plan.weight.reshape(m, n1).contiguous(),
        steps=plan.steps(),
        lr=s.lr,
    )
    if coef is None:
        w2_out, b2_out = w2.new_empty(m, *w2.shape), b2.new_empty(m, *b2.shape)
        fused_kernel.full_batch_sgd(**args, w2_out=w2_out, b2_out=b2_out)
        w1, b1 = rs.weights(False)
    else:
        w2_out, b2_out = torch.zeros_like(w2), torch.zeros_like(b2)
        c = coef.to(torch.float32).contiguous()
        fused_kernel.full_batch_sgd(**args, client_coef=c, w2_sum=w2_out, b2_sum=b2_out)
        w1, b1 = rs.weighted_sum(coef)
    return {
        f"{first}.weight": w1,
        f"{first}.bias": b1,
        f"{name}.weight": w2_out,
        f"{name}.bias": b2_out,
    }


def _summed_step(dz: torch.Tensor, h: torch.Tensor, coef: torch.Tensor, lr: float) -> torch.Tensor:
    """sum_i coef_i (-lr dz_i^T h_i) over the clients' SGD steps on one layer's weight, as one
    product over every batch row ([out, rows] x [rows, in]) instead of m small ones."""
    o, d = dz.shape[2], h.shape[2]
    scaled = (dz * (coef * -lr).view(-1, 1, 1)).reshape(-1, o)
    return gemm.linear(scaled.t(), h.reshape(-1, d).t())


def _proximal(ops, rs, weights, biases, start, mt: int, s: TrainSettings, own: bool) -> None:
    """FedProx's proximal step on every layer, towards the start state (alpha towards 1 and
    C towards 0 in record space: the same arithmetic on the coefficients)."""
    params, anchor = [], []
    for i, (kind, name) in enumerate(ops):
        if kind != "linear":
            continue
        if i == 0 and rs is not None:  # the bias is part of C
            params += [rs.alpha[:mt], rs.coef[:mt]]
            anchor += [torch.ones(()), torch.zeros(())]
            continue
        for key, t in ((f"{name}.weight", weights[name]), (f"{name}.bias", biases[name])):
            params.append(t[:mt])
            a = start[key].detach()
            anchor.append(a[:mt] if own else a.unsqueeze(0))
    proximal_update(params, anchor, lr=s.lr, mu=s.fedprox_mu)


def _tile(t: torch.Tensor, m: int) -> torch.Tensor:
    """m stacked copies of t: [m, *t.shape]."""
    return t.detach().unsqueeze(0).repeat(m, *([1] * t.dim()))
