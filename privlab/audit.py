"""Empirical privacy audit: canaries, the strongest attack on them, a lower bound on epsilon.

The auditor plants canaries in one client's data, trains, scores each canary with a membership
test and turns the scores into a statistical lower bound on epsilon: a bound above the claimed
epsilon says the claim is violated; one far below says the attack (or the canaries) are weaker
than the worst case, not that the claim is loose. Two analyses, named in the results
(`metrics.analysis`, `artifacts.method`):

- `one_run` (default): m canaries, each IN (trained on) independently with probability 1/2, in
  ONE training run; the bound of Steinke, Nasr and Jagielski 2023, "Privacy Auditing with One
  (1) Training Run" (privlab/audit_one_run.py), from the correct guesses among the r most
  confident ones. The canaries of one run are not independent trials, so Clopper-Pearson over
  them would not be a valid bound; this analysis does not need them to be.
- `multi_run`: independent runs, one canary each, IN with probability 1/2 from the run's seed
  (Jagielski et al. 2020, "Auditing Differentially Private Machine Learning: How Private is
  Private SGD?"; Nasr et al. 2021, "Adversary Instantiation"). A run records its trial
  (`trial_score`, `trial_in`); privlab/audit_runs.py combines the runs of several seeds with
  Clopper-Pearson bounds on TPR/FPR (Bonferroni over thresholds): for (eps, delta)-DP,
  TPR <= e^eps FPR + delta for every threshold test.

Canaries: out-of-distribution inputs (uniform over the client's feature range) with random
labels: mislabelled records a model can only fit by memorising them, the most exposed records.
The test on them is offline LiRA (Carlini et al. 2022) with reference models trained on the
auditor's population data (which never holds a canary; global variance, as the paper advises
for few reference models), or the plain loss.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from privlab.attacks.base import (
    Attack,
    AttackResult,
    FinalView,
    MembershipChallenge,
    ThreatModel,
)
from privlab.audit_one_run import one_run_audit
from privlab.errors import ScenarioError
from privlab.metrics import membership_metrics

METHODS = {
    "one_run": (
        "one-run analysis: correct guesses among the most confident of m canaries in a single "
        "training run (Steinke, Nasr and Jagielski 2023, Corollary 5.4), Bonferroni over the "
        "guess counts tried"
    ),
    "multi_run": (
        "multi-run analysis: one canary per independent run, Clopper-Pearson bounds on TPR/FPR "
        "across runs, Bonferroni over thresholds (Jagielski et al. 2020; Nasr et al. 2021)"
    ),
}


# --------------------------------------------------------------------------- pure math


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """Two-sided exact binomial interval at level 1 - alpha (each tail alpha / 2)."""
    lo, hi = _bounds(np.array([successes]), trials, alpha / 2)
    return float(lo[0]), float(hi[0])


def _bounds(k: np.ndarray, n: int, tail: float) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised one-sided Clopper-Pearson (lower, upper) bounds, each missing w.p. `tail`."""
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(all="ignore"):
        lo = np.where(k > 0, stats.beta.ppf(tail, k, n - k + 1), 0.0)
        hi = np.where(k < n, stats.beta.ppf(1 - tail, k + 1, n - k), 1.0)
    return np.nan_to_num(lo, nan=0.0), np.nan_to_num(hi, nan=1.0)


def epsilon_lower_bound(
    scores_in: np.ndarray, scores_out: np.ndarray, *, delta: float, alpha: float = 0.05
) -> dict[str, float]:
    """Clopper-Pearson lower bound on epsilon from trial scores (higher = IN). Valid only when
    the trials are independent, i.e. one trial per independent training run (multi-run)."""
    s_in = np.sort(np.asarray(scores_in, dtype=np.float64))
    s_out = np.sort(np.asarray(scores_out, dtype=np.float64))
    n_in, n_out = len(s_in), len(s_out)
    if n_in == 0 or n_out == 0:
        raise ValueError("the audit needs IN and OUT canaries")
    thresholds = np.unique(np.concatenate([s_in, s_out]))
    tail = alpha / (2 * len(thresholds))  # two bounds per threshold, Bonferroni
    tp = n_in - np.searchsorted(s_in, thresholds, side="left")  # scores >= t
    fp = n_out - np.searchsorted(s_out, thresholds, side="left")
    tpr_lo, _ = _bounds(tp, n_in, tail)
    _, fpr_hi = _bounds(fp, n_out, tail)
    tnr_lo, _ = _bounds(n_out - fp, n_out, tail)
    _, fnr_hi = _bounds(n_in - tp, n_in, tail)
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = np.where(tpr_lo - delta > 0, np.log((tpr_lo - delta) / fpr_hi), 0.0)
        reverse = np.where(tnr_lo - delta > 0, np.log((tnr_lo - delta) / fnr_hi), 0.0)
    eps = np.maximum(np.nan_to_num(direct, nan=0.0), np.nan_to_num(reverse, nan=0.0))
    i = int(np.argmax(eps))
    if eps[i] <= 0:
        return {"epsilon_lower_bound": 0.0, "tpr": 0.0, "fpr": 0.0, "threshold": math.inf}
    return {
        "epsilon_lower_bound": float(eps[i]),
        "tpr": float(tp[i] / n_in),
        "fpr": float(fp[i] / n_out),
        "threshold": float(thresholds[i]),
    }


