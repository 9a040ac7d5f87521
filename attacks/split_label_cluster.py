"""Multi-class label inference from the gradients a U-shaped split-learning server receives.

In U-shaped split learning the labels and the head stay with the vehicle; the server sends its
output h to the head and receives dL/dh = J_head(h)^T (softmax(head(h)) - onehot(y)). What the
server sees, per example: h (it computed it), that gradient, and the head weights relayed
through it at the start of each turn (`handoff = "server"`). Two attacks on that view:

- `cluster` (Liu & Lyu 2022, "Clustering Label Inference Attack against Practical Split
  Learning"): gradients of one class point the same way, so k-means (k = number of classes)
  on the L2-normalised gradients of a vehicle's turn groups them by label. The cluster ids are
  named with the relayed head: for each member the server computes the gradient every
  candidate label would give at its h, and clusters get distinct names by a maximum-cosine
  assignment (Hungarian) between clusters and labels. No referee label is used.
- `match` (the label inference of UnSplit, Erdogan et al. 2022, with the relayed head in place
  of a stolen one): each example gets the candidate label whose gradient at its h is nearest
  (cosine) to the one received.
The head moves during a turn, so the candidates are exact only at the turn's first step.
Graded as accuracy beside the class prior (the majority label's share among the graded
examples), with a percentile-bootstrap CI over batches.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from torch import nn
from torch.nn import functional as F

from privlab.attacks.base import (
    Attack,
    AttackResult,
    FinalView,
    RefereeGraded,
    RefereeTruth,
    ThreatModel,
)
from privlab.attacks.split_common import BatchKey, adversary_seed, graded_batches
from privlab.attacks.split_common import client_id as _client_id
from privlab.errors import PrivlabError, ScenarioError
from privlab.wire import SERVER, Message


def candidate_gradients(head: nn.Module, h: torch.Tensor, num_classes: int) -> np.ndarray:
    """(n, classes, d): dCE(head(h), y)/dh for every candidate label y (per-example CE, the
    client's batch-mean loss is this divided by the batch size: cosines are unchanged)."""
    h = h.detach().to(next(head.parameters()).dtype)
    out = []
    for y in range(num_classes):
        hh = h.clone().requires_grad_(True)
        labels = torch.full((len(h),), y, dtype=torch.long)
        F.cross_entropy(head(hh), labels, reduction="sum").backward()
        out.append(hh.grad.reshape(len(h), -1).numpy())
    return np.stack(out, axis=1)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def match_labels(grads: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """UnSplit's rule: the candidate label whose gradient is most cosine-similar."""
    cos = np.einsum("nd,ncd->nc", _unit(grads), _unit(candidates))
    return cos.argmax(axis=1)


def cluster_labels(
    grads: np.ndarray, candidates: np.ndarray, num_classes: int, seed: int
) -> np.ndarray:
    """Liu & Lyu's k-means on normalised gradients, clusters named by Hungarian assignment on
    the summed cosine between members' gradients and each label's candidate gradient."""
    unit = _unit(grads)
    k = min(num_classes, len(unit))
    ids = KMeans(n_clusters=k, n_init=5, random_state=seed % (2**31)).fit_predict(unit)
    cos = np.einsum("nd,ncd->nc", unit, _unit(candidates))
    score = np.stack([cos[ids == c].sum(axis=0) for c in range(k)])  # (clusters, labels)
    rows, cols = linear_sum_assignment(-score)
    names = np.empty(k, dtype=np.int64)
    names[rows] = cols
    return names[ids]


@dataclass
class LabelPredictions(RefereeGraded):
    """Predicted label per observed batch, graded as accuracy beside the class prior."""

    predicted: dict[BatchKey, np.ndarray]
    seed: int = 0

    def grade(self, truth: RefereeTruth) -> AttackResult:
        from privlab.baseline_stats import (
            BOOTSTRAP,
            cluster_share_ci,
            majority_share,
            with_share_baseline,
        )

        keys, batches = graded_batches(truth, self.predicted, "label inference")
        labels = [truth.y_train[batches[k]] for k in keys]
        hits = np.array([(self.predicted[k] == y).sum() for k, y in zip(keys, labels, strict=True)])
        sizes = np.array([len(y) for y in labels])
        pooled = np.concatenate(labels)
        metrics, _ = with_share_baseline(
            "accuracy", int(hits.sum()), int(sizes.sum()), majority_share(pooled)
        )
        metrics.pop("accuracy_ci", None)  # records recur across rounds: not independent
        methods: dict[str, str] = {}
        ci = cluster_share_ci(hits, sizes, seed=self.seed)
        if ci is not None:
            metrics["accuracy_ci"] = ci
            methods["accuracy"] = BOOTSTRAP.format(unit="batches")
        out: dict[str, object] = dict(metrics)
        out.update(n_batches=len(keys), n_examples=int(sizes.sum()))
        return AttackResult(out, ci_methods=methods)


class ClusterLabelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["cluster", "match"] = "cluster"
    min_round: int = Field(default=1, ge=1)


class ClusterLabelInferenceAttack(Attack):
    """Multi-class labels from U-shaped head gradients (Liu & Lyu 2022; UnSplit matching)."""

    family = "label_leakage"
    Params = ClusterLabelParams
    topologies = frozenset({"split"})

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        self.outputs: dict[BatchKey, torch.Tensor] = {}
        self.grads: dict[BatchKey, torch.Tensor] = {}
        self.heads: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self._count: dict[tuple[int, str, str], int] = defaultdict(int)

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="cut_layer",
            party=SERVER,
            knowledge=(
                "its own outputs sent to the head",
                "head weights relayed by server at the start of each turn",
            ),
        )

    def check_setting(self, scenario, input_shape, num_classes) -> None:  # type: ignore[no-untyped-def]
        from privlab.topologies.split import split_params

        if scenario.topology.name != "split":
            return
        p = split_params(scenario)
        if p.mode != "u_shaped" or p.handoff != "server":
            raise ScenarioError(
                f"{self.field}.name: '{self.spec.name}' attacks U-shaped split learning with "
                "the head relayed by the server: set topology.params.mode = 'u_shaped' and "
                "handoff = 'server'"
            )

    def _key(self, msg: Message, vehicle: str) -> BatchKey:
        n = self._count[(msg.round, vehicle, msg.kind)]
        self._count[(msg.round, vehicle, msg.kind)] += 1
        return (msg.round, _client_id(vehicle), n)

    def observe(self, msg: Message) -> None:
        if msg.kind == "activations" and msg.sender == SERVER:
            self.outputs[self._key(msg, msg.receiver)] = msg.payload.detach()
        elif msg.kind == "gradients" and msg.receiver == SERVER:
            self.grads[self._key(msg, msg.sender)] = msg.payload.detach()
        elif msg.kind == "bottom_model" and msg.sender == SERVER:
            self.heads[(msg.round, _client_id(msg.receiver))] = msg.payload

    def finalize(self, view: FinalView) -> LabelPredictions:
        from privlab.topologies.split import cut_model, split_params

        if not self.heads:
            raise PrivlabError(f"{self.field}: the server saw no relayed head")
        _, _, head = cut_model(view.model_factory(), split_params(view.recipe))
        head = head.double()
        seed = adversary_seed(view.recipe.seed, "label_clusters")
        predicted: dict[BatchKey, np.ndarray] = {}
        for (r, k), state in sorted(self.heads.items()):
            if r < self.params.min_round:
                continue
            keys = sorted(key for key in self.grads if key[:2] == (r, k) and key in self.outputs)
            if not keys:
                continue
            head.load_state_dict({n: v for n, v in state.items() if n in head.state_dict()})
            h = torch.cat([self.outputs[key] for key in keys])
            with torch.no_grad():
                num_classes = int(
                    head(h[:1].to(next(head.parameters()).dtype)).shape[1]
                )  # the public task's output width
            g = torch.cat([self.grads[key] for key in keys]).double().reshape(len(h), -1).numpy()
            cand = candidate_gradients(head, h, num_classes)
            if self.params.method == "match":
                pred = match_labels(g, cand)
            else:
                pred = cluster_labels(g, cand, num_classes, seed)
            start = 0
            for key in keys:
                n = len(self.grads[key])
                predicted[key] = pred[start : start + n]
                start += n
        if not predicted:
            raise PrivlabError(f"{self.field}: no gradient batch follows a relayed head")
        return LabelPredictions(predicted, seed=view.recipe.seed)
