"""Vectorised clients: many clients' local SGD as one batched computation.

Clients that share an architecture and a recipe run the same sequence of operations on
different weights and data, so privlab stacks their parameters along a new first axis and
trains them together with batched matrix products (`torch.baddbmm`), the built-in MLP and
logistic regression being stacks of Linear layers and activations. Each client still draws its
own shuffled batches from its own generator, exactly as the sequential path does (one draw
call per client and round, privlab.engine.permutations), and takes exactly its own number of
steps:
- a chunk's records sit in a padded [clients, records] layout gathered from one store; a batch
  is a set of rows, padded rows carry zero weight, and each client's loss is the mean over its
  own real rows, so a short last batch gives the same gradient as in the sequential path;
  when every batch holds all of a client's records (full batch), rows stay in record order;
- clients are sorted by their step count (bucketing) so the clients still training at step t
  are a prefix of the stack; the others' weights and momentum are not touched;
- the summed loss of independent clients has each client's own gradient as its gradient with
  respect to that client's slice, so one backward pass serves all;
- the first layer is kept in record space (alpha * W0 + C^T X) when cheaper, and a mean over
  clients (`train_sums`) is one product over all their records (privlab.engine.stacked_sgd).
The SGD step (momentum, weight decay) and FedProx's proximal step are the sequential path's
elementwise functions applied to the stacked tensors. Results agree with the sequential path to
floating-point rounding (tests/test_engine.py). Clients are processed in equal chunks of at most
CHUNK_ROWS records and CHUNK_PARAMETERS stacked parameters, so memory stays bounded at 10,000
clients. Chunk size is a cache trade-off that differs between machines: on the Intel machine of
session 17 the default job's 1,000 clients trained in 47 ms a round in two chunks of 500 and in
54 ms in chunks of 236; on the AMD EPYC of session 18 the eager path took 0.32 s a job at 8,192
rows and 0.23 s at 2,048 (flat from 1,536 to 3,072), and with the compiled kernel chunk size
barely matters (0.15-0.16 s from 1,024 to 8,192 rows).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from privlab.engine import fused_kernel
from privlab.engine.base import Chunk, ClientShard, Engine, State, floating_keys
from privlab.engine.chunk_plan import ChunkPlan
from privlab.engine.permutations import epoch_permutations
from privlab.engine.scratch import thread_scratch
from privlab.engine.stacked_sgd import train_chunk
from privlab.training import TrainSettings

CHUNK_ROWS = 2048
CHUNK_PARAMETERS = 16_000_000


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


class VectorisedEngine(Engine):
    name = "vectorised"

    def __init__(
        self,
        shards: list[ClientShard],
        model: nn.Module,
        settings: TrainSettings,
        chunk_size: int | None = None,
        record_space: bool | None = None,
    ) -> None:
        super().__init__(shards)
        self._sizes = [sh.num_samples for sh in shards]
        self._offsets = torch.tensor([0, *self._sizes]).cumsum(0)[:-1]
        self._stored: tuple[tuple[list, list], tuple[torch.Tensor, torch.Tensor]] | None = None
        arch = linear_stack(model)
        if arch is None:
            raise ValueError("the vectorised engine needs a Flatten-Linear-activation model")
        self.arch = arch
        self.settings = settings
        self._steps = [settings.local_epochs * settings.steps_per_epoch(n) for n in self._sizes]
        self.chunk_size = chunk_size  # clients per chunk; None: by CHUNK_ROWS, CHUNK_PARAMETERS
        self._parameters = sum(p.numel() for p in model.parameters())
        self._scratch = thread_scratch()
        self.record_space = record_space  # the first layer's form; None: the cheaper one

    @staticmethod
    def supports(model: nn.Module) -> bool:
        return linear_stack(model) is not None

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "chunk_size": self.chunk_size or f"{CHUNK_ROWS} rows",
            # whether this machine compiled privlab.engine.fused_kernel (full-batch plain SGD of
            # Linear-ReLU-Linear models runs through it there)
            "compiled_kernel_available": fused_kernel.available(),
        }

    def num_samples(self, k: int) -> int:
        return self._sizes[k]

    def steps(self, k: int) -> int:
        return self._steps[k]

    def train(self, start: State, ids: Sequence[int]) -> Iterator[Chunk]:
        store = self._store()
        for chunk in self.chunks(ids):
            yield chunk, self._train_chunk(start, chunk, store)

    def train_each(self, starts: State, ids: Sequence[int]) -> Iterator[Chunk]:
        """As `train`, but client ids[i] starts from its own weights (row i of the stacked
        `starts`): many independent runs at once, as reference models for LiRA train."""
        row = {k: i for i, k in enumerate(ids)}
        store = self._store()
        for chunk in self.chunks(ids):
            rows = torch.tensor([row[k] for k in chunk])
            own = {key: t[rows] for key, t in starts.items()}
            yield chunk, self._train_chunk(own, chunk, store, own=True)

    def _store(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every client's records in one tensor, so that a chunk's padded block is one gather;
        rebuilt when a shard's tensors changed (an attack may rewrite them in place between
        rounds: torch counts in-place writes in each tensor's version)."""
        tensors = [sh.x for sh in self.shards] + [sh.y for sh in self.shards]
        stamp = (tensors, [t._version for t in tensors])  # lists: 4x a tuple per shard
        if self._stored is None or not _same_stamp(self._stored[0], stamp):
            x = torch.cat(
                [sh.x.reshape(n, -1) for sh, n in zip(self.shards, self._sizes, strict=True)]
            )
            self._stored = (stamp, (x, torch.cat([sh.y for sh in self.shards])))
        return self._stored[1]

    def chunks(self, ids: Sequence[int]) -> list[list[int]]:
        """Bucketing: similar step counts share a chunk, so few padded steps are wasted.
        Consumers index by client id, so order within and across chunks does not matter."""
        steps = self._steps
        order = sorted(ids, key=lambda k: (-steps[k], k))
        if self.chunk_size is not None:
            return [order[i : i + self.chunk_size] for i in range(0, len(order), self.chunk_size)]
        if not order:
            return []
        widths = [self._sizes[k] + 1 for k in order]
        rows = sum(widths)
        most = max(1, CHUNK_PARAMETERS // self._parameters)
        count = max(-(-rows // CHUNK_ROWS), -(-len(order) // most))
        out: list[list[int]] = [[] for _ in range(count)]
        before = 0
        for k, width in zip(order, widths, strict=True):  # by rows: equal chunks, no short tail
            out[before * count // rows].append(k)
            before += width
        return [c[i : i + most] for c in out for i in range(0, len(c), most)]

    def train_sums(
        self, start: State, ids: Sequence[int], coef: dict[int, float]
    ) -> Iterator[Chunk]:
        store = self._store()
        for chunk in self.chunks(ids):
            w = torch.tensor([coef[k] for k in chunk], dtype=start[self.arch.keys[0]].dtype)
            yield chunk, self._train_chunk(start, chunk, store, w)

    def _plan(self, chunk: list[int], store: tuple[torch.Tensor, torch.Tensor]) -> ChunkPlan:
        """The chunk's batches over its records in a padded per-client layout. Each client
        draws one permutation per epoch from its own generator, as the sequential path does.
        When every client's batch holds all its records (full batch), a step is a whole epoch
        and the permutation only orders the terms of its sum: rows stay in record order."""
        s, bs, epochs = self.settings, self.settings.batch_size, self.settings.local_epochs
        sizes = [self._sizes[k] for k in chunk]
        full = max(sizes) <= bs
        m, n1 = len(chunk), max(sizes) + (0 if full else 1)  # + a zero row padded slots use
        gens = [self.shards[k].generator for k in chunk]
        perms = epoch_permutations(gens, sizes, epochs, values=not full)
        n = torch.tensor(sizes)
        x, y, real = self._layout(chunk, sizes, n1, store)
        if full:
            weight = (real.view(m, n1) / n.to(x.dtype).view(m, 1)).view(m, n1, 1)
            return ChunkPlan(None, y.view(m, n1), weight, x, real, [m] * epochs, n1)
        per_epoch = [s.steps_per_epoch(n) for n in sizes]
        total_steps = [epochs * p for p in per_epoch]
        width = max(total_steps) * bs  # one client's row of the plan, flattened
        # Every record index lands at (client, epoch * steps_per_epoch * B + position) at once.
        seg_len = torch.tensor(sizes).repeat_interleave(epochs)
        rows = torch.arange(m).repeat_interleave(epochs)
        ep = torch.arange(epochs).repeat(m)
        seg_base = rows * width + ep * torch.tensor(per_epoch).repeat_interleave(epochs) * bs
        seg_start = torch.cat([torch.zeros(1, dtype=torch.long), seg_len.cumsum(0)[:-1]])
        within = torch.arange(int(seg_len.sum())) - seg_start.repeat_interleave(seg_len)
        local = torch.full((m * width,), n1 - 1, dtype=torch.long)
        local[seg_base.repeat_interleave(seg_len) + within] = perms
        local = local.view(m, max(total_steps), bs)
        taken = (local != n1 - 1).to(x.dtype)
        weight = (taken / taken.sum(dim=2, keepdim=True).clamp_min(1)).unsqueeze(3)  # means
        flat = local + (torch.arange(m) * n1).view(m, 1, 1)
        active = [sum(t > step for t in total_steps) for step in range(max(total_steps))]
        return ChunkPlan(flat, y[flat], weight, x, real, active, n1)

    def _layout(
        self, chunk: list[int], sizes: list[int], n1: int, store: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The chunk's records, labels and real-row marks in the padded layout (client i's
        record j at row i * n1 + j). Consecutive clients that all fill their n1 rows already
        sit so in the store: the layout is then a view of it, no copy."""
        m, first = len(chunk), chunk[0]
        if min(sizes) == n1 and chunk == list(range(first, first + m)):
            lo = int(self._offsets[first])
            x, y = store[0][lo : lo + m * n1], store[1][lo : lo + m * n1]
            return x, y, x.new_ones(m * n1)
        n = torch.tensor(sizes)
        within = torch.arange(int(n.sum())) - (n.cumsum(0) - n).repeat_interleave(n)
        slot = (torch.arange(m) * n1).repeat_interleave(n) + within
        src = self._offsets[torch.tensor(chunk)].repeat_interleave(n) + within
        x = store[0].new_zeros(m * n1, store[0].shape[1])
        x[slot] = store[0][src]
        y = store[1].new_zeros(m * n1)
        y[slot] = store[1][src]
        real = torch.zeros(m * n1, dtype=x.dtype)
        real[slot] = 1.0
        return x, y, real

    def _train_chunk(
        self,
        start: State,
        chunk: list[int],
        store: tuple[torch.Tensor, torch.Tensor],
        coef: torch.Tensor | None = None,
        own: bool = False,
    ) -> State:
        """`own`: `start` is stacked [len(chunk), ...], one start per client."""
        plan = self._plan(chunk, store)
        rs = False if own else self.record_space
        out = train_chunk(
            self.arch.ops,
            self.settings,
            start,
            plan,
            record_space=rs,
            coef=coef,
            own=own,
            scratch=self._scratch,
        )
        for k in floating_keys(start):  # tensors that training does not change
            if k not in out:
                t = start[k].detach()
                if own:
                    out[k] = t.clone()
                    continue
                tiled = t.unsqueeze(0).repeat(len(chunk), *[1] * t.dim())
                out[k] = tiled if coef is None else t * coef.sum()
        return out


def _same_stamp(a: tuple[list, list], b: tuple[list, list]) -> bool:
    """The same tensor objects, none written in place since."""
    return len(a[0]) == len(b[0]) and all(map(operator.is_, a[0], b[0])) and a[1] == b[1]
