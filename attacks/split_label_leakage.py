"""Label leakage at the cut layer (Li et al. 2022, "Label Leakage and Protection in Two-party
Split Learning", ICLR).

The party without labels receives, per example, the gradient of the loss with respect to its
outputs. With cross-entropy that gradient is (p - onehot(y)) pulled back through the label
party's layers, so
- `norm`: examples of the minority class, on which the model is less confident, get larger
  gradient norms; the norm is the score;
- `cosine`: gradients of the two classes point in opposite directions; the score is the cosine
  similarity to a reference gradient (the paper uses a known positive; here the largest-norm
  example, with the sign chosen so that the smaller of the two clusters is the positive one).
Setting: U-shaped split learning (labels on the client); the server is the adversary observing
the gradients its outputs receive. Graded by the referee as AUC for "minority class", the
paper's "leak AUC", averaged over batches (chance 0.5, bootstrap CI over batches), and as the
accuracy of the attack's own decision beside the class prior (majority-class share).
Qualitative result reproduced: near-perfect AUC without defense; the max-norm gradient
perturbation lowers the norm attack's AUC.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import roc_auc_score

from privlab.attacks.base import (
    Attack,
    AttackResult,
    FinalView,
    RefereeGraded,
    RefereeTruth,
    ThreatModel,
)
from privlab.attacks.split_common import BatchKey, graded_batches
from privlab.attacks.split_common import client_id as _client_id
from privlab.errors import PrivlabError, ScenarioError
from privlab.wire import SERVER, Message


def two_means_split(scores: np.ndarray) -> np.ndarray:
    """Exact 1-D 2-means (min within-cluster sum of squares): True for the upper cluster.

    The norm attack's decision rule without labels: large-norm examples form one cluster."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) < 2 or np.ptp(s) == 0:
        return np.zeros(len(s), dtype=bool)
    v = np.sort(s)
    n = len(v)
    c1, c2 = np.cumsum(v), np.cumsum(v**2)
    k = np.arange(1, n)  # left cluster = v[:k]
    sse_left = c2[k - 1] - c1[k - 1] ** 2 / k
    sse_right = (c2[-1] - c2[k - 1]) - (c1[-1] - c1[k - 1]) ** 2 / (n - k)
    cut = int(k[np.argmin(sse_left + sse_right)])
    return s >= v[cut]


def norm_scores(grad: np.ndarray) -> np.ndarray:
    """Li et al.'s norm attack: per-example gradient norm."""
    return np.linalg.norm(grad.reshape(len(grad), -1), axis=1)


def cosine_scores(grad: np.ndarray) -> np.ndarray:
    """Li et al.'s direction attack without a known positive: cosine to a reference gradient
    (the largest-norm example) splits the batch into two opposite clusters; the smaller cluster
    is taken as the minority (positive) class, so the score is flipped if the reference's
    cluster is the larger one."""
    flat = grad.reshape(len(grad), -1).astype(np.float64)
    norms = np.linalg.norm(flat, axis=1)
    ref = flat[int(np.argmax(norms))]
    cos = flat @ ref / np.maximum(norms * np.linalg.norm(ref), 1e-12)
    same = int((cos > 0).sum())
    return cos if same <= len(cos) - same else -cos


# --------------------------------------------------------------------------- label leakage


@dataclass
class LabelScores(RefereeGraded):
    """Per-batch scores (higher = minority class), graded as the paper's leak AUC.

    Beside the AUC (chance: 0.5) the attack's own decision (`predicted`: the cosine attack's
    sign, the norm attack's upper 2-means cluster) is graded as accuracy beside the class
    prior: the share of the majority class among the graded examples."""

    scores: dict[BatchKey, np.ndarray]
    predicted: dict[BatchKey, np.ndarray] | None = None
    seed: int = 0

    def grade(self, truth: RefereeTruth) -> AttackResult:
        from privlab.baseline_stats import (
            BOOTSTRAP,
            bootstrap_mean_ci,
            cluster_share_ci,
            majority_share,
            with_share_baseline,
        )

        keys, batches = graded_batches(truth, self.scores, "label leakage")
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
        metrics: dict[str, object] = {}
        methods: dict[str, str] = {}
        if per_batch:
            auc = float(np.mean(per_batch))
            metrics.update(auc=auc, auc_baseline=0.5, auc_gain=auc - 0.5)
            ci = bootstrap_mean_ci(np.array(per_batch), seed=self.seed)
            if ci is not None:
                metrics["auc_ci"] = ci
                methods["auc"] = BOOTSTRAP.format(unit="batches")
        pooled = float(roc_auc_score(pooled_y, pooled_s))
        metrics.update(pooled_auc=pooled, pooled_auc_baseline=0.5, pooled_auc_gain=pooled - 0.5)
        if self.predicted is not None:
            hits = np.array([(self.predicted[k] == (labels[k] == positive)).sum() for k in keys])
            sizes = np.array([len(labels[k]) for k in keys])
            out, _ = with_share_baseline(
                "accuracy", int(hits.sum()), int(sizes.sum()), majority_share(pooled_y)
            )
            out.pop("accuracy_ci", None)  # records recur across rounds: not independent trials
            ci = cluster_share_ci(hits, sizes, seed=self.seed)
            if ci is not None:
                out["accuracy_ci"] = ci
                methods["accuracy"] = BOOTSTRAP.format(unit="batches")
            metrics.update(out)
        metrics.update(
            positive_class=positive,
            positive_share=float(pooled_y.mean()),
            n_batches=len(per_batch),
            n_examples=len(pooled_y),
        )
        return AttackResult(metrics, ci_methods=methods)


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
        self.predicted: dict[BatchKey, np.ndarray] = {}
        self._count: dict[tuple[int, str], int] = defaultdict(int)

    def threat_model(self) -> ThreatModel:
        knowledge = (
            ("the minority class gets the larger gradients",)
            if self.params.method == "norm"
            else ("the positive class is the minority within a batch",)
        )
        return ThreatModel(adversary="cut_layer", party=self.params.party, knowledge=knowledge)

    def check_setting(self, scenario, input_shape, num_classes) -> None:  # type: ignore[no-untyped-def]
        from privlab.topologies.split import split_params

        p = self.params
        if scenario.topology.name == "split":
            mode = split_params(scenario).mode
            if mode == "vanilla" and p.party == SERVER:
                raise ScenarioError(
                    f"{self.field}.params.party: in vanilla split learning the server already "
                    "receives the labels (nothing to infer); use topology.params.mode = "
                    "'u_shaped' or a client as the party"
                )
        if p.party != SERVER and _client_id(p.party) >= scenario.partition.num_clients:
            raise ScenarioError(
                f"{self.field}.params.party: '{p.party}' does not exist "
                f"({scenario.partition.num_clients} clients)"
            )

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
        key = (msg.round, _client_id(other), n)
        if self.params.method == "norm":
            score = norm_scores(grad)
            self.predicted[key] = two_means_split(score)
        else:
            score = cosine_scores(grad)
            self.predicted[key] = score > 0
        self.scores[key] = score

    def finalize(self, view: FinalView) -> LabelScores:
        if not self.scores:
            raise PrivlabError(
                f"{self.field}: party '{self.params.party}' received no cut-layer gradients "
                "(in vanilla split learning the server already holds the labels: use "
                "topology.params.mode = 'u_shaped', or a client as the party)"
            )
        return LabelScores(self.scores, self.predicted, seed=view.recipe.seed)
