"""RMIA: robust membership inference (Zarifzadeh et al. 2024, "Low-Cost High-Power Membership
Inference Attacks", ICML).

Setting: for a challenge record x the attacker compares the likelihood ratio
LR(x) = Pr(x | target) / Pr(x) against the same ratio for population records z:
Score(x) = fraction of z with LR(x) / LR(z) > gamma, where Pr(x | model) is the model's
probability of x's label and Pr(x) averages it over reference models. Online, reference models
train on halves of population + challenge and Pr(x) averages all of them; offline, they never
saw x and Pr(x) is approximated from the OUT average as ((1 + a) Pr_out(x) + (1 - a)) / 2
(the paper's linear approximation). Because the z comparison normalises each record against the
population, RMIA stays strong with very few reference models (one or two offline), which is the
paper's point. Equal fractions are broken by LR(x) itself (the fraction is monotone in it).
Targets as in LiRA: `rmia` (released model, outsider) and `rmia_server` (an honest-but-curious
server on client k's update). Qualitative result reproduced (tests/test_rmia.py): with only two
reference models RMIA beats the loss threshold in AUC on an overfit model.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from privlab.attacks.base import (
    AttackResult,
    FinalView,
    MembershipScores,
    PopulationData,
)
from privlab.attacks.lira import (
    LiRAAttack,
    ServerSideTarget,
    TargetSpec,
    fit_reference,
    global_target,
)
from privlab.errors import ScenarioError


def true_label_prob(logprobs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pr(x | model) = p_y, from log-probabilities (..., N, C)."""
    lp = np.asarray(logprobs, dtype=np.float64)
    idx = np.broadcast_to(np.asarray(labels)[:, None], (*lp.shape[:-1], 1))
    return np.exp(np.take_along_axis(lp, idx, axis=-1)[..., 0])


def marginal_prob(ref_probs: np.ndarray, *, online: bool, offline_a: float) -> np.ndarray:
    """Pr(x) from reference models' p_y (M, N); offline uses the paper's linear correction."""
    mean = ref_probs.mean(axis=0)
    return mean if online else 0.5 * ((1 + offline_a) * mean + (1 - offline_a))


def rmia_scores(
    target_x: np.ndarray,
    marginal_x: np.ndarray,
    target_z: np.ndarray,
    marginal_z: np.ndarray,
    gamma: float,
) -> np.ndarray:
    """Fraction of z with LR(x)/LR(z) > gamma, ties broken by LR(x) (higher = member)."""
    tiny = 1e-300
    lr_x = np.maximum(target_x, tiny) / np.maximum(marginal_x, tiny)
    lr_z = np.sort(np.maximum(target_z, tiny) / np.maximum(marginal_z, tiny))
    count = np.searchsorted(lr_z, lr_x / gamma, side="left")
    tie_break = lr_x / (1.0 + lr_x)  # in [0, 1): stays below the next count
    return (count + tie_break) / (len(lr_z) + 1)


class RMIAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["online", "offline"] = "online"
    num_reference_models: int = Field(default=2, ge=1)
    gamma: float = Field(default=1.0, gt=0)
    offline_a: float = Field(default=0.3, ge=0, le=1)
    z_fraction: float = Field(default=0.5, gt=0, lt=1)
    """Share of the population kept aside as the z records (the rest trains reference models)."""
    rounds: int | None = Field(default=None, gt=0)
    cache: bool = True


class RMIAServerParams(RMIAParams):
    client: int = Field(default=0, ge=0)


class RMIAAttack(LiRAAttack):
    """RMIA (Zarifzadeh et al. 2024) against the released model; online or offline."""

    Params: ClassVar[type[BaseModel]] = RMIAParams

    def __init__(self, spec: Any, field: str) -> None:
        super(LiRAAttack, self).__init__(spec, field)
        need = 2 if self.params.mode == "online" else 1
        if self.params.num_reference_models < need:
            raise ScenarioError(
                f"{field}.params.num_reference_models: {self.params.mode} RMIA needs at least "
                f"{need} reference model(s) (got {self.params.num_reference_models})"
            )

    def _target(self, view: FinalView) -> TargetSpec | None:
        return global_target(view, self.params.rounds)

    def finalize(self, view: FinalView) -> AttackResult | MembershipScores:
        assert view.challenge is not None
        target = self._target(view)
        if target is None:
            return self._no_target()
        pop = self._population(view)
        rng = np.random.default_rng([view.recipe.seed, 43])
        order = rng.permutation(len(pop.y))
        n_z = max(1, min(len(pop.y) - 2, round(self.params.z_fraction * len(pop.y))))
        z_idx, train_idx = np.sort(order[:n_z]), np.sort(order[n_z:])
        online = self.params.mode == "online"
        ref = fit_reference(
            view,
            target,
            online=online,
            num_models=self.params.num_reference_models,
            population=PopulationData(pop.x[train_idx], pop.y[train_idx]),
            extra_eval=pop.x[z_idx],
            seed=view.recipe.seed,
            cache=self.params.cache,
        )
        n = len(view.challenge.y)
        labels = np.concatenate([view.challenge.y, pop.y[z_idx]])
        ref_p = true_label_prob(ref.logprobs, labels)
        marginal = marginal_prob(ref_p, online=online, offline_a=self.params.offline_a)
        xs = np.concatenate([view.challenge.x, pop.x[z_idx]])
        target_p = true_label_prob(target.logprobs(xs), labels)
        scores = rmia_scores(
            target_p[:n], marginal[:n], target_p[n:], marginal[n:], self.params.gamma
        )
        return MembershipScores(scores=scores, artifacts={"reference_models": ref.info})


class RMIAServerAttack(ServerSideTarget, RMIAAttack):
    """RMIA by an honest-but-curious server on one client's update (client-level target)."""

    Params = RMIAServerParams
    topologies = frozenset({"federated"})
