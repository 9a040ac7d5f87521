"""Data and model poisoning by malicious federated clients.

Setting: a fraction of the clients (ids 0..k-1, so sweeps nest) is controlled by one adversary
from `start_round` to `end_round`. They run on their own devices: they may train on poisoned
data, skip client-side defenses and send any update they like. With `colluding`, they pool
their honest updates and send one crafted update; with `omniscient`, they also read the honest
clients' updates of the round (declared in the threat model's knowledge).

Data poisoning (the clients' training data is switched when the attack window opens):
- label flipping, source -> target (Tolpegin et al. 2020, "Data Poisoning Attacks Against
  Federated Learning Systems"); graded by the referee as the targeted misclassification rate.
- backdoor with a trigger patch and a target label (BadNets, Gu et al. 2017); graded as the
  backdoor success rate on triggered test inputs of other classes.
Model poisoning (the update is replaced after local training):
- sign flipping (-s * u) and Gaussian noise (Blanchard et al. 2017's omniscient/Gaussian
  Byzantine workers; the noise norm matches the honest update unless set);
- scaling / model replacement (Bagdasaryan et al. 2020, "How To Backdoor Federated Learning"):
  the backdoored update boosted by gamma = W / (eta * w_m) (W: the round's total FedAvg
  weight, w_m: the attackers'; n / (eta * m) with equal weights) replaces the global model;
- A Little Is Enough (Baruch et al. 2019): mean - z * std, z from the number of clients by the
  paper's formula or the reference implementations' (`alie_z`);
- inner-product manipulation (Xie et al. 2019, "Fall of Empires"): -epsilon * the mean of the
  benign updates (the honest clients' only, when omniscient);
- min-max and min-sum (Shejwalkar & Houmansadr 2021, "Manipulating the Byzantine"): mean +
  gamma * perturbation, with the largest gamma whose distances stay within the honest ones.
Qualitative results reproduced in tests/test_poisoning.py: sign flipping collapses FedAvg while
the median survives; model replacement by one client implants the backdoor, norm bounding stops
it; ALIE and IPM hurt Krum and the median more than Gaussian noise of the same norm.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from privlab.attacks.base import Attack, AttackResult, FinalView, TargetedProbe, ThreatModel
from privlab.errors import ScenarioError

if TYPE_CHECKING:
    from privlab.scenario import Scenario

Update = dict[str, torch.Tensor]


def flatten(update: Update) -> torch.Tensor:
    return torch.cat([update[k].reshape(-1).to(torch.float64) for k in sorted(update)])


def unflatten(vector: torch.Tensor, template: Update) -> Update:
    out, i = {}, 0
    for k in sorted(template):
        n = template[k].numel()
        out[k] = vector[i : i + n].reshape(template[k].shape).to(template[k].dtype)
        i += n
    return out


# --------------------------------------------------------------------------- crafting (pure)


def alie_z(n: int, m: int, formula: Literal["paper", "reference"] = "paper") -> float:
    """ALIE's z_max for n participants of which m are malicious; s = floor(n/2 + 1) - m is the
    number of benign "supporters" the attackers need for a majority.

    - "paper" (Baruch et al. 2019, Sec. 3 / Alg. 1): z = Phi^-1((n - s) / n);
    - "reference": z = Phi^-1((n - m - s) / (n - m)), the quantile among the n - m benign
      updates, as the common reference implementations compute it (e.g. Karimireddy, He and
      Jaggi's byzantine-robust-optimizer, and the code that copies it). It is smaller: a
      stealthier, weaker update.
    The probability is clamped into (1e-6, 1 - 1e-6) so z stays finite.
    """
    s = math.floor(n / 2 + 1) - m
    p = (n - s) / n if formula == "paper" else (n - m - s) / max(n - m, 1)
    p = min(max(p, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(p)


def replacement_boost(total_weight: float, attacker_weight: float, server_lr: float) -> float:
    """Model replacement's boost under sample-weighted FedAvg (Bagdasaryan et al. 2020, Eq. 3
    with weights): G' = G + eta * sum_i (w_i / W) * U_i, so attackers holding weight w_m who
    each send gamma * (X - G) move G to X (benign updates near zero) when
    gamma = W / (eta * w_m). With equal weights this is the paper's n / (eta * m)."""
    return total_weight / (server_lr * attacker_weight)


def alie(reference: torch.Tensor, z: float) -> torch.Tensor:
    return reference.mean(dim=0) - z * reference.std(dim=0, unbiased=reference.shape[0] > 1)


