"""Byzantine-robust aggregation rules, as pure functions over a stack of flattened updates.

Each rule takes an (n, d) tensor (one row per client update of this round) and returns a
`Robust` result: the aggregate (d,) and, for rules that select or reject clients, the rows they
kept, so the referee can grade how well the server caught the malicious ones. The
`AggregationDefense` wrappers below flatten the clients' updates, call the rule and record the
selection; they ignore sample-count weights (robust rules treat every client alike) except
norm bounding, which clips and then takes FedAvg's weighted mean.

Rules and papers:
- Krum / Multi-Krum: Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent" (needs n > 2f + 2).
- coordinate-wise median and trimmed mean: Yin et al. 2018, "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates".
- Bulyan: El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning in
  Byzantium" (needs n >= 4f + 3).
- geometric median by smoothed Weiszfeld: Pillutla et al. 2022, "Robust Aggregation for
  Federated Learning" (RFA).
- centered clipping: Karimireddy et al. 2021, "Learning from History for Byzantine Robust
  Optimization"; the centre is the previous round's aggregate.
- FLTrust: Cao et al. 2021, "FLTrust: Byzantine-robust Federated Learning via Trust
  Bootstrapping". The server needs a small clean root data set: privlab takes `root_size`
  records out of the test pool (the server holds them; they are then excluded from evaluation).
- norm bounding: Sun et al. 2019, "Can You Really Backdoor Federated Learning?".

Under secure aggregation the server never sees single updates, so none of these can run there:
`DefenseStack.build` refuses the combination. Clipping can move to the clients
(`update_clipping`, before encryption), but a malicious client controls its device and skips it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from privlab.defenses.base import AggregationDefense, ClientUpdateDefense
from privlab.errors import ScenarioError

if TYPE_CHECKING:
    from privlab.scenario import Scenario
    from privlab.training import LocalTrainer

Update = dict[str, torch.Tensor]


@dataclass
class Robust:
    """A rule's output: the aggregate and the rows it kept (None: the rule keeps everyone)."""

    vector: torch.Tensor
    selected: list[int] | None = None


# --------------------------------------------------------------------------- flattening


def flatten(update: Update) -> torch.Tensor:
    return torch.cat([update[k].reshape(-1).to(torch.float64) for k in sorted(update)])


def unflatten(vector: torch.Tensor, template: Update) -> Update:
    out: Update = {}
    i = 0
    for k in sorted(template):
        n = template[k].numel()
        out[k] = vector[i : i + n].reshape(template[k].shape).to(template[k].dtype)
        i += n
    return out


def stack_updates(updates: list[Update]) -> torch.Tensor:
    return torch.stack([flatten(u) for u in updates])


# --------------------------------------------------------------------------- rules


def mean(stack: torch.Tensor, weights: torch.Tensor | None = None) -> Robust:
    if weights is None:
        return Robust(stack.mean(dim=0))
    w = torch.as_tensor(weights, dtype=stack.dtype)
    return Robust((w[:, None] * stack).sum(dim=0) / w.sum())


def squared_distances(stack: torch.Tensor) -> torch.Tensor:
    """(n, n) squared Euclidean distances, computed pairwise directly (no Gram-matrix
    cancellation), so near-identical updates get distances near zero."""
    d = torch.cdist(stack, stack, compute_mode="donot_use_mm_for_euclid_dist")
    return d * d


def krum_scores(stack: torch.Tensor, f: int, dist: torch.Tensor | None = None) -> torch.Tensor:
    """Each update's sum of squared distances to its n - f - 2 nearest other updates."""
    n = stack.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=stack.dtype)
    d = (squared_distances(stack) if dist is None else dist).clone()
    d.fill_diagonal_(math.inf)
    k = min(n - 1, max(1, n - f - 2))
    return torch.topk(d, k, dim=1, largest=False).values.sum(dim=1)


def rank(scores: torch.Tensor, stack: torch.Tensor) -> list[int]:
    """Rows by increasing score; exact ties (mutual nearest neighbours score alike) broken by
    the rows' content, not their position, so the choice does not depend on client order."""
    keys = (stack[:, 0].numpy(), stack.sum(dim=1).numpy(), scores.numpy())
    return np.lexsort(keys).tolist()


