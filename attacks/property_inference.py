"""Route (property) inference from a vehicle's cut-layer traffic in split learning.

Property inference (Ganju et al. 2018, "Property Inference Attacks on Fully Connected Neural
Networks using Permutation Invariant Representations", CCS; Melis et al. 2019, "Exploiting
Unintended Feature Leakage in Collaborative Learning", S&P): a meta-classifier trained on
shadow observations whose property is known tells the property of a target observation. Here
the property is the region a vehicle drove in (its route), the observation is the set of
cut-layer activations the vehicle sent during its last turn, and the set is summarised by a
permutation-invariant representation: the mean and standard deviation over the vehicle's
records of each channel's activations pooled to a 4x4 grid (Ganju et al.'s DeepSets form with a
fixed per-record map instead of a learned one).

Threat model: the split-learning server, honest-but-curious. It sees the activations each
vehicle sends and the bottom model relayed through it (`handoff = "server"`) at the start of
each vehicle's turn. It holds auxiliary labelled images from each region (the public class mix
and conditions of each region, `privlab.data_traffic_signs.REGION_MIX` / `REGIONS`, drawn on
a random stream of its own, never the vehicles' records). It simulates `shadow_vehicles` shadow
vehicles per region, passes their images through the bottom model the target vehicle started
its turn with, and trains a logistic-regression meta-classifier on the shadow summaries. Graded
by the referee against the true regions: accuracy with its class-prior baseline (the majority
region's share among the target vehicles) and a Clopper-Pearson 95% interval. With server
pretraining (`topology.params.pretrain`) the first vehicle's bottom is the server's own base
model. `adaptive = true`: the shadow activations get the variant's activation noise too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.nn import functional as F

from privlab.attacks.base import (
    Attack,
    AttackResult,
    FinalView,
    RefereeGraded,
    RefereeTruth,
    ThreatModel,
)
from privlab.attacks.split_common import adversary_seed, digest
from privlab.attacks.split_inversion import defense_noise_sigma
from privlab.errors import PrivlabError, ScenarioError
from privlab.wire import SERVER, Message

_PREDICTIONS: dict[str, dict[int, int]] = {}
"""The last prediction, kept for an identical request (one entry)."""


def _client_id(party: str) -> int:
    return int(party.removeprefix("client"))


def set_summary(z: torch.Tensor, with_std: bool = True) -> np.ndarray:
    """Permutation-invariant summary of a set of activations: mean (and std) over records of
    each channel pooled to 4x4 (images) or of each feature (flat activations)."""
    z = z.detach().double()
    if z.dim() == 4:
        z = F.adaptive_avg_pool2d(z, 4)
    flat = z.reshape(len(z), -1)
    if not with_std:
        return flat.mean(0).numpy()
    return torch.cat([flat.mean(0), flat.std(0, unbiased=False)]).numpy()


def majority_share(labels: np.ndarray) -> float:
    """The class-prior baseline: accuracy of always guessing the most frequent label."""
    return float(np.bincount(labels).max() / len(labels))


@dataclass
class RoutePredictions(RefereeGraded):
    """Predicted region per client. `data_params` and `seed` are the data recipe the referee
    uses to recompute the true regions; the prediction never read them."""

    predicted: dict[int, int]
    data_params: dict = field(repr=False)
    seed: int = 0

    def grade(self, truth: RefereeTruth) -> AttackResult:
        from privlab.audit import clopper_pearson
        from privlab.data_traffic_signs import TrafficSignsParams, vehicle_regions

        p = TrafficSignsParams(**self.data_params)
        regions = vehicle_regions(p.num_vehicles, p.num_regions, self.seed)
        clients = sorted(self.predicted)
        true = regions[clients]  # partition by_group: client k is vehicle k
        pred = np.array([self.predicted[k] for k in clients])
        correct = int((pred == true).sum())
        acc = correct / len(clients)
        base = majority_share(true)
        lo, hi = clopper_pearson(correct, len(clients), 0.05)
        return AttackResult(
            {
                "accuracy": acc,
                "accuracy_baseline": base,
                "accuracy_gain": acc - base,
                "accuracy_ci": [lo, hi],
                "n_vehicles": len(clients),
                "n_regions": p.num_regions,
            },
            ci_methods={"accuracy": "Clopper-Pearson exact binomial"},
        )


class RouteInferenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shadow_vehicles: int = Field(default=12, ge=2, le=1000)
    """Shadow vehicles simulated per region from the server's auxiliary images."""
    C: float = Field(default=1.0, gt=0)
    """Inverse L2 strength of the logistic-regression meta-classifier."""
    statistics: Literal["mean_std", "mean"] = "mean_std"
    """Set summary: per-feature mean and std, or the mean only (zero-mean activation noise
    leaves the mean unbiased but inflates the std the shadow vehicles never saw)."""
    adaptive: bool = False
    """Kerckhoffs: pass the shadow activations through the variant's activation noise (same
    sigma, from the public recipe) before summarising them."""