def ipm(reference: torch.Tensor, epsilon: float) -> torch.Tensor:
    return -epsilon * reference.mean(dim=0)


def perturbation(reference: torch.Tensor, kind: str) -> torch.Tensor:
    mu = reference.mean(dim=0)
    if kind == "std":
        return -reference.std(dim=0, unbiased=reference.shape[0] > 1)
    if kind == "sign":
        return -torch.sign(mu)
    return -mu / torch.clamp(torch.linalg.vector_norm(mu), min=1e-12)


def min_max_min_sum(
    reference: torch.Tensor,
    kind: Literal["min_max", "min_sum"],
    direction: str = "std",
    gamma_init: float = 10.0,
    tol: float = 1e-5,
) -> torch.Tensor:
    """Shejwalkar & Houmansadr's Algorithm 1: binary search of the largest gamma such that
    mu + gamma * p is no farther from the references than they are from each other (min-max:
    largest distance; min-sum: sum of squared distances)."""
    mu = reference.mean(dim=0)
    p = perturbation(reference, direction)
    d = torch.cdist(reference, reference) ** 2
    bound = d.max() if kind == "min_max" else d.sum(dim=1).max()

    def ok(gamma: float) -> bool:
        dist = ((reference - (mu + gamma * p)) ** 2).sum(dim=1)
        return bool((dist.max() if kind == "min_max" else dist.sum()) <= bound)

    gamma, step, best = gamma_init, gamma_init / 2, 0.0
    while abs(step) > tol:
        if ok(gamma):
            best = max(best, gamma)
            gamma += step
        else:
            gamma -= step
        step /= 2
    return mu + best * p


def stamp_trigger(x: np.ndarray, size: int, value: float) -> np.ndarray:
    """A size x size patch (images), the last `size` steps (sequences) or features (tabular),
    set to `value`: BadNets' bottom-right square. Works in place and returns x."""
    if x.ndim == 4:
        x[:, :, -size:, -size:] = value
    else:
        x[..., -size:] = value
    return x


# --------------------------------------------------------------------------- params


class PoisoningParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(default=0.2, ge=0, lt=1)
    """Share of the clients the adversary controls, in [0, 1): k = round(fraction * n)."""
    num_malicious: int | None = Field(default=None, ge=0)
    """Exact number of controlled clients (overrides fraction)."""
    colluding: bool = True
    start_round: int = Field(default=1, ge=1)
    end_round: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _window(self) -> PoisoningParams:
        if self.end_round is not None and self.end_round < self.start_round:
            raise ValueError("end_round must be >= start_round")
        return self


class LabelFlipParams(PoisoningParams):
    source: int = Field(default=1, ge=0)
    target: int = Field(default=7, ge=0)


class BackdoorParams(PoisoningParams):
    target: int = Field(default=0, ge=0)
    trigger_size: int = Field(default=2, ge=1)
    trigger_value: float = 1.0
    poison_fraction: float = Field(default=0.5, gt=0, le=1)
    """Share of each controlled client's records stamped and relabelled (the rest stay clean)."""


class ReplacementParams(BackdoorParams):
    boost: float | None = Field(default=None, gt=0)
    """Scale of the update (None: n / (server_lr * m) for n participants and m attackers)."""


class SignFlipParams(PoisoningParams):
    scale: float = Field(default=4.0, gt=0)


class ScalingParams(PoisoningParams):
    scale: float = Field(default=20.0, gt=0)
    relabel: Literal["none", "random", "shift"] = "shift"
    """Poison the data the boosted update is trained on: keep labels, draw them at random, or
    shift each label by one class (so the boosted update points away from the task)."""


class GaussianParams(PoisoningParams):
    sigma: float | None = Field(default=None, gt=0)
    norm: float | None = Field(default=None, gt=0)
    """L2 norm of the noise update (None with sigma None: the client's honest update norm)."""


class CollusionParams(PoisoningParams):
    omniscient: bool = True


class ALIEParams(CollusionParams):
    omniscient: bool = False
    z: float | None = None
    """Standard deviations below the mean (None: z_max from n and m, see `z_formula`)."""
    z_formula: Literal["paper", "reference"] = "paper"
    """paper: Baruch et al.'s Phi^-1((n - s) / n); reference: the reference implementations'
    Phi^-1((n - m - s) / (n - m)) (see `alie_z`)."""


class IPMParams(CollusionParams):
    epsilon: float = Field(default=0.5, gt=0)


class MinMaxParams(CollusionParams):
    direction: Literal["std", "unit", "sign"] = "std"
    gamma_init: float = Field(default=10.0, gt=0)


