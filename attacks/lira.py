"""LiRA: the likelihood-ratio membership attack (Carlini et al. 2022, "Membership Inference
Attacks From First Principles", IEEE S&P).

Setting: for each challenge record (x, y) the attacker measures the target's logit-scaled
confidence phi = log(p_y / (1 - p_y)) and compares it with the distributions of phi under
reference (shadow) models trained with the target's public recipe on data it holds (the
`FinalView.population`, records no party trains on):
- online: reference models train on random halves of population + challenge records, so each
  record has IN models (trained on it) and OUT models; score = log N(phi; mu_in, s_in) -
  log N(phi; mu_out, s_out);
- offline: reference models train on population records only (all OUT); score is the one-sided
  test -log Pr[Z > phi], Z ~ N(mu_out, s_out);
- variance: per-example (each record's own s) or fixed (one global s, needed when there are few
  reference models).
Targets: `lira` attacks the released model (an outsider with query access; final global model of
a federated run, or the central baseline). `lira_server` is an honest-but-curious server that
reads client k's plaintext update on the wire, rebuilds client k's local model (global + update)
and asks "was record x in client k's data?"; its reference models start from the same global
model and train for the client's local epochs on as many records as client k holds.
Reference models follow the target's recipe as the adversary knows it (the threat model's
`knowledge`): same architecture, the target's number of training records (the released model's
training-set size, split across the same number of clients; or client k's), the local training
settings, and the training-time defenses (DP-SGD with the target's noise multiplier, clip and
sampling rate; client-side clipping and noise: attacks/shadow_recipe.py).
Qualitative result reproduced (tests/test_lira.py): on an overfit model online LiRA beats the
loss threshold at TPR@1% FPR, and offline sits between them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats
from scipy.special import logsumexp

from privlab.attacks.base import (
    Attack,
    AttackResult,
    FinalView,
    MembershipScores,
    PopulationData,
    ThreatModel,
)
from privlab.attacks.shadow_recipe import shadow_defenses
from privlab.errors import ScenarioError
from privlab.reference_models import (
    ReferenceJob,
    StackedModels,
    model_key,
    subset_masks,
    train_reference_models,
)
from privlab.training import State, TrainSettings
from privlab.wire import SERVER, Message, client

MIN_STD = 1e-6


# --------------------------------------------------------------------------- pure math


def logit_confidence(logprobs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi = log p_y - log(sum_{j != y} p_j), stable in log space; logprobs (..., N, C)."""
    lp = np.asarray(logprobs, dtype=np.float64)
    idx = np.broadcast_to(np.asarray(labels)[:, None], (*lp.shape[:-1], 1))
    own = np.take_along_axis(lp, idx, axis=-1)[..., 0]
    others = lp.copy()
    np.put_along_axis(others, idx, -np.inf, axis=-1)
    return own - logsumexp(others, axis=-1)


def log_probs_from_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, 1.0))


