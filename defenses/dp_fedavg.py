"""Client-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models", ICLR), with adaptive clipping (Andrew et al. 2021, "Differentially Private
Learning with Adaptive Clipping", NeurIPS).

The trusted server clips each sampled client's whole update to L2 norm C, sums the clipped
updates, adds Gaussian noise N(0, (z C)^2) per coordinate, and divides by the expected number of
clients per round (the fixed denominator of McMahan et al., so one client's presence changes
the sum by at most C). Each round is a subsampled Gaussian mechanism on the set of clients with
sampling rate q = clients per round / clients; an Opacus accountant (rdp, prv, or gdp, the
last labelled approximate) composes the rounds, so epsilon is client-level: it covers every
record of a client at once. privlab samples a fixed number of clients per round, while the
accountants assume Poisson sampling with rate q: the usual approximation of DP-FedAvg (as in
TensorFlow Privacy's and Opacus' federated examples).

Adaptive clipping follows the quantile to a target: each round the server privately counts the
clients whose update norm was at most C and sets C <- C exp(-eta (b - gamma)). As in Andrew et
al. (Section 3), each client's bit is centred, b_i - 1/2, so one client moves the released sum
sum_i (b_i - 1/2) + N(0, sigma_b^2) by at most 1/2 (sensitivity 1/2, not 1); the server then
adds back (expected clients) / 2. The update noise is raised to
z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2, so the two releases together are one Gaussian mechanism
with multiplier (z_delta^-2 + (sigma_b / (1/2))^-2)^-1/2 = z, the multiplier accounted.
Releasing the plain count (sensitivity 1) with the same split would be a mechanism with
multiplier (z_delta^-2 + sigma_b^-2)^-1/2 < z: at q = 0.1, 100 rounds, z = 1, sigma_b = 1 its
true RDP epsilon is 1.76x the one accounted for z (the defect this centring fixes).

Budget: when the next round would push epsilon over `budget_epsilon`, `on_budget = "stop"`
freezes the global model (the server releases nothing more, so nothing more is spent) and
"warn" records that the budget was exceeded and goes on.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from pydantic import BaseModel, ConfigDict, Field, model_validator

from privlab.defenses.base import AggregationDefense
from privlab.defenses.dp_calibration import TargetTooLoose, calibrate_noise
from privlab.defenses.dp_sgd import epsilon_of
from privlab.errors import ScenarioError
from privlab.training import seeded_generator

if TYPE_CHECKING:
    from privlab.scenario import Scenario

log = logging.getLogger(__name__)
Update = dict[str, torch.Tensor]


class DPFedAvgParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    noise_multiplier: float | None = Field(default=None, gt=0)
    target_epsilon: float | None = Field(default=None, gt=0)
    clip_norm: float = Field(default=1.0, gt=0)
    """C; with adaptive clipping, its starting value."""
    clipping: Literal["fixed", "adaptive"] = "fixed"
    target_quantile: float = Field(default=0.5, ge=0, le=1)
    clip_lr: float = Field(default=0.2, gt=0)
    count_noise: float | None = Field(default=None, gt=0)
    """sigma_b of the clipped-count release (default: clients per round / 20, as Andrew et al.)."""
    delta: float = Field(default=1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    budget_epsilon: float | None = Field(default=None, gt=0)
    on_budget: Literal["stop", "warn"] = "stop"

    @model_validator(mode="after")
    def _one_mode(self) -> DPFedAvgParams:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier or target_epsilon")
        return self


def clip_update(update: Update, clip: float) -> tuple[Update, float]:
    """Scale the whole update (all tensors together) to L2 norm at most `clip`."""
    norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: t * scale for k, t in update.items()}, norm


def adaptive_update_noise(z: float, count_noise: float) -> float:
    """Andrew et al.'s split of the privacy cost: z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2."""
    rest = z**-2 - (2 * count_noise) ** -2
    if rest <= 0:
        raise ValueError("count noise too small for this noise multiplier")
    return rest**-0.5


COUNT_SENSITIVITY = 0.5
"""One client changes the centred count sum_i (b_i - 1/2) by at most 1/2 (add or remove)."""


def effective_noise(
    update_noise: float, count_noise: float, count_sensitivity: float = COUNT_SENSITIVITY
) -> float:
    """Noise multiplier of the joint release (update sum with sensitivity C and noise
    update_noise * C; clipped count with sensitivity s and noise sigma_b): a Gaussian mechanism
    on the stacked vector, whose multiplier is (z_delta^-2 + (sigma_b / s)^-2)^-1/2."""
    return (update_noise**-2 + (count_noise / count_sensitivity) ** -2) ** -0.5