# --------------------------------------------------------------------------- attacks


class PoisoningAttack(Attack):
    """Common machinery: the controlled clients, the attack window, the bookkeeping."""

    family = "poisoning"
    topologies: ClassVar[frozenset[str] | None] = frozenset({"federated"})
    Params = PoisoningParams
    knowledge: ClassVar[tuple[str, ...]] = ("own_updates",)

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)
        self.controlled: list[int] = []
        self.num_clients = 0
        self.round = 0
        self.rounds_attacked: set[int] = set()
        self.crafted_norms: list[float] = []
        self.honest_norms: list[float] = []
        self.server_lr = 1.0

    def threat_model(self) -> ThreatModel:
        knowledge = list(self.knowledge)
        if getattr(self.params, "omniscient", False):
            knowledge.append("benign_updates")
        return ThreatModel(adversary="client", active=True, knowledge=tuple(knowledge))

    def count(self, num_clients: int) -> int:
        p = self.params
        if p.num_malicious is not None:
            return int(p.num_malicious)
        return math.floor(p.fraction * num_clients + 0.5)

    def check_setting(
        self, scenario: Scenario, input_shape: tuple[int, ...], num_classes: int
    ) -> None:
        n = scenario.partition.num_clients
        if self.count(n) >= n:
            raise ScenarioError(
                f"{self.field}.params.num_malicious: must be below the {n} clients "
                f"(got {self.count(n)})"
            )
        self.server_lr = scenario.topology.server_lr

    def controlled_clients(self, num_clients: int) -> list[int]:
        self.num_clients = num_clients
        self.controlled = list(range(self.count(num_clients)))
        return self.controlled

    def active(self, round_: int) -> bool:
        p = self.params
        return round_ >= p.start_round and (p.end_round is None or round_ <= p.end_round)

    def begin_round(self, round_: int) -> None:
        self.round = round_

    def craft_updates(
        self,
        round_: int,
        malicious: dict[int, Update],
        benign: dict[int, Update],
        global_state: dict[str, torch.Tensor],
    ) -> dict[int, Update]:
        if not self.active(round_):
            return malicious
        self.rounds_attacked.add(round_)
        out = self.craft(round_, malicious, benign)
        for k in malicious:
            self.honest_norms.append(float(torch.linalg.vector_norm(flatten(malicious[k]))))
            self.crafted_norms.append(float(torch.linalg.vector_norm(flatten(out[k]))))
        return out

    def craft(
        self, round_: int, malicious: dict[int, Update], benign: dict[int, Update]
    ) -> dict[int, Update]:
        return malicious

    def finalize(self, view: FinalView) -> AttackResult:
        n = max(self.num_clients, 1)
        metrics: dict[str, float | int] = {
            "malicious_clients": len(self.controlled),
            "malicious_fraction": len(self.controlled) / n,
            "rounds_attacked": len(self.rounds_attacked),
        }
        if self.crafted_norms:
            metrics["crafted_norm_mean"] = float(np.mean(self.crafted_norms))
            metrics["honest_norm_mean"] = float(np.mean(self.honest_norms))
        return AttackResult(metrics)


