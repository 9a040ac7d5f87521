"""Vectorised DP-SGD: many clients' DP-SGD local training as one stacked computation.

DP-SGD (Abadi et al. 2016) as Opacus implements it: Poisson-sampled batches, each record's
gradient clipped to norm C (factor min(1, C / (norm + 1e-6))), summed, N(0, (sigma C)^2) noise
per coordinate, divided by the expected batch size. For a Linear stack the per-record norms
need no per-record gradients (ghost / book-keeping clipping: Goodfellow 2015, Li et al. 2022,
Bu et al. 2023), so one step of many clients is a few batched products over their stacked
weights (privlab.stacked_dp.private_step), exactly as one client's step in FastDPSGDTrainer
is the same function on a stack of one. What stays per client is all that DP-SGD makes
private to it, and in the same order as its own trainer:
- its generator (ClientShard.generator): at the start of each of its epochs it draws its
  Poisson masks (one uniform per batch and record, privlab.stacked_dp.poisson_mask), then at
  each step its noise, per parameter in order with torch.normal;
- its sample rate, noise multiplier and expected batch size (from its own data size);
- its accountant (`DPClient`, kept by the defense: the engine imports none), stepped once per
  step it takes, so `privacy()` is what its FastDPSGDTrainer would report.
Poisson batches have unequal sizes: a step's batches are packed to the largest one with zero
weight (privlab.stacked_dp.pack_batches); clients are sorted by their step count so those still
training are a prefix of the stack (as in the vectorised engine). Results equal the
sequential engine's with FastDPSGDTrainers to floating-point rounding
(tests/test_vectorised_dp.py); the per-client noise draws remain the floor of the cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from privlab.engine.base import Chunk, ClientShard, Engine, State, floating_keys
from privlab.engine.sgd import proximal_update, sgd_update
from privlab.engine.vectorised import linear_stack
from privlab.stacked_dp import pack_batches, poisson_mask, private_step
from privlab.training import TrainSettings


class DPClient(Protocol):
    """One client's DP-SGD parameters and accountant, as the local-training defense keeps
    them (the same record its own trainer would keep)."""

    noise_multiplier: float
    sample_rate: float
    expected_batch_size: int
    accountant: Any  # an Opacus accountant: its `history` is the privacy spent

    def step(self) -> None:
        """Record one DP-SGD step (noise_multiplier, sample_rate) with the accountant."""

    def privacy(self) -> dict[str, Any]:
        """Privacy spent so far."""


class VectorisedDPEngine(Engine):
    """Clients training DP-SGD together, stacked (Linear-stack models only)."""

    name = "vectorised-dp"

    def __init__(
        self,
        shards: list[ClientShard],
        model: nn.Module,
        settings: TrainSettings,
        clients: Sequence[DPClient],
        *,
        max_grad_norm: float,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(shards)
        arch = linear_stack(model)
        if arch is None:
            raise ValueError("the vectorised DP engine needs a Flatten-Linear-activation model")
        if len(clients) != len(shards):
            raise ValueError("one DPClient per shard")
        self.arch = arch
        self.settings = settings
        self.clients = list(clients)
        self.max_grad_norm = max_grad_norm
        self.chunk_size = chunk_size

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "chunk_size": self.chunk_size}

    def steps(self, k: int) -> int:
        return self.settings.local_epochs * self.settings.steps_per_epoch(self.num_samples(k))

    def privacy(self) -> dict[str, dict[str, Any] | None]:
        return {
            str(s.client_id): c.privacy() for s, c in zip(self.shards, self.clients, strict=True)
        }

    def accountant(self, k: int) -> Any:
        return self.clients[k].accountant

    def chunks(self, ids: Sequence[int]) -> list[list[int]]:
        order = sorted(ids, key=lambda k: (-self.steps(k), k))  # still-training: a prefix
        return [order[i : i + self.chunk_size] for i in range(0, len(order), self.chunk_size)]

    def train(self, start: State, ids: Sequence[int]) -> Iterator[Chunk]:
        for chunk in self.chunks(ids):
            yield chunk, self._train_chunk(start, chunk)

    def _records(self, chunk: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The chunk's records in a padded [clients * n1] layout (client i's record j at row
        i * n1 + j), read from the shards each round (attacks may rewrite them in place)."""
        sizes = [self.num_samples(k) for k in chunk]
        n1 = max(sizes)
        first = self.shards[chunk[0]].x
        d = math.prod(first.shape[1:])
        x = first.new_zeros(len(chunk) * n1, d)
        y = self.shards[chunk[0]].y.new_zeros(len(chunk) * n1)
        for i, (k, n) in enumerate(zip(chunk, sizes, strict=True)):
            x[i * n1 : i * n1 + n] = self.shards[k].x.reshape(n, d)
            y[i * n1 : i * n1 + n] = self.shards[k].y
        return x, y, n1

    def _train_chunk(self, start: State, chunk: list[int]) -> State:
        s, m = self.settings, len(chunk)
        x, y, n1 = self._records(chunk)
        sizes = [self.num_samples(k) for k in chunk]
        per_epoch = [s.steps_per_epoch(n) for n in sizes]
        total = [s.local_epochs * p for p in per_epoch]
        gens = [self.shards[k].generator for k in chunk]
        clients = [self.clients[k] for k in chunk]
        stds = [c.noise_multiplier * self.max_grad_norm for c in clients]
        expected = [c.expected_batch_size for c in clients]
        params = {k: _tile(start[k], m) for k in self.arch.keys}
        noise = {k: torch.empty_like(v) for k, v in params.items()}
        anchor = [start[k].detach().unsqueeze(0) for k in self.arch.keys]
        buffers: list[torch.Tensor | None] = []
        batches = _EpochBatches(per_epoch, sizes, n1)
        expected_t = torch.tensor(expected, dtype=x.dtype)
        for t in range(max(total)):
            mt = sum(1 for steps in total if steps > t)
            fresh = [i for i in range(mt) if t % per_epoch[i] == 0]  # epoch starts: masks
            if fresh:  # (each client's masks, then its noise, as its trainer draws them)
                rates = [clients[i].sample_rate for i in fresh]
                batches.draw(fresh, rates, [gens[i] for i in fresh])
            idx, weight = batches.step(t, mt)
            live = params if mt == m else {k: v[:mt] for k, v in params.items()}
            grads, _ = private_step(
                self.arch.ops,
                live,
                noise,
                x[idx],
                y[idx],
                weight,
                max_grad_norm=self.max_grad_norm,
                stds=stds[:mt],
                generators=gens[:mt],
                expected_batch_size=expected_t[:mt],
            )
            bufs = [None if b is None else b[:mt] for b in buffers] or [None] * len(live)
            sgd_update(
                list(live.values()),
                list(grads.values()),
                bufs,
                lr=s.lr,
                momentum=s.momentum,
                weight_decay=s.weight_decay,
            )
            if t == 0:
                buffers = bufs  # every client takes the first step: full-height buffers
            proximal_update(list(live.values()), anchor, lr=s.lr, mu=s.fedprox_mu)
            for c in clients[:mt]:
                c.step()
        out = dict(params)
        for k in floating_keys(start):  # tensors that training does not change
            out.setdefault(k, _tile(start[k], m))
        return out


