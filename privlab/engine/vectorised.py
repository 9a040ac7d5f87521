"""Vectorised clients: many clients' local SGD as one batched computation.

Clients that share an architecture and a recipe run the same sequence of operations on
different weights and data, so privlab stacks their parameters along a new first axis and
trains them together with batched matrix products (`torch.baddbmm`), the built-in MLP and
logistic regression being stacks of Linear layers and activations. Each client still draws its
own shuffled batches from its own generator, exactly as the sequential path does, and takes
exactly its own number of steps:
- batches are gathered into a padded [clients, batch, features] block; padded rows carry zero
  weight, and each client's loss is the mean over its own real rows, so a short last batch
  gives the same gradient as in the sequential path;
- clients are sorted by their step count (bucketing) so the clients still training at step t
  are a prefix of the stack; the others' weights and momentum are not touched;
- the summed loss of independent clients has each client's own gradient as its gradient with
  respect to that client's slice, so one backward pass serves all.
The SGD step (momentum, weight decay) and FedProx's proximal step are the sequential path's
elementwise functions applied to the stacked tensors. Results agree with the sequential path to
floating-point rounding (tests/test_engine.py). Clients are processed in chunks so that memory
stays bounded at 10,000 clients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from privlab.engine.base import Chunk, ClientShard, Engine, State, floating_keys
from privlab.engine.sgd import proximal_update, sgd_update
from privlab.training import TrainSettings


@dataclass(frozen=True)
class LinearStack:
    """A model that is Flatten, then Linear layers and elementwise activations."""

    ops: tuple[tuple[str, str], ...]  # ("linear", "<prefix>") or ("act", "<relu|tanh|sigmoid>")
    keys: tuple[str, ...]


def linear_stack(model: nn.Module) -> LinearStack | None:
    """The model as a LinearStack, or None if the vectorised engine cannot run it."""
    if not isinstance(model, nn.Sequential) or list(model.buffers()):
        return None
    mods = list(model.named_children())
    if not mods or not isinstance(mods[0][1], nn.Flatten) or mods[0][1].start_dim != 1:
        return None
    ops: list[tuple[str, str]] = []
    keys: list[str] = []
    names = {fn: n for n, fn in (("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid))}
    for name, mod in mods[1:]:
        if isinstance(mod, nn.Linear) and mod.bias is not None:
            ops.append(("linear", name))
            keys += [f"{name}.weight", f"{name}.bias"]
        elif type(mod) in names:
            ops.append(("act", names[type(mod)]))
        elif not isinstance(mod, nn.Identity):
            return None
    if not ops or ops[0][0] != "linear" or ops[-1][0] != "linear":
        return None
    if any(a[0] == b[0] == "act" for a, b in pairwise(ops)):
        return None  # activations run in place on a Linear layer's fresh output
    if any(not p.requires_grad for p in model.parameters()):
        return None
    return LinearStack(tuple(ops), tuple(keys))


def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, shared: bool) -> torch.Tensor:
    """h [m, B, in] times each client's w [m, out, in]; a `shared` w [1, ...] (the start
    state, before the first step) is one large matrix product instead of m small ones."""
    if shared:
        m, bsz, d = h.shape
        return torch.addmm(b[0], h.reshape(m * bsz, d), w[0].t()).view(m, bsz, -1)
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


def _back_linear(dz: torch.Tensor, w: torch.Tensor, shared: bool) -> torch.Tensor:
    """The gradient reaching the layer's input: dz [m, B, out] times w [m|1, out, in]."""
    if shared:
        m, bsz, o = dz.shape
        return (dz.reshape(m * bsz, o) @ w[0]).view(m, bsz, -1)
    return torch.bmm(dz, w)