class DataPoisoningAttack(PoisoningAttack):
    """Switches the controlled clients' training data to a poisoned copy inside the window.

    The trainer keeps the tensors `poison_data` returns; the attacker (who owns the device)
    overwrites their contents in place at the start of each round."""

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)
        self._data: dict[int, tuple[torch.Tensor, ...]] = {}
        self._poisoned = False
        self.input_shape: tuple[int, ...] = ()
        self.num_classes = 0

    def check_setting(
        self, scenario: Scenario, input_shape: tuple[int, ...], num_classes: int
    ) -> None:
        super().check_setting(scenario, input_shape, num_classes)
        self.input_shape, self.num_classes = input_shape, num_classes
        for name in ("source", "target"):
            value = getattr(self.params, name, None)
            if value is not None and value >= num_classes:
                raise ScenarioError(
                    f"{self.field}.params.{name}: class {value} does not exist "
                    f"(the data has classes 0..{num_classes - 1})"
                )

    def poison(self, k: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def poison_data(self, client_id: int, x: torch.Tensor, y: torch.Tensor) -> tuple:
        px, py = self.poison(client_id, x.clone(), y.clone())
        work_x, work_y = x.clone(), y.clone()
        self._data[client_id] = (work_x, work_y, x.clone(), y.clone(), px, py)
        return work_x, work_y

    def begin_round(self, round_: int) -> None:
        super().begin_round(round_)
        on = self.active(round_)
        if on != self._poisoned:
            for wx, wy, cx, cy, px, py in self._data.values():
                wx.copy_(px if on else cx)
                wy.copy_(py if on else cy)
            self._poisoned = on
        if on and self._data:
            self.rounds_attacked.add(round_)


class LabelFlipAttack(DataPoisoningAttack):
    """Label flipping source -> target by malicious clients (Tolpegin et al. 2020)."""

    Params = LabelFlipParams

    def poison(self, k: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y[y == self.params.source] = self.params.target
        return x, y

    def probes(self) -> list[TargetedProbe]:
        p = self.params
        return [TargetedProbe("targeted_misclassification", p.target, source=p.source)]


class BackdoorAttack(DataPoisoningAttack):
    """BadNets backdoor (Gu et al. 2017): a trigger patch relabelled to the target class."""

    Params = BackdoorParams

    def check_setting(
        self, scenario: Scenario, input_shape: tuple[int, ...], num_classes: int
    ) -> None:
        super().check_setting(scenario, input_shape, num_classes)
        size = self.params.trigger_size
        room = min(input_shape[-2:]) if len(input_shape) == 3 else input_shape[-1]
        if size > room:
            raise ScenarioError(
                f"{self.field}.params.trigger_size: a trigger of {size} does not fit the input "
                f"of shape {tuple(input_shape)} (at most {room})"
            )

    def stamp(self, x: np.ndarray) -> np.ndarray:
        return stamp_trigger(x, self.params.trigger_size, self.params.trigger_value)

    def poison(self, k: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = self.params
        candidates = np.flatnonzero(y.numpy() != p.target)
        rng = np.random.default_rng([k, 31])
        n = min(len(candidates), math.ceil(p.poison_fraction * len(y)))
        chosen = np.sort(rng.choice(candidates, size=n, replace=False))
        xs = x.numpy()
        xs[chosen] = self.stamp(xs[chosen])
        y[torch.as_tensor(chosen)] = p.target
        return x, y

    def probes(self) -> list[TargetedProbe]:
        return [TargetedProbe("backdoor_success", self.params.target, stamp=self.stamp)]


class ModelReplacementAttack(BackdoorAttack):
    """Model replacement (Bagdasaryan et al. 2020): a backdoored update boosted to replace
    the global model."""

    Params = ReplacementParams
    knowledge: ClassVar[tuple[str, ...]] = (
        "own_updates",
        "server_lr",
        "participants' sample counts (FedAvg weights)",
    )

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)
        self._weights: dict[int, dict[int, float]] = {}
        self.boosts: list[float] = []

    def aggregation_weights(self, round_: int, weights: dict[int, float]) -> None:
        self._weights[round_] = dict(weights)

    def gamma(self, round_: int, k: int, malicious: dict[int, Update], n: int) -> float:
        """The boost for attacker k: `replacement_boost` with this round's FedAvg weights
        (equal weights if the topology does not publish them)."""
        if self.params.boost is not None:
            return float(self.params.boost)
        w = self._weights.get(round_)
        ids = list(malicious) if self.params.colluding else [k]
        if w is None or not all(j in w for j in ids):
            return n / (self.server_lr * len(ids))
        return replacement_boost(sum(w.values()), sum(w[j] for j in ids), self.server_lr)

    def craft(
        self, round_: int, malicious: dict[int, Update], benign: dict[int, Update]
    ) -> dict[int, Update]:
        n = len(malicious) + len(benign)
        out = {}
        for k, u in malicious.items():
            g = self.gamma(round_, k, malicious, n)
            self.boosts.append(g)
            out[k] = {key: g * v for key, v in u.items()}
        return out

    def finalize(self, view: FinalView) -> AttackResult:
        result = super().finalize(view)
        if self.boosts:
            result.metrics["boost_mean"] = float(np.mean(self.boosts))
        return result


class SignFlipAttack(PoisoningAttack):
    """Sign flipping: each malicious client sends -scale times its honest update."""

    Params = SignFlipParams

    def craft(
        self, round_: int, malicious: dict[int, Update], benign: dict[int, Update]
    ) -> dict[int, Update]:
        s = self.params.scale
        return {k: {key: -s * v for key, v in u.items()} for k, u in malicious.items()}


class ScalingAttack(DataPoisoningAttack):
    """Scaling (Bagdasaryan et al. 2020's boosting, untargeted): an update trained on
    relabelled data, multiplied by `scale`."""

    Params = ScalingParams

    def poison(self, k: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        classes = int(self.num_classes) or int(y.max()) + 1
        if self.params.relabel == "shift":
            y = (y + 1) % classes
        elif self.params.relabel == "random":
            g = torch.Generator().manual_seed(10_007 + k)
            y = torch.randint(0, classes, y.shape, generator=g)
        return x, y

    def craft(
        self, round_: int, malicious: dict[int, Update], benign: dict[int, Update]
    ) -> dict[int, Update]:
        s = self.params.scale
        return {k: {key: s * v for key, v in u.items()} for k, u in malicious.items()}


class GaussianAttack(PoisoningAttack):
    """Gaussian noise in place of the update (Blanchard et al. 2017's Gaussian Byzantine)."""

    Params = GaussianParams

    def craft(
        self, round_: int, malicious: dict[int, Update], benign: dict[int, Update]
    ) -> dict[int, Update]:
        out = {}
        for k, u in malicious.items():
            honest = flatten(u)
            g = torch.Generator().manual_seed(1_000_003 * round_ + k)
            noise = torch.randn(honest.shape, generator=g, dtype=torch.float64)
            if self.params.sigma is not None:
                noise = noise * self.params.sigma
            else:
                target = self.params.norm or float(torch.linalg.vector_norm(honest))
                noise = noise * (target / float(torch.linalg.vector_norm(noise)))
            out[k] = unflatten(noise, u)
        return out


class CollusionAttack(PoisoningAttack):
    """Attacks that compute one malicious update from reference statistics."""

    Params = CollusionParams

    def reference(
        self, k: int, malicious: dict[int, Update], benign: dict[int, Update]
    ) -> torch.Tensor:
        """The benign updates the statistics are taken over: with `omniscient`, the honest
        clients' updates of the round only (never the attackers' own); otherwise the
        attackers' own honest updates (all colluders', or client k's), computed on their clean
        data, as an estimate of the benign distribution (Baruch et al.'s setting)."""
        if self.params.omniscient and benign:
            updates = list(benign.values())
        else:
            updates = list(malicious.values()) if self.params.colluding else [malicious[k]]
        return torch.stack([flatten(u) for u in updates])

    def vector(self, reference: torch.Tensor, n: int, m: int) -> torch.Tensor:
        raise NotImplementedError

    def craft(
        self, round_: int, malicious: dict[int, Update], benign: dict[int, Update]
    ) -> dict[int, Update]:
        n, m = len(malicious) + len(benign), len(malicious)
        if self.params.colluding:
            shared = self.vector(self.reference(next(iter(malicious)), malicious, benign), n, m)
            return {k: unflatten(shared, u) for k, u in malicious.items()}
        return {
            k: unflatten(self.vector(self.reference(k, malicious, benign), n, m), u)
            for k, u in malicious.items()
        }


class ALIEAttack(CollusionAttack):
    """A Little Is Enough (Baruch et al. 2019): mean - z * std, inside the honest spread."""

    Params = ALIEParams
    knowledge: ClassVar[tuple[str, ...]] = ("own_updates", "num_participants")

    def vector(self, reference: torch.Tensor, n: int, m: int) -> torch.Tensor:
        z = self.params.z if self.params.z is not None else alie_z(n, m, self.params.z_formula)
        self.z_used = z
        return alie(reference, z)

    def finalize(self, view: FinalView) -> AttackResult:
        result = super().finalize(view)
        if hasattr(self, "z_used"):
            result.metrics["z"] = float(self.z_used)
        return result


class IPMAttack(CollusionAttack):
    """Inner-product manipulation (Xie et al. 2019): -epsilon times the honest mean."""

    Params = IPMParams

    def vector(self, reference: torch.Tensor, n: int, m: int) -> torch.Tensor:
        return ipm(reference, self.params.epsilon)


class MinMaxAttack(CollusionAttack):
    """Min-max (Shejwalkar & Houmansadr 2021): no farther from any honest update than the
    honest updates are from each other."""

    Params = MinMaxParams
    kind: ClassVar[Literal["min_max", "min_sum"]] = "min_max"

    def vector(self, reference: torch.Tensor, n: int, m: int) -> torch.Tensor:
        return min_max_min_sum(reference, self.kind, self.params.direction, self.params.gamma_init)


class MinSumAttack(MinMaxAttack):
    """Min-sum (Shejwalkar & Houmansadr 2021): sum of squared distances to the honest updates
    within that of the most outlying honest update."""

    kind: ClassVar[Literal["min_max", "min_sum"]] = "min_sum"
