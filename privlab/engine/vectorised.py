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

import torch
from torch import nn
from torch.nn import functional as F

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
    if not ops or ops[-1][0] != "linear":
        return None
    if any(not p.requires_grad for p in model.parameters()):
        return None
    return LinearStack(tuple(ops), tuple(keys))


def _forward(arch: LinearStack, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits [m, B, C] of m stacked models on their own batches x [m, B, D]."""
    h = x
    acts = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
    for kind, name in arch.ops:
        if kind == "linear":
            w, b = params[f"{name}.weight"], params[f"{name}.bias"]
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        else:
            h = acts[name](h)
    return h


class VectorisedEngine(Engine):
    name = "vectorised"

    def __init__(
        self,
        shards: list[ClientShard],
        model: nn.Module,
        settings: TrainSettings,
        chunk_size: int = 512,
    ) -> None:
        super().__init__(shards)
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

    def steps(self, k: int) -> int:
        return self.settings.local_epochs * self.settings.steps_per_epoch(self.num_samples(k))

    def train(self, start: State, ids: Sequence[int]) -> Iterator[Chunk]:
        # Bucketing: similar step counts share a chunk, so few padded steps are wasted.
        order = sorted(ids, key=lambda k: (-self.steps(k), k))
        for i in range(0, len(order), self.chunk_size):
            chunk = order[i : i + self.chunk_size]
            yield chunk, self._train_chunk(start, chunk)
        # Consumers index by client id, so order within and across chunks does not matter.

    def _plan(self, chunk: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """Padded batch indices [m, steps, B] into the chunk's stacked records, plus data.

        Each client draws one permutation per epoch from its own generator, as the sequential
        path does; row `pad` is a zero record that padded slots point to."""
        s, bs = self.settings, self.settings.batch_size
        shards = [self.shards[k] for k in chunk]
        sizes = [sh.num_samples for sh in shards]
        pad = sum(sizes)
        total_steps = [s.local_epochs * s.steps_per_epoch(n) for n in sizes]
        plan = torch.full((len(chunk), max(total_steps), bs), pad, dtype=torch.long)
        offset = 0
        for row, (sh, n) in enumerate(zip(shards, sizes, strict=True)):
            per_epoch = s.steps_per_epoch(n)
            block = torch.full((per_epoch * bs,), pad, dtype=torch.long)
            for e in range(s.local_epochs):
                block[:n] = torch.randperm(n, generator=sh.generator) + offset
                plan[row, e * per_epoch : (e + 1) * per_epoch] = block.view(per_epoch, bs)
            offset += n
        x = torch.cat([sh.x.reshape(sh.num_samples, -1) for sh in shards])
        x = torch.cat([x, x.new_zeros(1, x.shape[1])])
        y = torch.cat([*(sh.y for sh in shards), shards[0].y.new_zeros(1)])
        active = [sum(t > step for t in total_steps) for step in range(max(total_steps))]
        return plan, x, y, active

    def _train_chunk(self, start: State, chunk: list[int]) -> State:
        s = self.settings
        plan, x, y, active = self._plan(chunk)
        pad = len(y) - 1
        m0 = len(chunk)
        keys = list(self.arch.keys)
        params = {k: _tile(start[k], m0) for k in keys}
        anchor = [start[k].detach().unsqueeze(0) for k in keys] if s.fedprox_mu > 0 else None
        buffers: list[torch.Tensor | None] = [None] * len(keys)
        for step, m in enumerate(active):
            idx = plan[:m, step]
            weight = (idx != pad).to(x.dtype)
            weight = weight / weight.sum(dim=1, keepdim=True)  # each client's batch mean
            leaves = {k: params[k][:m].detach().requires_grad_() for k in keys}
            logits = _forward(self.arch, leaves, x[idx])
            ce = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), reduction="none")
            loss = (ce.view_as(weight) * weight).sum()
            grads = torch.autograd.grad(loss, [leaves[k] for k in keys])
            views = [params[k][:m] for k in keys]
            bufs = [None if b is None else b[:m] for b in buffers]
            sgd_update(
                views,
                list(grads),
                bufs,
                lr=s.lr,
                momentum=s.momentum,
                weight_decay=s.weight_decay,
            )
            if step == 0:
                buffers = bufs  # the first step made the (full-height) momentum buffers
            if anchor is not None:
                proximal_update(views, anchor, lr=s.lr, mu=s.fedprox_mu)
        out = dict(params)
        for k in floating_keys(start):
            out.setdefault(k, _tile(start[k], m0))
        return out


def _tile(t: torch.Tensor, m: int) -> torch.Tensor:
    """m stacked copies of t: [m, *t.shape]."""
    return t.detach().unsqueeze(0).repeat(m, *([1] * t.dim()))