def multi_krum(stack: torch.Tensor, f: int, m: int | None = None) -> Robust:
    """Mean of the m updates with the lowest Krum scores (m = 1 is Krum; None: n - f)."""
    n = stack.shape[0]
    m = max(1, min(n, n - f if m is None else m))
    scores = krum_scores(stack, f)
    chosen = sorted(rank(scores, stack)[:m])
    return Robust(stack[chosen].mean(dim=0), chosen)


def krum(stack: torch.Tensor, f: int) -> Robust:
    return multi_krum(stack, f, 1)


def sort_columns(stack: torch.Tensor) -> torch.Tensor:
    """Each coordinate's values in increasing order (sorted along contiguous rows: faster)."""
    return torch.sort(stack.T.contiguous(), dim=1).values.T


def coordinate_median(stack: torch.Tensor) -> Robust:
    """Per coordinate, the median (the mean of the two middle values when n is even)."""
    s = sort_columns(stack)
    n = s.shape[0]
    if n % 2:
        return Robust(s[n // 2])
    return Robust((s[n // 2 - 1] + s[n // 2]) / 2)


def trimmed_mean(stack: torch.Tensor, k: int) -> Robust:
    """Per coordinate, the mean after dropping the k largest and k smallest values."""
    n = stack.shape[0]
    k = max(0, min(k, (n - 1) // 2))
    s = sort_columns(stack)
    return Robust(s[k : n - k].mean(dim=0))


def bulyan(stack: torch.Tensor, f: int) -> Robust:
    """Krum applied repeatedly picks theta = n - 2f updates; per coordinate, the mean of the
    beta = theta - 2f values closest to their median."""
    n = stack.shape[0]
    theta = max(1, n - 2 * f)
    remaining = list(range(n))
    chosen: list[int] = []
    dist = squared_distances(stack)
    while len(chosen) < theta:
        sub = dist[remaining][:, remaining]
        scores = krum_scores(stack[remaining], f, sub)
        best = remaining[rank(scores, stack[remaining])[0]]
        chosen.append(best)
        remaining.remove(best)
    chosen.sort()
    s = sort_columns(stack[chosen])
    beta = max(1, theta - 2 * f)
    med = coordinate_median(s).vector
    # The beta values closest to the median are a window of the sorted values: the window
    # with the smallest largest distance (the lowest such window on ties).
    starts = theta - beta + 1
    cost = torch.maximum(med - s[:starts], s[beta - 1 : beta - 1 + starts] - med)
    first = torch.argmin(cost, dim=0)
    csum = torch.cat([torch.zeros(1, s.shape[1], dtype=s.dtype), torch.cumsum(s, dim=0)])
    total = csum.gather(0, (first + beta)[None, :]) - csum.gather(0, first[None, :])
    return Robust(total[0] / beta, chosen)


def geometric_median(
    stack: torch.Tensor, iters: int = 100, eps: float = 1e-8, tol: float = 1e-7
) -> Robust:
    """Smoothed Weiszfeld iterations (RFA): argmin_z sum_i ||z - x_i||."""
    z = stack.mean(dim=0)
    for _ in range(iters):
        w = 1.0 / torch.clamp(torch.linalg.vector_norm(stack - z, dim=1), min=eps)
        new = (w[:, None] * stack).sum(dim=0) / w.sum()
        if torch.linalg.vector_norm(new - z) <= tol * max(1.0, float(torch.linalg.norm(z))):
            return Robust(new)
        z = new
    return Robust(z)


def clip_rows(stack: torch.Tensor, max_norm: float) -> torch.Tensor:
    norms = torch.linalg.vector_norm(stack, dim=1)
    scale = torch.clamp(max_norm / torch.clamp(norms, min=1e-12), max=1.0)
    return stack * scale[:, None]


def centered_clipping(
    stack: torch.Tensor, center: torch.Tensor, tau: float, iters: int = 1
) -> Robust:
    """v <- v + mean_i clip(x_i - v, tau), starting from `center`."""
    v = center.to(stack.dtype)
    for _ in range(iters):
        v = v + clip_rows(stack - v, tau).mean(dim=0)
    return Robust(v)


def fltrust(stack: torch.Tensor, server_update: torch.Tensor) -> Robust:
    """Trust score ReLU(cos(x_i, g)); each update rescaled to ||g||; trust-weighted mean.
    Clients with zero trust are rejected."""
    g_norm = torch.linalg.vector_norm(server_update)
    norms = torch.clamp(torch.linalg.vector_norm(stack, dim=1), min=1e-12)
    cos = (stack @ server_update) / (norms * torch.clamp(g_norm, min=1e-12))
    trust = torch.relu(cos)
    selected = [i for i in range(stack.shape[0]) if trust[i] > 0]
    if trust.sum() <= 0:
        return Robust(torch.zeros_like(server_update), [])
    scaled = stack * (g_norm / norms)[:, None]
    return Robust((trust[:, None] * scaled).sum(dim=0) / trust.sum(), selected)


def norm_bounding(
    stack: torch.Tensor, max_norm: float, weights: torch.Tensor | None = None
) -> Robust:
    """Clip every update to `max_norm`, then the (weighted) mean."""
    return mean(clip_rows(stack, max_norm), weights)


def median_norm(stack: torch.Tensor) -> float:
    return float(torch.median(torch.linalg.vector_norm(stack, dim=1)))


# --------------------------------------------------------------------------- defenses


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FParams(_Params):
    f: int = Field(default=1, ge=0)
    """Number of malicious clients the rule must tolerate."""


class MultiKrumParams(FParams):
    m: int | None = Field(default=None, ge=1)
    """Updates averaged (None: n - f)."""


class TrimmedMeanParams(_Params):
    trim_fraction: float = Field(default=0.2, ge=0, lt=0.5)
    """Share of values dropped at each end, per coordinate (k = floor(trim_fraction * n))."""


class GeometricMedianParams(_Params):
    iters: int = Field(default=100, ge=1)
    eps: float = Field(default=1e-8, gt=0)


class CenteredClippingParams(_Params):
    tau: float | None = Field(default=None, gt=0)
    """Clipping radius (None: the median distance of this round's updates to the centre)."""
    iters: int = Field(default=1, ge=1)


class FLTrustParams(_Params):
    root_size: int = Field(default=100, ge=1)
    """Clean records the server holds, taken out of the test pool (and out of evaluation)."""


class NormParams(_Params):
    max_norm: float | None = Field(default=None, gt=0)
    """L2 bound per update (None: this round's median update norm)."""


class ClipParams(_Params):
    max_norm: float = Field(gt=0)


def per_round_clients(scenario: Scenario) -> int:
    """Clients sampled per round, as the federated topology computes it."""
    return max(1, round(scenario.topology.client_fraction * scenario.partition.num_clients))


class RobustAggregation(AggregationDefense):
    """Base wrapper: flatten, apply `rule`, unflatten, remember which clients were kept."""

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)
        self.last_selected: list[int] | None = None

    def rule(self, stack: torch.Tensor, weights: torch.Tensor) -> Robust:
        raise NotImplementedError

    def aggregate(self, updates: list[Update], weights: list[float]) -> Update:
        stack = stack_updates(updates)
        out = self.rule(stack, torch.as_tensor(weights, dtype=torch.float64))
        self.last_selected = out.selected
        return unflatten(out.vector, updates[0])


class Krum(RobustAggregation):
    """Krum (Blanchard et al. 2017): the update closest to its n - f - 2 neighbours."""

    Params = FParams

    def check_setting(self, scenario: Scenario, input_shape: tuple[int, ...], num_classes: int):
        n, f = per_round_clients(scenario), self.params.f
        if n <= 2 * f + 2:
            raise ScenarioError(
                f"{self.field}.params.f: {self.spec.name} needs more than 2f + 2 clients per "
                f"round (f={f} needs >= {2 * f + 3}, the scenario has {n})"
            )

    def rule(self, stack: torch.Tensor, weights: torch.Tensor) -> Robust:
        return krum(stack, self.params.f)


class MultiKrum(Krum):
    """Multi-Krum (Blanchard et al. 2017): mean of the m best-scored updates."""

    Params = MultiKrumParams

    def rule(self, stack: torch.Tensor, weights: torch.Tensor) -> Robust:
        return multi_krum(stack, self.params.f, self.params.m)


class Median(RobustAggregation):
    """Coordinate-wise median (Yin et al. 2018)."""

    def rule(self, stack: torch.Tensor, weights: torch.Tensor) -> Robust:
        return coordinate_median(stack)


class TrimmedMean(RobustAggregation):
    """Coordinate-wise trimmed mean (Yin et al. 2018)."""

    Params = TrimmedMeanParams

    def rule(self, stack: torch.Tensor, weights: torch.Tensor) -> Robust:
        return trimmed_mean(stack, math.floor(self.params.trim_fraction * stack.shape[0]))


class Bulyan(RobustAggregation):
    """Bulyan (El Mhamdi et al. 2018): Krum selection, then a trimmed mean around the median."""

    Params = FParams

    def check_setting(self, scenario: Scenario, input_shape: tuple[int, ...], num_classes: int):
        n, f = per_round_clients(scenario), self.params.f
        if n < 4 * f + 3:
            raise ScenarioError(
                f"{self.field}.params.f: bulyan needs at least 4f + 3 clients per round "
                f"(f={f} needs >= {4 * f + 3}, the scenario has {n})"
            )

    def rule(self, stack: torch.Tensor, weights: torch.Tensor) -> Robust:
        return bulyan(stack, self.params.f)


class GeometricMedian(RobustAggregation):
    """Geometric median by smoothed Weiszfeld (Pillutla et al., RFA)."""

    Params = GeometricMedianParams

    def rule(self, stack: torch.Tensor, weights: torch.Tensor) -> Robust:
        return geometric_median(stack, self.params.iters, self.params.eps)


class CenteredClipping(RobustAggregation):
    """Centered clipping (Karimireddy et al. 2021) around the previous aggregate."""

    Params = CenteredClippingParams

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)
        self.center: torch.Tensor | None = None

    def rule(self, stack: torch.Tensor, weights: torch.Tensor) -> Robust:
        center = (
            torch.zeros(stack.shape[1], dtype=stack.dtype) if self.center is None else (self.center)
        )
        tau = self.params.tau or median_norm(stack - center)
        out = centered_clipping(stack, center, tau, self.params.iters)
        self.center = out.vector.clone()
        return out


class FLTrust(RobustAggregation):
    """FLTrust (Cao et al. 2021): trust from cosine similarity to the server's root update."""

    Params = FLTrustParams

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)
        self.trainer: LocalTrainer | None = None
        self.server_update: torch.Tensor | None = None

    @property
    def root_size(self) -> int:
        return int(self.params.root_size)

    def bind_server(self, trainer: LocalTrainer) -> None:
        self.trainer = trainer

    def start_round(self, round_: int, global_state: dict[str, torch.Tensor]) -> None:
        if self.trainer is None:
            raise ScenarioError(f"{self.field}.name: fltrust needs the federated topology")
        self.trainer.train(global_state)
        new = self.trainer.state()
        self.server_update = flatten(
            {k: new[k] - v for k, v in global_state.items() if v.is_floating_point()}
        )

    def rule(self, stack: torch.Tensor, weights: torch.Tensor) -> Robust:
        assert self.server_update is not None
        return fltrust(stack, self.server_update)


class NormBounding(RobustAggregation):
    """Norm bounding (Sun et al. 2019): clip each update's L2 norm, then FedAvg's mean."""

    Params = NormParams

    def rule(self, stack: torch.Tensor, weights: torch.Tensor) -> Robust:
        bound = self.params.max_norm or median_norm(stack)
        return norm_bounding(stack, bound, weights)


class UpdateClipping(ClientUpdateDefense):
    """Client-side L2 clipping of the update before it leaves the device (composes with secure
    aggregation, but a malicious client controls its device and may skip it)."""

    Params = ClipParams

    def transform(self, update: Update, *, generator: torch.Generator) -> Update:
        vec = flatten(update)
        clipped = clip_rows(vec[None, :], self.params.max_norm)[0]
        return unflatten(clipped, update)
