"""Attacks at the cut layer of split learning.

Label leakage (Li et al. 2022, "Label Leakage and Protection in Two-party Split Learning",
ICLR): the party without labels receives, per example, the gradient of the loss with respect to
its outputs. With cross-entropy that gradient is (p - onehot(y)) pulled back through the label
party's layers, so
- `norm`: examples of the minority class, on which the model is less confident, get larger
  gradient norms; the norm is the score;
- `cosine`: gradients of the two classes point in opposite directions; the score is the cosine
  similarity to a reference gradient (the paper uses a known positive; here the example of the
  largest norm in the batch, which the norm argument says is most likely positive).
Setting: U-shaped split learning (labels on the client); the server is the adversary observing
the gradients its outputs receive. Graded by the referee as AUC for "minority class", the
paper's "leak AUC", averaged over batches. Qualitative result reproduced: near-perfect AUC
without defense; the max-norm gradient perturbation lowers the norm attack's AUC.

Activation inversion by an inverse model (He et al. 2019, "Model inversion attacks against
collaborative inference", ACSAC): the server holds auxiliary records of the same distribution
(here: the population data no client trains on) and the bottom weights (relayed through it when
`handoff = "server"`); it trains a decoder from activations back to inputs and applies it to
the activations clients sent. Graded as MSE (and PSNR for images) against the true inputs.
Qualitative result reproduced: inversion is far better than the know-nothing baseline without
defense; NoPeek and activation noise make it worse.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import roc_auc_score
from torch import nn

from privlab.attacks.base import (
    Attack,
    AttackResult,
    FinalView,
    RefereeGraded,
    RefereeTruth,
    ThreatModel,
)
from privlab.errors import PrivlabError
from privlab.wire import SERVER, Message

BatchKey = tuple[int, int, int]


def _client_id(party: str) -> int:
    return int(party.removeprefix("client"))


def norm_scores(grad: np.ndarray) -> np.ndarray:
    """Li et al.'s norm attack: per-example gradient norm."""
    return np.linalg.norm(grad.reshape(len(grad), -1), axis=1)


def cosine_scores(grad: np.ndarray) -> np.ndarray:
    """Li et al.'s direction attack: cosine to the reference (largest-norm) example's gradient."""
    flat = grad.reshape(len(grad), -1).astype(np.float64)
    norms = np.linalg.norm(flat, axis=1)
    ref = flat[int(np.argmax(norms))]
    return flat @ ref / np.maximum(norms * np.linalg.norm(ref), 1e-12)


# --------------------------------------------------------------------------- label leakage


@dataclass
class LabelScores(RefereeGraded):
    """Per-batch scores (higher = minority class), graded as the paper's leak AUC."""

    scores: dict[BatchKey, np.ndarray]

    def grade(self, truth: RefereeTruth) -> AttackResult:
        batches = truth.log.get("split_batches", {})
        keys = [k for k in self.scores if k in batches]
        if not keys:
            raise PrivlabError("label leakage: no observed batch matches the referee's log")
        labels = {k: truth.y_train[batches[k]] for k in keys}
        seen = np.concatenate(list(labels.values()))
        classes, counts = np.unique(seen, return_counts=True)
        positive = int(classes[np.argmin(counts)])
        per_batch = []
        for k in keys:
            y = labels[k] == positive
            if y.any() and not y.all():
                per_batch.append(roc_auc_score(y, self.scores[k]))
        pooled_y = np.concatenate([labels[k] == positive for k in keys])
        pooled_s = np.concatenate([self.scores[k] for k in keys])
        return AttackResult(
            {
                "auc": float(np.mean(per_batch)) if per_batch else float("nan"),
                "pooled_auc": float(roc_auc_score(pooled_y, pooled_s)),
                "positive_class": positive,
                "n_batches": len(per_batch),
                "n_examples": len(pooled_y),
            }
        )


class LabelLeakageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["norm", "cosine"] = "norm"
    party: str = Field(default=SERVER, pattern=r"^(server|client\d+)$")
    """The party that receives cut-layer gradients without holding the labels."""
    min_round: int = Field(default=1, ge=1)
    max_round: int | None = Field(default=None, ge=1)
    """Only use gradients of rounds min_round..max_round (None: to the end)."""


class LabelLeakageAttack(Attack):
    """Label leakage from cut-layer gradients, norm or cosine attack (Li et al. 2022)."""

    family = "label_leakage"
    Params = LabelLeakageParams
    topologies = frozenset({"split"})

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        self.scores: dict[BatchKey, np.ndarray] = {}
        self._count: dict[tuple[int, str], int] = defaultdict(int)

    def threat_model(self) -> ThreatModel:
        knowledge = (
            ("the minority class gets the larger gradients",)
            if self.params.method == "norm"
            else ("the largest-norm example of a batch is positive",)
        )
        return ThreatModel(adversary="cut_layer", party=self.params.party, knowledge=knowledge)

    def observe(self, msg: Message) -> None:
        if msg.kind != "gradients" or msg.receiver != self.params.party:
            return
        other = msg.sender
        n = self._count[(msg.round, other)]
        self._count[(msg.round, other)] += 1
        p = self.params
        if msg.round < p.min_round or (p.max_round is not None and msg.round > p.max_round):
            return
        if not other.startswith("client"):  # a client receiving from the server
            other = self.params.party
        grad = msg.payload.detach().double().numpy()
        score = norm_scores(grad) if self.params.method == "norm" else cosine_scores(grad)
        self.scores[(msg.round, _client_id(other), n)] = score

    def finalize(self, view: FinalView) -> LabelScores:
        if not self.scores:
            raise PrivlabError(
                f"{self.field}: party '{self.params.party}' received no cut-layer gradients "
                "(in vanilla split learning the server already holds the labels: use "
                "topology.params.mode = 'u_shaped', or a client as the party)"
            )
        return LabelScores(self.scores)