def _activation_grad(name: str, out: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(pre-activation) from the activation's output and d(loss)/d(output)."""
    if name == "relu":  # ReLU's own backward kernel: one pass over the tensor
        return torch.ops.aten.threshold_backward(grad, out, 0)
    if name == "tanh":
        return grad * (1 - out * out)
    return grad * out * (1 - out)  # sigmoid


_ACT = {"relu": torch.relu_, "tanh": torch.tanh_, "sigmoid": torch.sigmoid_}  # on fresh outputs


class VectorisedEngine(Engine):
    name = "vectorised"

    def __init__(
        self,
        shards: list[ClientShard],
        model: nn.Module,
        settings: TrainSettings,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(shards)
        self._sizes = [sh.num_samples for sh in shards]
        arch = linear_stack(model)
        if arch is None:
            raise ValueError("the vectorised engine needs a Flatten-Linear-activation model")
        self.arch = arch
        self.settings = settings
        self.chunk_size = chunk_size

    @staticmethod
    def supports(model: nn.Module) -> bool:
        return linear_stack(model) is not None

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "chunk_size": self.chunk_size}

    def num_samples(self, k: int) -> int:
        return self._sizes[k]

    def steps(self, k: int) -> int:
        return self.settings.local_epochs * self.settings.steps_per_epoch(self._sizes[k])

    def train(self, start: State, ids: Sequence[int]) -> Iterator[Chunk]:
        # Bucketing: similar step counts share a chunk, so few padded steps are wasted.
        order = sorted(ids, key=lambda k: (-self.steps(k), k))
        for i in range(0, len(order), self.chunk_size):
            chunk = order[i : i + self.chunk_size]
            yield chunk, self._train_chunk(start, chunk)
        # Consumers index by client id, so order within and across chunks does not matter.

    def train_each(self, starts: State, ids: Sequence[int]) -> Iterator[Chunk]:
        """As `train`, but client ids[i] starts from its own weights (row i of the stacked
        `starts`): many independent runs at once, as reference models for LiRA train."""
        row = {k: i for i, k in enumerate(ids)}
        order = sorted(ids, key=lambda k: (-self.steps(k), k))
        for i in range(0, len(order), self.chunk_size):
            chunk = order[i : i + self.chunk_size]
            rows = torch.tensor([row[k] for k in chunk])
            own = {key: t[rows] for key, t in starts.items()}
            yield chunk, self._train_chunk(own, chunk, own=True)

    def _plan(self, chunk: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """Padded batch indices [m, steps, B] into the chunk's stacked records, plus data.

        Each client draws one permutation per epoch from its own generator, as the sequential
        path does; row `pad` is a zero record that padded slots point to."""
        s, bs, epochs = self.settings, self.settings.batch_size, self.settings.local_epochs
        shards = [self.shards[k] for k in chunk]
        sizes = [self._sizes[k] for k in chunk]
        pad = sum(sizes)
        per_epoch = [s.steps_per_epoch(n) for n in sizes]
        total_steps = [epochs * p for p in per_epoch]
        width = max(total_steps) * bs  # one row of the plan, flattened
        # One permutation per client and epoch, in each client's own generator order; then
        # every record index lands at (row, epoch * steps_per_epoch * B + position) at once.
        perms = [
            torch.randperm(n, generator=sh.generator)
            for sh, n in zip(shards, sizes, strict=True)
            for _ in range(epochs)
        ]
        seg_len = torch.tensor(sizes).repeat_interleave(epochs)
        rows = torch.arange(len(chunk)).repeat_interleave(epochs)
        ep = torch.arange(epochs).repeat(len(chunk))
        data_off = torch.tensor([0, *sizes[:-1]]).cumsum(0).repeat_interleave(epochs)
        seg_base = rows * width + ep * torch.tensor(per_epoch).repeat_interleave(epochs) * bs
        seg_start = torch.cat([torch.zeros(1, dtype=torch.long), seg_len.cumsum(0)[:-1]])
        within = torch.arange(int(seg_len.sum())) - seg_start.repeat_interleave(seg_len)
        plan = torch.full((len(chunk) * width,), pad, dtype=torch.long)
        plan[seg_base.repeat_interleave(seg_len) + within] = torch.cat(
            perms
        ) + data_off.repeat_interleave(seg_len)
        plan = plan.view(len(chunk), max(total_steps), bs)
        x = torch.cat([sh.x.reshape(sh.num_samples, -1) for sh in shards])
        x = torch.cat([x, x.new_zeros(1, x.shape[1])])
        y = torch.cat([*(sh.y for sh in shards), shards[0].y.new_zeros(1)])
        active = [sum(t > step for t in total_steps) for step in range(max(total_steps))]
        return plan, x, y, active

    def _train_chunk(self, start: State, chunk: list[int], own: bool = False) -> State:
        """Local SGD of one chunk of clients, forward and backward written out for the
        Linear stack (checked against autograd through the sequential path's tests): the
        gradient of softmax cross-entropy is (softmax - onehot) / batch size, per client.
        `own`: `start` is stacked [len(chunk), ...], one start per client."""
        s = self.settings
        plan, x, y, active = self._plan(chunk)
        pad = len(y) - 1
        keys = list(self.arch.keys)
        if own:
            params = {k: start[k].detach().clone() for k in keys}
            anchor = [start[k].detach() for k in keys] if s.fedprox_mu > 0 else None
        else:
            params = {k: start[k].detach().unsqueeze(0) for k in keys}  # shared until step 0
            anchor = [start[k].detach().unsqueeze(0) for k in keys] if s.fedprox_mu > 0 else None
        fused = s.momentum == 0 and s.weight_decay == 0
        buffers: list[torch.Tensor | None] = [None] * len(keys)
        for step, m in enumerate(active):
            idx = plan[:m, step]
            weight = (idx != pad).to(x.dtype)
            weight = (weight / weight.sum(dim=1, keepdim=True)).unsqueeze(2)  # batch means
            first = step == 0 and not own  # the start is still one shared [1, ...] copy
            view = {k: params[k] if first else params[k][:m] for k in keys}
            grads = self._backward(view, x[idx], y[idx], weight, fused, m, shared=first)
            if not fused:
                for k in keys:
                    if first:  # first step: each client gets its own copy
                        params[k] = _tile(params[k][0], m)
                views = [params[k][:m] for k in keys]
                bufs = [None if b is None else b[:m] for b in buffers]
                sgd_update(
                    views,
                    [grads[k] for k in keys],
                    bufs,
                    lr=s.lr,
                    momentum=s.momentum,
                    weight_decay=s.weight_decay,
                )
                if step == 0:
                    buffers = bufs  # the first step made the (full-height) momentum buffers
            elif first:
                params = grads  # already the updated weights (see _backward)
            if anchor is not None:
                near = [a[:m] for a in anchor]
                proximal_update([params[k][:m] for k in keys], near, lr=s.lr, mu=s.fedprox_mu)
        out = dict(params)
        for k in floating_keys(start):
            if k not in out:
                out[k] = start[k].clone() if own else _tile(start[k], len(chunk))
        return out

    def _backward(
        self,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        fused: bool,
        m: int,
        *,
        shared: bool,
    ) -> dict[str, torch.Tensor]:
        """Forward, then backward layer by layer. Returns the gradients; with `fused` (plain
        SGD) it applies the step in place instead, as one batched product per weight, and
        returns the new weights when the layers were still `shared` ([1, ...] start weights)."""
        s, ops = self.settings, self.arch.ops
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        h = x
        for i, (kind, name) in enumerate(ops):
            if kind == "linear":
                inputs[i] = h
                h = _linear(h, params[f"{name}.weight"], params[f"{name}.bias"], shared)
            else:
                h = outputs[i] = _ACT[name](h)
        dz = torch.softmax(h, dim=2)
        dz.scatter_add_(2, y.unsqueeze(2), -torch.ones_like(dz[..., :1]))
        dz.mul_(weight)
        grads: dict[str, torch.Tensor] = {}
        for i in reversed(range(len(ops))):
            kind, name = ops[i]
            if kind == "act":
                dz = _activation_grad(name, outputs[i], dz)
                continue
            wk, bk = f"{name}.weight", f"{name}.bias"
            w, b = params[wk], params[bk]
            d_in = _back_linear(dz, w, shared) if i > 0 else dz  # weights before the step
            dzt, gb = dz.transpose(1, 2), dz.sum(dim=1)
            if not fused:
                grads[wk], grads[bk] = torch.bmm(dzt, inputs[i]), gb
            elif shared:
                grads[wk] = torch.baddbmm(w.expand(m, -1, -1), dzt, inputs[i], alpha=-s.lr)
                grads[bk] = b - s.lr * gb
            else:
                w.baddbmm_(dzt, inputs[i], alpha=-s.lr)
                b.sub_(gb, alpha=s.lr)
            dz = d_in
        return grads


def _tile(t: torch.Tensor, m: int) -> torch.Tensor:
    """m stacked copies of t: [m, *t.shape]."""
    return t.detach().unsqueeze(0).repeat(m, *([1] * t.dim()))