PACK_BUDGET = 1 << 22
"""Mask entries packed at once (bounds the argsort's memory: 32 MiB of int64)."""


class _EpochBatches:
    """A chunk's Poisson batches, a client's whole epoch at a time: drawn from its generator
    when its epoch starts (the masks its trainer draws), packed chosen-first with zero-weight
    padding, so a step's batch is a slice. Rows index the chunk's padded record layout
    (client i's record j at i * n1 + j)."""

    def __init__(self, per_epoch: list[int], sizes: list[int], n1: int) -> None:
        self.per_epoch, self.sizes, self.n1 = per_epoch, sizes, n1
        self.aligned = len(set(per_epoch)) == 1  # every client's epochs start together
        self.local = torch.tensor(per_epoch)
        m, longest = len(sizes), max(per_epoch)
        self.rows = torch.zeros(m, longest, 0, dtype=torch.long)
        self.weight = torch.zeros(m, longest, 0)
        self.count = torch.zeros(m, longest)

    def draw(self, fresh: list[int], rates: list[float], gens: list[torch.Generator]) -> None:
        """Clients `fresh` start an epoch: each draws its masks from its own generator
        (`poisson_mask`, as its trainer does), then they are packed together, in groups of at
        most PACK_BUDGET mask entries (`pack_batches`: chosen first, in record order)."""
        masks = [
            poisson_mask(self.per_epoch[i], self.sizes[i], q, g)
            for i, q, g in zip(fresh, rates, gens, strict=True)
        ]
        start = 0
        while start < len(fresh):
            end, longest = start + 1, self.per_epoch[fresh[start]]
            while end < len(fresh):
                wider = max(longest, self.per_epoch[fresh[end]])
                if (end + 1 - start) * wider * self.n1 > PACK_BUDGET:
                    break
                end, longest = end + 1, wider
            self._pack(fresh[start:end], masks[start:end], longest)
            start = end

    def _pack(self, group: list[int], masks: list[torch.Tensor], longest: int) -> None:
        g, n1 = len(group), self.n1
        block = torch.zeros(g, longest, n1, dtype=torch.bool)
        for j, mask in enumerate(masks):
            block[j, : mask.shape[0], : mask.shape[1]] = mask
        lanes = torch.tensor(group)
        base = (lanes * n1).view(g, 1, 1)
        members = (torch.arange(n1).view(1, 1, n1) + base).expand(g, longest, n1)
        idx, weight = pack_batches(members.reshape(g * longest, n1), block.view(g * longest, n1))
        width = idx.shape[1]
        if width > self.rows.shape[2]:  # widen every client's table (padding: weight 0)
            grow = width - self.rows.shape[2]
            self.rows = torch.nn.functional.pad(self.rows, (0, grow))
            self.weight = torch.nn.functional.pad(self.weight, (0, grow))
        self.rows[lanes, :longest] = base.expand(g, longest, self.rows.shape[2])
        self.rows[lanes, :longest, :width] = idx.view(g, longest, width)
        self.weight[lanes, :longest] = 0.0
        self.weight[lanes, :longest, :width] = weight.view(g, longest, width)
        self.count[lanes, :longest] = block.sum(2).to(self.count.dtype)

    def step(self, t: int, mt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step t's batches of the first mt clients: (rows [mt, B], weight [mt, B])."""
        if self.aligned:
            at = t % self.per_epoch[0]
            rows, weight, count = self.rows[:mt, at], self.weight[:mt, at], self.count[:mt, at]
        else:
            lanes, at = torch.arange(mt), t % self.local[:mt]
            rows, weight = self.rows[lanes, at], self.weight[lanes, at]
            count = self.count[lanes, at]
        width = max(1, int(count.max()))
        return rows[:, :width], weight[:, :width]


def _tile(t: torch.Tensor, m: int) -> torch.Tensor:
    """m stacked copies of t: [m, *t.shape]."""
    return t.detach().unsqueeze(0).repeat(m, *([1] * t.dim()))