@functools.lru_cache(maxsize=64)
def _rdp_one_round(noise: float, sample_rate: float) -> tuple[float, ...]:
    orders = RDPAccountant.DEFAULT_ALPHAS
    return tuple(compute_rdp(q=sample_rate, noise_multiplier=noise, steps=1, orders=orders))


def accounted_epsilon(
    noise: float, sample_rate: float, rounds: int, delta: float, accountant: str
) -> float:
    """Epsilon after `rounds` rounds, exactly as Opacus' accountant computes it for the history
    [(noise, sample_rate, rounds)]. For RDP the one-round RDP curve is cached and scaled by the
    round count (RDP composes additively; Opacus does the same multiplication), so a per-round
    ledger costs one conversion per round instead of a fresh RDP computation."""
    if rounds == 0:
        return 0.0
    if accountant != "rdp":
        return epsilon_of(((noise, sample_rate, rounds),), delta, accountant)
    rdp = np.asarray(_rdp_one_round(noise, sample_rate)) * rounds
    eps, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


MAX_NOISE = 100.0
"""Noise multipliers beyond this leave nothing of the updates; targets needing more are refused."""


def rdp_floor(delta: float) -> float:
    """Epsilon the RDP accountant reports as the noise grows without bound (its RDP -> 0):
    the conversion term of Opacus' get_privacy_spent minimised over its default orders."""
    orders = np.asarray(RDPAccountant.DEFAULT_ALPHAS, dtype=np.float64)
    terms = np.log((orders - 1) / orders) - (math.log(delta) + np.log(orders)) / (orders - 1)
    return float(np.nanmin(terms))


def epsilon_floor(delta: float, accountant: str, sample_rate: float, rounds: int) -> float:
    """A fast lower bound on reachable epsilon: RDP's analytic floor, else epsilon at
    MAX_NOISE (so Opacus' noise search never wanders to huge noise for seconds)."""
    floor = rdp_floor(delta) if accountant == "rdp" else 0.0
    try:
        at_max = accounted_epsilon(MAX_NOISE, sample_rate, rounds, delta, accountant)
    except ValueError:
        return floor
    return max(floor, at_max)


