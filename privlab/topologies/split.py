"""Split learning (Gupta & Raskar 2018; Vepakomma et al. 2018, "Split learning for health").

The model (an nn.Sequential) is cut after `cut_layer` modules. Each client trains the bottom
part on its own records and sends the cut-layer activations to the server, which runs the top
part and returns the gradient of the loss with respect to those activations.
- `vanilla`: the client also sends the labels; the server computes the loss.
- `u_shaped`: the last `head_layers` modules and the labels stay on the client; the server sends
  its output activations to the client's head and receives their gradients back, so labels never
  cross the wire (but those gradients can still leak them: Li et al. 2022).
Clients train one after another each round, passing the bottom model (and head) on, either
directly to the next client (`handoff = "peer"`) or relayed through the server
(`handoff = "server"`, which lets the server see the bottom weights).
Every message goes through `ctx.wire`; the referee-only log records which records each batch
held (keyed by round, client and step) so label-leakage and inversion attacks can be graded.
The released model is the composed model (bottom + top [+ head]).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from privlab.defenses.base import Placement
from privlab.errors import ScenarioError
from privlab.scenario import validate_params
from privlab.topologies.base import Topology, TopologyContext, TrainingOutcome
from privlab.topologies.split_pretrain import PretrainParams, pretrain
from privlab.training import LocalTrainer, State, seeded_generator
from privlab.wire import SERVER, client

BatchKey = tuple[int, int, int]
"""(round, client id, step within that client's turn): how attacks and referee name a batch."""


class SplitParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cut_layer: int = Field(default=3, ge=1)
    """Number of leading modules of the model that run on the client (the bottom model)."""
    mode: Literal["vanilla", "u_shaped"] = "vanilla"
    head_layers: int = Field(default=1, ge=1)
    """U-shaped only: trailing modules kept on the client with the labels."""
    handoff: Literal["peer", "server"] = "peer"
    pretrain: PretrainParams | None = None
    """Server pretraining on the dataset's public records before the first client's turn
    (`privlab.topologies.split_pretrain`); None: clients start from the initial weights."""


def split_params(ctx_or_scenario: Any) -> SplitParams:
    spec = getattr(ctx_or_scenario, "topology", ctx_or_scenario)
    return validate_params(SplitParams, spec.params, "topology.params")  # type: ignore[return-value]


def cut_model(model: nn.Module, p: SplitParams) -> tuple[nn.Sequential, ...]:
    """(bottom, server part, head) slices sharing the model's modules; head is empty if vanilla."""
    if not isinstance(model, nn.Sequential):
        raise ScenarioError(
            f"topology.params.cut_layer: split learning needs a sequential model, "
            f"got {type(model).__name__}"
        )
    n = len(model)
    head = p.head_layers if p.mode == "u_shaped" else 0
    if not 1 <= p.cut_layer <= n - head - 1:
        raise ScenarioError(
            f"topology.params.cut_layer: must be in 1..{n - head - 1} for this model "
            f"({n} modules{', ' + str(head) + ' in the head' if head else ''}; "
            f"got {p.cut_layer})"
        )
    top = model[p.cut_layer : n - head]
    if not any(True for _ in top.parameters()):
        raise ScenarioError(
            f"topology.params.cut_layer: the server part (modules {p.cut_layer}..{n - head - 1}: "
            f"{', '.join(type(m).__name__ for m in top)}) has no parameters; cut earlier or "
            "use a deeper model"
        )
    return model[: p.cut_layer], top, model[n - head :]


def _optimizer(params: Any, spec: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        list(params), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )


class SplitTopology(Topology):
    """Split learning, vanilla or U-shaped, clients in turn passing the bottom model on."""

    placements = frozenset({Placement.LOCAL_TRAINING, Placement.SPLIT_BOUNDARY})

    @staticmethod
    def check_setting(
        scenario: Any, input_shape: tuple[int, ...], num_classes: int, num_clients: int
    ) -> None:
        """Validate topology.params and the cut against the model before any training."""
        from privlab.models import build_model

        p = split_params(scenario)
        cut_model(build_model(scenario.model, input_shape, num_classes), p)
        data = scenario.data
        pre = p.pretrain is not None and p.pretrain.epochs > 0
        if pre and data.name == "traffic_signs" and int(data.params.get("public_images", 0)) <= 0:
            raise ScenarioError(
                "topology.params.pretrain: needs public records in the dataset: set "
                "data.params.public_images > 0"
            )

    def __init__(self, ctx: TopologyContext) -> None:
        super().__init__(ctx)
        self.params = split_params(ctx.scenario)
        d = ctx.defenses
        from privlab.defenses.split_boundary import SplitBoundaryDefense

        self.boundary = [x for x in d.other if isinstance(x, SplitBoundaryDefense)]
        self.start, self.pretrain_accuracy = ctx.model, None
        pre = self.params.pretrain
        if pre is not None and pre.epochs > 0:
            spec = self.spec
            self.start, self.pretrain_accuracy = pretrain(
                ctx.model,
                (ctx.dataset.x_public, ctx.dataset.y_public),
                pre,
                lr=spec.lr,
                momentum=spec.momentum,
                weight_decay=spec.weight_decay,
                batch_size=spec.batch_size,
                seed=self.seed,
                x_eval=ctx.x_test,
                y_eval=ctx.y_test,
            )
        self.released = copy.deepcopy(self.start)
        _, top, _ = cut_model(self.released, self.params)
        self.top = top
        self.top_opt = _optimizer(top.parameters(), self.spec)
        self.malicious = [a for a in ctx.attacks if hasattr(a, "split_server_gradients")]
        for a in self.malicious:  # an active server gets its own copy of the bottom architecture
            pilot, _, _ = cut_model(copy.deepcopy(ctx.model), self.params)
            a.split_server_setup(pilot, torch.as_tensor(ctx.dataset.x_test), self.seed)
        for a in ctx.attacks:
            if a.controlled_clients(len(ctx.clients)):
                raise ScenarioError(
                    f"{a.field}.name: '{a.spec.name}' controls clients through their model "
                    "updates, which split learning does not exchange"
                )
        self.batches: dict[BatchKey, np.ndarray] = {}

    # ------------------------------------------------------------------ client parts

    def _client_parts(self, k: int, idx: np.ndarray) -> tuple[LocalTrainer, nn.Sequential | None]:
        bottom, _, head = cut_model(copy.deepcopy(self.start), self.params)
        x = self.ctx.x_train[torch.as_tensor(idx)]
        y = self.ctx.y_train[torch.as_tensor(idx)]
        gen = seeded_generator(self.seed, k, 7)
        defense = self.ctx.defenses.local_training
        if defense is None:
            trainer = LocalTrainer(bottom, x, y, self.settings, gen)
        else:
            planned = self.spec.rounds * self.spec.local_epochs
            trainer = defense.make_trainer(bottom, x, y, self.settings, gen, planned_epochs=planned)
        return trainer, (head if len(head) else None)

    def run(self) -> TrainingOutcome:
        ctx, spec, p = self.ctx, self.spec, self.params
        parts = [self._client_parts(c.client_id, c.train_idx) for c in ctx.clients]
        head_opts = [_optimizer(h.parameters(), spec) if h is not None else None for _, h in parts]
        records = []
        holder: int | None = None
        if self.pretrain_accuracy is not None:  # the server hands its base model to the first
            first = ctx.clients[0].client_id
            state = dict(parts[first][0].model.state_dict())
            if parts[first][1] is not None:
                state.update(parts[first][1].state_dict())
            state = {k: v.detach().clone() for k, v in state.items()}
            self.ctx.wire.send(1, SERVER, client(first), "bottom_model", state)
        for r in range(1, spec.rounds + 1):
            for c in ctx.clients:
                k = c.client_id
                trainer, head = parts[k]
                if holder is not None and holder != k:
                    self._handoff(r, holder, k, parts)
                holder = k
                trainer.optimizer.state.clear()
                batches = [b for _ in range(spec.local_epochs) for b in trainer._batches()]
                for step, idx in enumerate(batches):
                    self._step(r, k, step, trainer, head, head_opts[k], c.train_idx, idx)
            assert holder is not None
            self._compose(parts[holder])
            records.append(self.record(r, self.released, participants=len(ctx.clients)))
        privacy = self.worst_case_privacy(
            {str(c.client_id): t.privacy() for c, (t, _) in zip(ctx.clients, parts, strict=True)}
        )
        notes = [
            f"split learning ({p.mode}), cut after module {p.cut_layer}, "
            f"bottom model handed on via {p.handoff}"
        ]
        extra = {}
        if self.pretrain_accuracy is not None:
            assert p.pretrain is not None and ctx.dataset.x_public is not None
            n_public = len(ctx.dataset.x_public)
            extra["pretrain"] = {
                "epochs": p.pretrain.epochs,
                "public_records": n_public,
                "base_model_accuracy": self.pretrain_accuracy,
            }
            notes.append(
                f"server pretraining: {p.pretrain.epochs} epochs on {n_public} public records; "
                f"base-model accuracy {self.pretrain_accuracy:.3f} before any client trained"
            )
        return TrainingOutcome(
            self.released,
            records,
            privacy,
            notes,
            truth={"split_batches": self.batches},
            extra=extra,
        )

    def _handoff(self, r: int, src: int, dst: int, parts: list) -> None:
        """Pass the client-side weights from `src` to `dst` (through the server if relayed)."""
        trainer, head = parts[src]
        state: State = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        if head is not None:
            state.update({k: v.detach().clone() for k, v in head.state_dict().items()})
        if self.params.handoff == "server":
            self.ctx.wire.send(r, client(src), SERVER, "bottom_model", state)
            self.ctx.wire.send(r, SERVER, client(dst), "bottom_model", state)
        else:
            self.ctx.wire.send(r, client(src), client(dst), "bottom_model", state)
        t2, h2 = parts[dst]
        t2.model.load_state_dict({k: v for k, v in state.items() if k in t2.model.state_dict()})
        if h2 is not None:
            h2.load_state_dict({k: v for k, v in state.items() if k in h2.state_dict()})

    def _compose(self, part: tuple[LocalTrainer, nn.Sequential | None]) -> None:
        trainer, head = part
        state = dict(self.released.state_dict())
        state.update(trainer.model.state_dict())
        if head is not None:
            state.update(head.state_dict())
        self.released.load_state_dict(state)

    # ------------------------------------------------------------------ one batch

    def _step(
        self,
        r: int,
        k: int,
        step: int,
        trainer: LocalTrainer,
        head: nn.Sequential | None,
        head_opt: torch.optim.Optimizer | None,
        train_idx: np.ndarray,
        idx: torch.Tensor,
    ) -> None:
        wire = self.ctx.wire
        forward = getattr(trainer, "grad_sample_module", trainer.model)
        xb, yb = trainer.x[idx], trainer.y[idx]
        trainer.optimizer.zero_grad(set_to_none=True)
        act = forward(xb)
        if len(yb) == 0:  # empty Poisson batch under DP-SGD: a pure-noise step, nothing sent
            act.sum().backward()
            trainer.optimizer.step()
            return
        self.batches[(r, k, step)] = train_idx[idx.numpy()]
        gen = seeded_generator(self.seed, k, r, step, 31)
        sent = act.detach()
        for d in self.boundary:
            sent = d.protect_activations(sent, generator=gen)
        wire.send(r, client(k), SERVER, "activations", sent)
        if self.malicious:
            grad = self.malicious[0].split_server_gradients(r, k, sent)
        elif head is None:
            wire.send(r, client(k), SERVER, "labels", yb)
            grad = self._server_vanilla(sent, yb, gen)
        else:
            assert head_opt is not None
            grad = self._server_u_shaped(r, k, sent, yb, head, head_opt, gen)
        wire.send(r, SERVER, client(k), "gradients", grad)
        objective = (act * grad).sum()
        for d in self.boundary:
            penalty = d.client_penalty(xb, act)
            if penalty is not None:
                objective = objective + penalty
        objective.backward()
        trainer.optimizer.step()

    def _server_vanilla(
        self, sent: torch.Tensor, yb: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        a = sent.clone().requires_grad_(True)
        loss = F.cross_entropy(self.top(a), yb)
        self.top_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.top_opt.step()
        grad = a.grad.detach()
        for d in self.boundary:  # the label party (here the server) protects the labels
            grad = d.protect_gradients(grad, generator=gen)
        return grad

    def _server_u_shaped(
        self,
        r: int,
        k: int,
        sent: torch.Tensor,
        yb: torch.Tensor,
        head: nn.Sequential,
        head_opt: torch.optim.Optimizer,
        gen: torch.Generator,
    ) -> torch.Tensor:
        wire = self.ctx.wire
        a = sent.clone().requires_grad_(True)
        h = self.top(a)
        wire.send(r, SERVER, client(k), "activations", h.detach())
        hh = h.detach().clone().requires_grad_(True)  # on the client: head and labels
        loss = F.cross_entropy(head(hh), yb)
        head_opt.zero_grad(set_to_none=True)
        loss.backward()
        head_opt.step()
        gh = hh.grad.detach()
        for d in self.boundary:  # the label party (here the client) protects the labels
            gh = d.protect_gradients(gh, generator=gen)
        wire.send(r, client(k), SERVER, "gradients", gh)
        self.top_opt.zero_grad(set_to_none=True)
        h.backward(gh)
        self.top_opt.step()
        return a.grad.detach()