def make_canaries(
    x_like: np.ndarray, num_classes: int, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """n out-of-distribution inputs (uniform over the feature range) with random labels."""
    lo, hi = x_like.min(axis=0), x_like.max(axis=0)
    x = rng.uniform(size=(n, *x_like.shape[1:])) * (hi - lo) + lo
    return x.astype(np.float32), rng.integers(0, num_classes, size=n).astype(np.int64)


# --------------------------------------------------------------------------- the audit


class AuditParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client: int = Field(default=0, ge=0)
    analysis: Literal["one_run", "multi_run"] = "one_run"
    num_canaries: int = Field(default=200, ge=4)
    """m of the one-run analysis (a multi-run audit plants one canary per run)."""
    score: Literal["lira_offline", "loss"] = "lira_offline"
    num_reference_models: int = Field(default=8, ge=2)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    cache: bool = True


class CanaryAudit(Attack):
    """Empirical DP audit: canaries planted in one client, a lower bound on epsilon."""

    family = "audit"
    Params: ClassVar[type[BaseModel]] = AuditParams
    topologies = frozenset({"federated"})

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)
        self._seed = 0
        self._canaries: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="client",
            party=f"client{self.params.client}",
            knowledge=("its own canaries", "training recipe", "population data"),
        )

    def check_setting(self, scenario: Any, input_shape: tuple[int, ...], num_classes: int) -> None:
        if self.params.client >= scenario.partition.num_clients:
            raise ScenarioError(
                f"{self.field}.params.client: client {self.params.client} does not exist "
                f"(the partition has clients 0..{scenario.partition.num_clients - 1})"
            )
        self._seed = scenario.seed
        self._num_classes = num_classes

    def controlled_clients(self, num_clients: int) -> list[int]:
        return [self.params.client]

    def poison_data(self, client_id: int, x: torch.Tensor, y: torch.Tensor) -> tuple:
        """Plant the IN canaries (the auditor holds the OUT ones back). Each canary is IN
        independently with probability 1/2 (both analyses assume it). A multi-run audit plants
        the same canary in every run (drawn independently of the seed); only its coin depends
        on the run's seed, so runs of different seeds are independent trials."""
        if self.params.analysis == "one_run":
            rng = np.random.default_rng([self._seed, 59])
            cx, cy = make_canaries(x.numpy(), self._num_classes, self.params.num_canaries, rng)
            is_in = rng.random(self.params.num_canaries) < 0.5
        else:
            cx, cy = make_canaries(x.numpy(), self._num_classes, 1, np.random.default_rng(59))
            is_in = np.random.default_rng([self._seed, 61]).random(1) < 0.5
        self._canaries = (cx, cy, is_in)
        return (
            torch.cat([x, torch.as_tensor(cx[is_in])]),
            torch.cat([y, torch.as_tensor(cy[is_in])]),
        )

    def finalize(self, view: FinalView) -> AttackResult:
        if self._canaries is None:
            raise ScenarioError(f"{self.field}: the audited client never trained")
        cx, cy, is_in = self._canaries
        scores = self._scores(view, cx, cy)
        p = self.params
        out: dict[str, float | int | str] = {
            "analysis": p.analysis,
            "n_canaries_in": int(is_in.sum()),
            "n_canaries_out": int((~is_in).sum()),
            "delta": p.delta,
            "alpha": p.alpha,
        }
        artifacts: dict[str, Any] = {}
        if p.analysis == "multi_run":
            out["trial_score"] = float(scores[0])
            out["trial_in"] = int(is_in[0])
        else:
            bound = one_run_audit(scores, is_in, delta=p.delta, alpha=p.alpha)
            out.update(
                {
                    "epsilon_lower_bound": bound["epsilon_lower_bound"],
                    "audit_guesses": bound["guesses"],
                    "audit_correct": bound["correct"],
                    "audit_guess_accuracy": bound["accuracy"],
                }
            )
            if 0 < is_in.sum() < len(is_in):
                metrics, artifacts = membership_metrics(scores, is_in)
                out["canary_auc"] = metrics["auc"]
        artifacts["analysis"] = p.analysis
        artifacts["method"] = METHODS[p.analysis]
        artifacts["score"] = p.score
        return AttackResult(out, artifacts)  # type: ignore[arg-type]

    def _scores(self, view: FinalView, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
        from privlab.attacks.lira import (
            fit_reference,
            global_target,
            lira_scores,
            log_probs_from_probs,
            logit_confidence,
        )

        target_phi = logit_confidence(log_probs_from_probs(view.query(cx)), cy)
        if self.params.score == "loss":
            return target_phi
        if view.population is None:
            raise ScenarioError(f"{self.field}: the run gives the auditor no population data")
        canary_view = dataclasses.replace(view, challenge=MembershipChallenge(cx, cy))
        ref = fit_reference(
            canary_view,
            global_target(view, None),
            online=False,
            num_models=self.params.num_reference_models,
            population=view.population,
            extra_eval=None,
            seed=view.recipe.seed,
            cache=self.params.cache,
        )
        ref_phi = logit_confidence(ref.logprobs, cy)
        return lira_scores(target_phi, ref_phi, ref.in_mask, online=False, fixed_variance=True)