class DPFedAvg(AggregationDefense):
    """Client-level DP-FedAvg: server-side clipping and Gaussian noise, accounted per round."""

    Params = DPFedAvgParams

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)
        self.history: list[tuple[float, float, int]] = []
        self.clip = float(self.params.clip_norm)
        self.noise = self.params.noise_multiplier
        self.sample_rate = 1.0
        self.expected_clients = 1
        self.stopped_at: int | None = None
        self.exceeded = False
        self.round = 0
        self.generator = seeded_generator(0, 53)
        self.last_count_release: float | None = None
        """The noisy centred count sum_i (b_i - 1/2) + N(0, sigma_b^2) of the last round."""

    # ----- set-up, before any training

    def check_setting(
        self, scenario: Scenario, input_shape: tuple[int, ...], num_classes: int
    ) -> None:
        p: DPFedAvgParams = self.params
        if scenario.topology.name != "federated":
            raise ScenarioError(
                f"{self.field}.name: dp_fedavg needs topology 'federated' "
                f"(got '{scenario.topology.name}'); use dp_sgd for record-level DP"
            )
        n = scenario.partition.num_clients
        self.expected_clients = max(1, round(scenario.topology.client_fraction * n))
        self.sample_rate = self.expected_clients / n
        self.generator = seeded_generator(scenario.seed, 53)
        rounds = scenario.topology.rounds
        if p.target_epsilon is not None:
            floor = epsilon_floor(p.delta, p.accountant, self.sample_rate, rounds)
            if p.target_epsilon <= floor:
                raise ScenarioError(
                    f"{self.field}.params.target_epsilon: {p.target_epsilon} cannot be reached "
                    f"with delta={p.delta}, client sampling rate {self.sample_rate:.3g} and "
                    f"{rounds} rounds (the {p.accountant} accountant reports at least "
                    f"{floor:.3g} even with noise multiplier {MAX_NOISE:g}); raise it"
                )
            try:  # Opacus' search on exactly `rounds` steps, disk-cached (tolerance 0.01)
                self.noise = calibrate_noise(
                    p.target_epsilon, p.delta, self.sample_rate, rounds, p.accountant
                )
            except TargetTooLoose as exc:
                raise ScenarioError(
                    f"{self.field}.params.target_epsilon: {p.target_epsilon} is no guarantee "
                    f"DP-FedAvg calibrates to ({exc}, with delta={p.delta}, client sampling "
                    f"rate {self.sample_rate:.3g} and {rounds} rounds); lower it, or give "
                    "noise_multiplier"
                ) from None
            except ValueError as exc:
                raise ScenarioError(
                    f"{self.field}.params.target_epsilon: {p.target_epsilon} cannot be reached "
                    f"with delta={p.delta}, client sampling rate {self.sample_rate:.3g} and "
                    f"{rounds} rounds ({exc}); raise it or run fewer rounds"
                ) from None
        if p.clipping == "adaptive":
            try:
                adaptive_update_noise(self.noise, self.count_noise)
            except ValueError:
                raise ScenarioError(
                    f"{self.field}.params.count_noise: adaptive clipping needs count noise above "
                    f"noise_multiplier / 2 = {self.noise / 2:.3g} (got {self.count_noise:.3g})"
                ) from None

    @property
    def count_noise(self) -> float:
        return self.params.count_noise or self.expected_clients / 20

    # ----- one round

    def _epsilon(self, history: list[tuple[float, float, int]]) -> float:
        if not history:
            return 0.0
        noise, rate, rounds = history[0]
        return accounted_epsilon(noise, rate, rounds, self.params.delta, self.params.accountant)

    def _next_history(self) -> list[tuple[float, float, int]]:
        steps = sum(n for _, _, n in self.history) + 1
        return [(float(self.noise), float(self.sample_rate), steps)]

    def start_round(self, round_: int, global_state: dict[str, torch.Tensor]) -> None:
        self.round = round_

    def aggregate(self, updates: list[Update], weights: list[float]) -> Update:
        p: DPFedAvgParams = self.params
        zeros = {k: torch.zeros_like(v) for k, v in updates[0].items()}
        if self.stopped_at is not None:
            return zeros
        upcoming = self._epsilon(self._next_history()) if p.budget_epsilon is not None else 0.0
        if p.budget_epsilon is not None and upcoming > p.budget_epsilon:
            self.exceeded = True
            if p.on_budget == "stop":
                self.stopped_at = self.round
                log.warning(
                    "dp_fedavg: budget reached; global model frozen at round %d", self.round
                )
                return zeros
            log.warning(
                "dp_fedavg: epsilon %.3g exceeds the budget %.3g", upcoming, p.budget_epsilon
            )
        self.history = self._next_history()
        adaptive = p.clipping == "adaptive"
        z = adaptive_update_noise(self.noise, self.count_noise) if adaptive else self.noise
        total = {k: torch.zeros_like(v) for k, v in zeros.items()}
        under = 0
        for u in updates:
            clipped, norm = clip_update(u, self.clip)
            under += int(norm <= self.clip)
            for k, t in clipped.items():
                total[k] += t
        out = {}
        for k, t in total.items():
            noise = torch.randn(t.shape, generator=self.generator, dtype=t.dtype) * (z * self.clip)
            out[k] = (t + noise) / self.expected_clients
        if adaptive:
            centred = under - len(updates) / 2  # sensitivity 1/2 under add/remove of a client
            noisy = centred + float(torch.randn((), generator=self.generator)) * self.count_noise
            self.last_count_release = noisy
            fraction = noisy / self.expected_clients + 0.5
            self.clip *= math.exp(-p.clip_lr * (fraction - p.target_quantile))
        return out

    # ----- reporting

    def privacy(self) -> dict[str, Any]:
        p: DPFedAvgParams = self.params
        out: dict[str, Any] = {
            "epsilon": self._epsilon(self.history),
            "delta": p.delta,
            "accountant": p.accountant,
            "approximate": p.accountant == "gdp",
            "level": "client",
            "noise_multiplier": self.noise,
            "sample_rate": self.sample_rate,
            "rounds_accounted": sum(n for _, _, n in self.history),
            "clip_norm": self.clip,
        }
        if p.clipping == "adaptive":
            z_delta = adaptive_update_noise(self.noise, self.count_noise)
            out["update_noise_multiplier"] = z_delta
            out["count_noise"] = self.count_noise
            out["count_sensitivity"] = COUNT_SENSITIVITY
            out["effective_noise_multiplier"] = effective_noise(z_delta, self.count_noise)
        if p.budget_epsilon is not None:
            out["budget_epsilon"] = p.budget_epsilon
            out["budget_exceeded"] = self.exceeded
            if self.stopped_at is not None:
                out["stopped_at_round"] = self.stopped_at
        return out