# --------------------------------------------------------------------------- inversion


@dataclass
class Reconstructions(RefereeGraded):
    """Reconstructed inputs per observed batch, graded against the true inputs."""

    x_hat: dict[BatchKey, np.ndarray]
    image: bool

    def grade(self, truth: RefereeTruth) -> AttackResult:
        batches = truth.log.get("split_batches", {})
        keys = [k for k in self.x_hat if k in batches]
        if not keys:
            raise PrivlabError("inversion: no observed batch matches the referee's log")
        x_true = np.concatenate([truth.x_train[batches[k]] for k in keys]).astype(np.float64)
        x_hat = np.concatenate([self.x_hat[k] for k in keys]).astype(np.float64)
        x_hat = x_hat.reshape(x_true.shape)
        mse = float(np.mean((x_hat - x_true) ** 2))
        baseline = float(np.mean((x_true - truth.x_train.mean(axis=0)) ** 2))
        metrics: dict[str, float | int] = {
            "mse": mse,
            "mse_baseline": baseline,
            "mse_ratio": mse / baseline if baseline > 0 else float("nan"),
            "n_examples": len(x_true),
        }
        artifacts = {}
        if self.image:
            from privlab.image_metrics import psnr

            clipped = np.clip(x_hat, 0.0, 1.0)
            metrics["psnr"] = float(np.mean(psnr(clipped, x_true)))
            artifacts["examples"] = {
                "true": np.round(x_true[:8], 3).tolist(),
                "reconstructed": np.round(clipped[:8], 3).tolist(),
            }
        return AttackResult(metrics, artifacts)


class InversionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(default=256, ge=1)
    epochs: int = Field(default=200, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    max_examples: int = Field(default=256, ge=1)


class ActivationInversionAttack(Attack):
    """Inverse-model reconstruction of client inputs from activations (He et al. 2019)."""

    family = "input_reconstruction"
    Params = InversionParams
    topologies = frozenset({"split"})
    needs_bottom_weights = True

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        self.activations: dict[BatchKey, torch.Tensor] = {}
        self._count: dict[tuple[int, str], int] = defaultdict(int)
        self.bottom: tuple[int, int, dict[str, torch.Tensor]] | None = None

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="cut_layer",
            party=SERVER,
            knowledge=("auxiliary data from the population", "bottom weights relayed by server"),
        )

    def observe(self, msg: Message) -> None:
        if msg.kind == "activations" and msg.receiver == SERVER:
            n = self._count[(msg.round, msg.sender)]
            self._count[(msg.round, msg.sender)] += 1
            self.activations[(msg.round, _client_id(msg.sender), n)] = msg.payload.detach()
        elif msg.kind == "bottom_model" and msg.sender == SERVER:
            self.bottom = (msg.round, _client_id(msg.receiver), msg.payload)

    def finalize(self, view: FinalView) -> Reconstructions:
        from privlab.topologies.split import cut_model, split_params

        if self.bottom is None or view.population is None:
            raise PrivlabError(f"{self.field}: the server saw no bottom model to invert")
        r, k, state = self.bottom
        bottom, _, _ = cut_model(view.model_factory(), split_params(view.recipe))
        bottom.load_state_dict({n: v for n, v in state.items() if n in bottom.state_dict()})
        targets = sorted(key for key in self.activations if key[:2] == (r, k))
        x_aux = torch.as_tensor(view.population.x)
        with torch.no_grad():
            z_aux = bottom(x_aux)
        decoder = train_decoder(z_aux, x_aux, self.params, seed=view.recipe.seed)
        out: dict[BatchKey, np.ndarray] = {}
        total = 0
        with torch.no_grad():
            for key in targets:
                if total >= self.params.max_examples:
                    break
                z = self.activations[key]
                out[key] = decoder(z.reshape(len(z), -1)).reshape(len(z), *x_aux.shape[1:]).numpy()
                total += len(z)
        return Reconstructions(out, image=x_aux.dim() == 4)


def train_decoder(
    z: torch.Tensor, x: torch.Tensor, p: InversionParams, seed: int
) -> nn.Module:
    """An MLP decoder z -> x trained with MSE on auxiliary pairs (full batch, Adam)."""
    torch.manual_seed(seed)
    zf, xf = z.reshape(len(z), -1), x.reshape(len(x), -1)
    decoder = nn.Sequential(
        nn.Linear(zf.shape[1], p.hidden), nn.ReLU(), nn.Linear(p.hidden, xf.shape[1])
    )
    opt = torch.optim.Adam(decoder.parameters(), lr=p.lr)
    for _ in range(p.epochs):
        opt.zero_grad()
        loss = nn.functional.mse_loss(decoder(zf), xf)
        loss.backward()
        opt.step()
    return decoder