def _masked_stats(phi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean, std and count of phi (M, N) over rows where mask is True."""
    count = mask.sum(axis=0)
    safe = np.maximum(count, 1)
    mean = np.where(mask, phi, 0.0).sum(axis=0) / safe
    var = np.where(mask, (phi - mean) ** 2, 0.0).sum(axis=0) / np.maximum(count - 1, 1)
    return mean, np.sqrt(var), count


def _pooled_std(phi: np.ndarray, mask: np.ndarray, mean: np.ndarray, count: np.ndarray) -> float:
    """One global std: residuals around each record's own mean, pooled over records."""
    resid = np.where(mask, (phi - mean) ** 2, 0.0).sum()
    dof = np.maximum(count - 1, 0).sum()
    return float(np.sqrt(resid / dof)) if dof > 0 else 1.0


def lira_scores(
    target_phi: np.ndarray,
    ref_phi: np.ndarray,
    in_mask: np.ndarray,
    *,
    online: bool,
    fixed_variance: bool,
) -> np.ndarray:
    """LiRA membership scores (higher = member) from target and reference phi values.

    target_phi (N,), ref_phi (M, N), in_mask (M, N): True where reference model i trained on
    record n. Per-example stds fall back to the global one for records with fewer than two
    models on a side; a record without any IN model (online, when the target's training set
    is small against the pool) gets the OUT mean plus the average IN - OUT gap.
    """
    out_mask = ~in_mask
    mu_out, sd_out, n_out = _masked_stats(ref_phi, out_mask)
    g_out = _pooled_std(ref_phi, out_mask, mu_out, n_out)
    sd_out = np.full_like(mu_out, g_out) if fixed_variance else np.where(n_out >= 2, sd_out, g_out)
    sd_out = np.maximum(sd_out, MIN_STD)
    if not online:
        return -stats.norm.logsf(target_phi, loc=mu_out, scale=sd_out)
    mu_in, sd_in, n_in = _masked_stats(ref_phi, in_mask)
    both = (n_in > 0) & (n_out > 0)
    if (n_in == 0).any():
        # The target's training set can be far smaller than the pool (one client's records),
        # so some records have no IN model: their IN mean is the OUT mean shifted by the
        # average IN - OUT gap of the records that have both (one global shift, as the fixed
        # variance is one global spread).
        gap = float((mu_in - mu_out)[both].mean()) if both.any() else 0.0
        mu_in = np.where(n_in > 0, mu_in, mu_out + gap)
    g_in = _pooled_std(ref_phi, in_mask, mu_in, n_in)
    sd_in = np.full_like(mu_in, g_in) if fixed_variance else np.where(n_in >= 2, sd_in, g_in)
    sd_in = np.maximum(sd_in, MIN_STD)
    return stats.norm.logpdf(target_phi, mu_in, sd_in) - stats.norm.logpdf(
        target_phi, mu_out, sd_out
    )


# --------------------------------------------------------------------------- reference models


@dataclass
class TargetSpec:
    """What is attacked: its log-probabilities and how reference models should mimic it."""

    logprobs: Callable[[np.ndarray], np.ndarray]
    rounds: int
    num_clients: int = 1
    server_lr: float = 1.0
    client_fraction: float = 1.0
    init_state: State | None = None
    train_size: int | None = None
    """Records the target trained on (the released model's training set, or client k's);
    None: half of the pool."""


RECIPE_KNOWLEDGE = (
    "training recipe: architecture, local training settings, training-time defenses "
    "(DP-SGD noise multiplier, clip and sampling rate; client-side clipping and noise)",
    "population data",
)


@dataclass
class ReferenceOutput:
    logprobs: np.ndarray  # (M, N_eval, C) on the evaluated records
    in_mask: np.ndarray  # (M, N_eval)
    from_cache: bool
    info: dict[str, Any]
    """How the reference models mirror the target (saved as the attack's artifact)."""


def fit_reference(
    view: FinalView,
    target: TargetSpec,
    *,
    online: bool,
    num_models: int,
    population: PopulationData,
    extra_eval: np.ndarray | None,
    seed: int,
    cache: bool,
) -> ReferenceOutput:
    """Train reference models and evaluate them on the challenge (then `extra_eval`).

    Online: the pool is challenge + population, halves of it per model (or the target's training
    size when known). Offline: the pool is the population only.
    """
    assert view.challenge is not None
    cx, cy = view.challenge.x, view.challenge.y
    if online:
        px, py = np.concatenate([cx, population.x]), np.concatenate([cy, population.y])
    else:
        px, py = population.x, population.y
    wanted = target.train_size if target.train_size is not None else len(py) // 2
    limit = len(py) - 1 if online else len(py)  # online: every record needs OUT models
    size = max(target.num_clients, min(wanted, limit))
    rng = np.random.default_rng([seed, 41, int(online)])
    masks = subset_masks(len(py), num_models, size, rng)
    recipe = view.recipe
    probe = view.model_factory()
    x0 = np.asarray(cx[:1])
    with torch.no_grad():
        num_classes = int(probe(torch.as_tensor(x0)).shape[1])
    shadow = shadow_defenses(view, size // target.num_clients)
    job = ReferenceJob(
        x=px,
        y=py,
        masks=masks,
        settings=TrainSettings.from_topology(recipe.topology),
        rounds=target.rounds,
        num_clients=target.num_clients,
        server_lr=target.server_lr,
        client_fraction=target.client_fraction,
        model_key=model_key(recipe.model.model_dump_json(), tuple(x0.shape[1:]), num_classes),
        seed=seed,
        init_state=target.init_state,
        dp=shadow.dp,
        update_transforms=shadow.transforms,
        defenses_key=shadow.key,
        trainer="sequential" if recipe.engine == "sequential" else "auto",
    )
    models, hit = train_reference_models(job, view.model_factory, use_cache=cache)
    eval_x = cx if extra_eval is None else np.concatenate([cx, extra_eval])
    logp = _log_softmax(models, eval_x)
    n_extra = 0 if extra_eval is None else len(extra_eval)
    in_mask = masks[:, : len(cy)] if online else np.zeros((num_models, len(cy)), dtype=bool)
    in_mask = np.concatenate([in_mask, np.zeros((num_models, n_extra), dtype=bool)], axis=1)
    info: dict[str, Any] = {
        "num_models": num_models,
        "records_per_model": size,
        "target_records": target.train_size,
        "clients_per_model": target.num_clients,
        "rounds": target.rounds,
        "mirrored_defenses": [d["name"] for d in shadow.mirrored],
        "dp_sgd": None if shadow.dp is None else dict(shadow.dp.__dict__),
        "not_mirrored_defenses": shadow.not_mirrored,
    }
    if target.train_size is not None and size < target.train_size:
        info["note"] = (
            f"reference models train on {size} records, fewer than the target's "
            f"{target.train_size}: the attacker's data pool is too small"
        )
    return ReferenceOutput(logp, in_mask, hit, info)


def _log_softmax(models: StackedModels, x: np.ndarray) -> np.ndarray:
    return torch.log_softmax(models.logits(x), dim=-1).numpy()


# --------------------------------------------------------------------------- targets


def global_target(view: FinalView, rounds: int | None) -> TargetSpec:
    """The released model: reference models follow its recipe (FedAvg across the same number
    of clients, or central training), for `rounds` rounds when the attack overrides it."""
    recipe = view.recipe
    federated = recipe.topology.name == "federated"
    sizes = view.side_information.get("client_num_samples") or {}
    return TargetSpec(
        logprobs=lambda x: log_probs_from_probs(view.query(x)),
        rounds=rounds or recipe.topology.rounds,
        num_clients=recipe.partition.num_clients if federated else 1,
        server_lr=recipe.topology.server_lr if federated else 1.0,
        client_fraction=recipe.topology.client_fraction if federated else 1.0,
        train_size=int(sum(sizes.values())) if sizes else None,
    )


def _is_plain_update(payload: Any) -> bool:
    return (
        isinstance(payload, Mapping)
        and len(payload) > 0
        and all(isinstance(v, torch.Tensor) for v in payload.values())
    )


class ServerSideTarget:
    """Honest-but-curious server watching client k = `params.client`: the global model it sent
    to k and k's update; it rebuilds k's local model (global + update) from its last plaintext
    update. Mixed in before a membership attack class, whose scoring then targets that model."""

    params: Any

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)  # type: ignore[call-arg]
        self._reset_observations()

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="server",
            knowledge=(
                *RECIPE_KNOWLEDGE,
                "client sample counts (client k's training-set size)",
                "the global model sent to client k and client k's update",
            ),
        )

    def target_parties(self) -> list[int] | None:
        return [self.params.client]

    def observe(self, msg: Message) -> None:
        self._observe_client(msg, self.params.client)

    def _target(self, view: FinalView) -> TargetSpec | None:
        return self._local_target(view, self.params.client)

    def _no_target(self) -> AttackResult:
        return self._no_plaintext(self.params.client)

    def _reset_observations(self) -> None:
        self._globals: dict[int, State] = {}
        self._update: tuple[int, State] | None = None
        self._hidden_updates = 0

    def _observe_client(self, msg: Message, k: int) -> None:
        if msg.kind == "global_model" and msg.receiver == client(k):
            if _is_plain_update(msg.payload):
                self._globals[msg.round] = {n: t.detach().clone() for n, t in msg.payload.items()}
        elif msg.kind == "update" and msg.sender == client(k) and msg.receiver == SERVER:
            if _is_plain_update(msg.payload) and msg.round in self._globals:
                update = {n: t.detach().clone() for n, t in msg.payload.items()}
                self._update = (msg.round, update)
            else:
                self._hidden_updates += 1

    def _local_target(self, view: FinalView, k: int) -> TargetSpec | None:
        if self._update is None:
            return None
        r, update = self._update
        start = self._globals[r]
        local = {n: (t + update[n]) if n in update else t for n, t in start.items()}
        model = view.model_factory()
        model.load_state_dict(local)
        model.eval()

        def logprobs(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch.log_softmax(model(torch.as_tensor(x)).double(), dim=1).numpy()

        sizes = view.side_information.get("client_num_samples", {})
        return TargetSpec(
            logprobs=logprobs,
            rounds=1,
            init_state=start,
            train_size=sizes.get(k),
        )

    def _no_plaintext(self, k: int) -> AttackResult:
        note = (
            f"the server saw no plaintext update from client {k} "
            f"({self._hidden_updates} protected update(s), e.g. under secure aggregation): "
            "nothing to attack, so no membership metrics"
        )
        return AttackResult(
            metrics={"plaintext_updates_seen": 0, "protected_updates_seen": self._hidden_updates},
            artifacts={"note": note},
        )


# --------------------------------------------------------------------------- attacks


PER_EXAMPLE_MIN_MODELS = 64
"""Carlini et al. 2022 (Sec. VI-B, Fig. 8): per-example variances pay off from about 64
reference models; with fewer, one global (fixed) variance is the stronger estimate."""


def resolve_variance(variance: str, num_models: int) -> str:
    """'auto' picks fixed below PER_EXAMPLE_MIN_MODELS reference models, per-example from it."""
    if variance != "auto":
        return variance
    return "per_example" if num_models >= PER_EXAMPLE_MIN_MODELS else "fixed"


class LiRAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["online", "offline"] = "online"
    variance: Literal["auto", "per_example", "fixed"] = "auto"
    """auto: fixed below 64 reference models, per-example from 64 (the paper's advice)."""
    num_reference_models: int = Field(default=16, ge=1)
    rounds: int | None = Field(default=None, gt=0)
    """Training rounds of the reference models (default: the target recipe's)."""
    cache: bool = True


class LiRAServerParams(LiRAParams):
    client: int = Field(default=0, ge=0)


def min_reference_models(mode: str, variance: str) -> int:
    """Online needs IN and OUT models per record (two each for a per-example variance);
    offline needs OUT models only (two for a per-example variance)."""
    per_side = 2 if variance == "per_example" else 1
    return 2 * per_side if mode == "online" else per_side


class LiRAAttack(Attack):
    """LiRA (Carlini et al. 2022) against the released model; online or offline."""

    family = "membership"
    Params: ClassVar[type[BaseModel]] = LiRAParams

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)
        self.variance = resolve_variance(self.params.variance, self.params.num_reference_models)
        need = min_reference_models(self.params.mode, self.variance)
        if self.params.num_reference_models < need:
            raise ScenarioError(
                f"{field}.params.num_reference_models: {self.params.mode} LiRA with "
                f"{self.variance} variance needs at least {need} reference models "
                f"(got {self.params.num_reference_models})"
            )

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="outsider",
            knowledge=(*RECIPE_KNOWLEDGE, "the released model's training-set size"),
        )

    def _target(self, view: FinalView) -> TargetSpec | None:
        return global_target(view, self.params.rounds)

    def _population(self, view: FinalView) -> PopulationData:
        if view.population is None or len(view.population.y) < 2:
            raise ScenarioError(f"{self.field}: the run gives the attacker no population data")
        return view.population

    def finalize(self, view: FinalView) -> AttackResult | MembershipScores:
        assert view.challenge is not None
        target = self._target(view)
        if target is None:
            return self._no_target()
        ref = fit_reference(
            view,
            target,
            online=self.params.mode == "online",
            num_models=self.params.num_reference_models,
            population=self._population(view),
            extra_eval=None,
            seed=view.recipe.seed,
            cache=self.params.cache,
        )
        labels = view.challenge.y
        target_phi = logit_confidence(target.logprobs(view.challenge.x), labels)
        ref_phi = logit_confidence(ref.logprobs, labels)
        scores = lira_scores(
            target_phi,
            ref_phi,
            ref.in_mask,
            online=self.params.mode == "online",
            fixed_variance=self.variance == "fixed",
        )
        info = {**ref.info, "variance": self.variance}
        return MembershipScores(scores=scores, artifacts={"reference_models": info})

    def _no_target(self) -> AttackResult:
        raise NotImplementedError


class LiRAServerAttack(ServerSideTarget, LiRAAttack):
    """LiRA by an honest-but-curious server on one client's update (client-level target)."""

    Params = LiRAServerParams
    topologies = frozenset({"federated"})