class RouteInferenceAttack(Attack):
    """The server infers each vehicle's region from its cut-layer activations (Ganju et al.)."""

    family = "property_inference"
    Params = RouteInferenceParams
    topologies = frozenset({"split"})

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        self.activations: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
        self.bottoms: dict[int, tuple[int, dict[str, torch.Tensor]]] = {}

    def threat_model(self) -> ThreatModel:
        knowledge = (
            "auxiliary labelled images from each region (public class mix and conditions)",
            "bottom weights relayed by server (with pretraining: the base model it trained)",
        )
        if self.params.adaptive:
            knowledge += ("the variant's defense and its parameters (public recipe)",)
        return ThreatModel(adversary="cut_layer", party=SERVER, knowledge=knowledge)

    def check_setting(self, scenario, input_shape, num_classes) -> None:  # type: ignore[no-untyped-def]
        from privlab.topologies.split import split_params

        if scenario.data.name != "traffic_signs" or scenario.partition.scheme != "by_group":
            raise ScenarioError(
                f"{self.field}.name: '{self.spec.name}' needs data.name = 'traffic_signs' with "
                "partition.scheme = 'by_group' (one vehicle per client)"
            )
        if scenario.topology.name == "split" and split_params(scenario).handoff != "server":
            raise ScenarioError(
                f"{self.field}.name: '{self.spec.name}' needs the server to see the bottom "
                "model: set topology.params.handoff = 'server'"
            )
        if scenario.topology.rounds < 2:
            raise ScenarioError(
                f"{self.field}.name: '{self.spec.name}' needs topology.rounds >= 2 (the first "
                "vehicle receives no relayed bottom model in round 1)"
            )

    def observe(self, msg: Message) -> None:
        if msg.kind == "activations" and msg.receiver == SERVER:
            self.activations[(msg.round, _client_id(msg.sender))].append(msg.payload.detach())
        elif msg.kind == "bottom_model" and msg.sender == SERVER:
            self.bottoms[_client_id(msg.receiver)] = (msg.round, msg.payload)

    def finalize(self, view: FinalView) -> RoutePredictions:
        if not self.bottoms:
            raise PrivlabError(f"{self.field}: the server saw no bottom model")
        targets = {
            k: torch.cat(self.activations[(r, k)])
            for k, (r, _) in self.bottoms.items()
            if self.activations.get((r, k))
        }
        sigma = defense_noise_sigma(view) if self.params.adaptive else 0.0
        states = [t for k in sorted(targets) for t in self.bottoms[k][1].values()]
        key = digest(
            *[targets[k] for k in sorted(targets)],
            *states,
            self.params.model_dump(exclude={"adaptive"}),
            sigma,
            view.recipe.seed,
            view.recipe.data.params,
            sorted(targets),
        )
        if key not in _PREDICTIONS:  # naive and adaptive coincide where no noise is added
            _PREDICTIONS.clear()
            _PREDICTIONS[key] = self._predict(view, targets, sigma)
        return RoutePredictions(
            dict(_PREDICTIONS[key]), dict(view.recipe.data.params), view.recipe.seed
        )

    def _predict(
        self, view: FinalView, targets: dict[int, torch.Tensor], sigma: float
    ) -> dict[int, int]:
        from privlab.data_traffic_signs import TrafficSignsParams, drive
        from privlab.topologies.split import cut_model, split_params

        data = TrafficSignsParams(**view.recipe.data.params)
        n_per = int(np.median([len(z) for z in targets.values()]))
        rng = np.random.default_rng([view.recipe.seed, 60_221])  # the server's own stream
        shadow_x, shadow_region = [], []
        for region in range(data.num_regions):
            for _ in range(self.params.shadow_vehicles):
                x, _ = drive(region, n_per, data.mix_concentration, rng)
                shadow_x.append(torch.as_tensor(x))
                shadow_region.append(region)
        y_meta = np.array(shadow_region)
        bottom, _, _ = cut_model(view.model_factory(), split_params(view.recipe))
        predicted: dict[int, int] = {}
        std = self.params.statistics == "mean_std"
        gen = torch.Generator().manual_seed(adversary_seed(view.recipe.seed, "route_noise"))

        def observed(x: torch.Tensor) -> torch.Tensor:
            z = bottom(x)
            return z + sigma * torch.randn(z.shape, generator=gen) if sigma > 0 else z

        for k, z in sorted(targets.items()):
            state = self.bottoms[k][1]
            bottom.load_state_dict({n: v for n, v in state.items() if n in bottom.state_dict()})
            with torch.no_grad():
                feats = np.stack([set_summary(observed(x), std) for x in shadow_x])
            meta = make_pipeline(
                StandardScaler(), LogisticRegression(C=self.params.C, max_iter=1000)
            )
            meta.fit(feats, y_meta)
            predicted[k] = int(meta.predict(set_summary(z, std)[None])[0])
        return predicted
