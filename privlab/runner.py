"""Run a scenario: every variant trains, every attack finalises, the referee grades.

The runner is the only place that knows the membership ground truth; attacks get the
challenge records without labels of membership and return scores.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from privlab import __version__, fanout, registry
from privlab.attacks.base import (
    Attack,
    AttackResult,
    FinalView,
    MembershipChallenge,
    MembershipScores,
    PopulationData,
    RefereeGraded,
    RefereeTruth,
)
from privlab.data import Dataset, load_dataset
from privlab.defenses.base import Defense
from privlab.engine.network import network_cost
from privlab.errors import Diverged, ScenarioError
from privlab.expectations import check_expectation_paths, check_expectations
from privlab.fairness import fairness_metrics
from privlab.metrics import CI_METHODS, membership_metrics
from privlab.models import build_model, check_model
from privlab.partition import ClientData, partition
from privlab.results import (
    SCHEMA_VERSION,
    diverged_variant,
    null_non_finite,
    package_versions,
)
from privlab.robustness import detection_metrics, probe_metrics
from privlab.root_set import check_root_size, server_root_split
from privlab.scenario import Scenario, VariantSpec, portable_dump, variant_scenario
from privlab.topologies.base import DefenseStack, TopologyContext, TrainingOutcome
from privlab.training import evaluate
from privlab.wire import Wire

VariantProgress = Callable[[str, int, int, float], None]
AttackProgress = Callable[[str, str, int, int], None]
"""(variant, attack id, attacks done, attacks in all): called before each attack and at the end."""


KNOWN_HARMLESS_WARNINGS = (
    "Full backward hook is firing",  # Opacus hooks on layers whose inputs need no grad
    "Optimal order is the largest alpha",  # RDP order grid edge: the bound is still valid
    "Optimal order is the smallest alpha",  # the other edge: loose, still an upper bound
    "GDP accounting is experimental",  # privlab labels GDP epsilons as approximate
)


@dataclass(frozen=True)
class Referee:
    """Holds the membership truth for one variant's challenge set."""

    challenge: MembershipChallenge
    is_member: np.ndarray


def build_challenge(
    dataset: Dataset,
    clients: list[ClientData],
    seed: int,
    *,
    every_client: list[ClientData] | None = None,
    iid: bool = False,
) -> Referee:
    """Every member (training record of the targeted clients) and every exact non-member.

    Non-members are the targeted clients' held-out records; under an iid partition every
    client's holdout comes from the same distribution and no party trained on it, so the whole
    holdout (`every_client`'s) serves, which is what makes low-FPR claims resolvable for an
    attack on one client. Classes are not balanced: ROC metrics do not depend on the prior.
    """
    members = np.concatenate([c.train_idx for c in clients])
    pool = every_client if iid and every_client is not None else clients
    outsiders = np.concatenate([c.holdout_idx for c in pool])
    rng = np.random.default_rng([seed, 23])
    idx = np.concatenate([np.sort(members), np.sort(outsiders)])
    truth = np.concatenate([np.ones(len(members), dtype=bool), np.zeros(len(outsiders), bool)])
    order = rng.permutation(len(idx))
    challenge = MembershipChallenge(x=dataset.x_train[idx[order]], y=dataset.y_train[idx[order]])
    return Referee(challenge, truth[order])


def instantiate_defenses(scenario: Scenario, variant: VariantSpec, index: int) -> list[Defense]:
    out = []
    for i, spec in enumerate(scenario.defenses):
        out.append(registry.defenses.get(spec.name, f"defenses.{i}.name")(spec, f"defenses.{i}"))
    for j, spec in enumerate(variant.defenses):
        field = f"variants.{index}.defenses.{j}"
        out.append(registry.defenses.get(spec.name, f"{field}.name")(spec, field))
    topo = scenario.topology.name
    for d in out:
        allowed = getattr(d, "topologies", None)
        if allowed is not None and topo not in allowed:
            raise ScenarioError(
                f"{d.field}.name: '{d.spec.name}' does not apply to topology '{topo}' "
                f"(it applies to: {', '.join(sorted(allowed))})"
            )
    return out


def instantiate_attacks(scenario: Scenario) -> list[Attack]:
    out = []
    for i, spec in enumerate(scenario.attacks):
        cls = registry.attacks.get(spec.name, f"attacks.{i}.name")
        attack = cls(spec, f"attacks.{i}")
        if cls.topologies is not None and scenario.topology.name not in cls.topologies:
            raise ScenarioError(
                f"attacks.{i}.name: '{spec.name}' does not apply to topology "
                f"'{scenario.topology.name}' (it applies to: {', '.join(sorted(cls.topologies))})"
            )
        out.append(attack)
    return out


def _check_target_parties(attacks: list[Attack], num_clients: int) -> None:
    for attack in attacks:
        for k in attack.target_parties() or []:
            if not 0 <= k < num_clients:
                raise ScenarioError(
                    f"{attack.field}.params.client: client {k} does not exist "
                    f"(the partition has clients 0..{num_clients - 1})"
                )


def public_side_information(dataset: Dataset) -> dict[str, PopulationData]:
    """The dataset's public records, if it has any: every party holds them."""
    if dataset.x_public is None or dataset.y_public is None:
        return {}
    return {"public": PopulationData(x=dataset.x_public, y=dataset.y_public)}


def make_query(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """Black-box access to the released model: class probabilities only."""

    def query(x: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return torch.softmax(model(torch.as_tensor(x)), dim=1).double().numpy()

    return query


def grade(attack: Attack, output: AttackResult | MembershipScores, referee: Referee) -> dict:
    if isinstance(output, MembershipScores):
        metrics, artifacts = membership_metrics(output.scores, referee.is_member, output.threshold)
        output = AttackResult(metrics, {**output.artifacts, **artifacts}, dict(CI_METHODS))
    return {
        "name": attack.spec.name,
        "family": attack.family,
        "threat_model": attack.threat_model().model_dump(mode="json"),
        "params": attack.params.model_dump(mode="json"),
        "metrics": {k: _clean(v) for k, v in output.metrics.items()},
        "artifacts": output.artifacts,
        **({"ci_methods": dict(output.ci_methods)} if output.ci_methods else {}),
    }


def equivalent_command(scenario: Scenario) -> str:
    """The CLI command equivalent to a Python-API run of a bundled scenario with its seed (the
    CLI passes the exact command it was given instead)."""
    import shlex

    return shlex.join(["privlab", "run", scenario.name, "--seed", str(scenario.seed)])


def _clean(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return round(float(v), 6)
    if isinstance(v, list | tuple):  # an interval [lo, hi]
        return [_clean(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    return v


class ScenarioRun:
    """Prepares every variant up front (so bad input fails before any training), then runs."""

    def __init__(
        self,
        scenario: Scenario,
        progress: VariantProgress | None = None,
        attack_progress: AttackProgress | None = None,
        invocation: str | None = None,
    ) -> None:
        self.scenario = scenario
        self.progress = progress
        self.attack_progress = attack_progress
        self.invocation = invocation
        self._datasets: dict[str, Dataset] = {}
        self.variants = []
        for i, variant in enumerate(scenario.variant_list()):
            try:
                prepared = self._prepare(scenario, variant, i)
            except ScenarioError as exc:
                if str(exc).startswith("variants.") or not variant.set:
                    raise
                raise ScenarioError(f"variant '{variant.name}': {exc}") from None
            self.variants.append(prepared)
        check_expectation_paths(scenario, {p[0].name: p[3] for p in self.variants})

    def _prepare(self, scenario: Scenario, variant: VariantSpec, i: int) -> tuple:
        """Build and check one variant: every bad input fails here, before any training."""
        vs = variant_scenario(scenario, variant, i)
        defenses = DefenseStack.build(instantiate_defenses(vs, variant, i))
        attacks = instantiate_attacks(vs)
        topology_cls = registry.topologies.get(vs.topology.name, "topology.name")
        own_data = getattr(topology_cls, "load_data", None)  # pretrained: the members file
        if own_data is not None:
            dataset, clients = own_data(vs)
        else:
            dataset = self._dataset(vs)
            clients = partition(dataset.y_train, vs.partition, vs.seed, dataset.groups_train)
        dp = defenses.local_training is not None  # DP-SGD needs per-sample gradients
        check_model(vs.model, dataset.input_shape, dataset.num_classes, dp=dp)
        _check_target_parties(attacks, len(clients))
        check_root_size(defenses, len(dataset.y_test))
        for component in [*defenses.all(), *attacks]:
            component.check_setting(vs, dataset.input_shape, dataset.num_classes)
        topology_cls.check_defenses(defenses, vs.topology.name)
        topology_check = getattr(topology_cls, "check_setting", None)
        if topology_check is not None:  # topology params fail before any variant trains
            topology_check(vs, dataset.input_shape, dataset.num_classes, len(clients))
        return (variant, vs, defenses, attacks, dataset, clients)

    def _dataset(self, s: Scenario) -> Dataset:
        key = s.data.model_dump_json() + str(s.seed)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(s.data, s.seed)
        return self._datasets[key]

    def run(self) -> dict[str, Any]:
        with warnings.catch_warnings():
            for message in KNOWN_HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            return self._run()

    def run_variant(self, index: int) -> tuple[str, dict[str, Any]]:
        """One variant's results (a backend's unit of work)."""
        with warnings.catch_warnings():
            for message in KNOWN_HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            prepared = self.variants[index]
            return prepared[0].name, self._run_variant(*prepared)

    def _run(self) -> dict[str, Any]:
        started = datetime.now(UTC).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        variants = {}
        with fanout.plan(self.scenario, len(self.variants)) as (outer, inner):
            if outer is not None:  # variants as Ray tasks or over local worker processes
                variants = fanout.run_variants(self.scenario, len(self.variants), outer)
            with fanout.using(inner):  # reference models of variants run here
                for variant, vs, defenses, attacks, dataset, clients in self.variants:
                    if variant.name not in variants:
                        variants[variant.name] = self._run_variant(
                            variant, vs, defenses, attacks, dataset, clients
                        )
        results = {
            "schema_version": SCHEMA_VERSION,
            "privlab_version": __version__,
            "scenario": portable_dump(self.scenario),
            "seed": self.scenario.seed,
            "invocation": self.invocation or equivalent_command(self.scenario),
            "versions": package_versions(),
            "variants": variants,
        }
        results = null_non_finite(results)  # JSON has no NaN: null, with a note where it was
        results["expectations"] = check_expectations(self.scenario, results["variants"])
        results["timing"] = {
            "started": started,
            "seconds": round(time.perf_counter() - t0, 3),
            "backend": self.scenario.backend,
            "workers": self.scenario.workers,
        }
        return results

    def _run_variant(
        self,
        variant: VariantSpec,
        vs: Scenario,
        defenses: DefenseStack,
        attacks: list[Attack],
        dataset: Dataset,
        clients: list[ClientData],
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        torch.manual_seed(vs.seed)
        model = build_model(vs.model, dataset.input_shape, dataset.num_classes)
        wire = Wire()
        for attack in attacks:
            wire.subscribe(attack.threat_model().can_see, attack.observe)
        tensors = {
            "x_train": torch.as_tensor(dataset.x_train),
            "y_train": torch.as_tensor(dataset.y_train),
            "x_test": torch.as_tensor(dataset.x_test),
            "y_test": torch.as_tensor(dataset.y_test),
        }
        server = server_root_split(defenses, tensors, vs.seed)
        progress = None
        if self.progress is not None:
            cb = self.progress
            progress = lambda r, total, acc: cb(variant.name, r, total, acc)  # noqa: E731
        ctx = TopologyContext(
            vs,
            dataset,
            clients,
            model,
            defenses,
            wire,
            attacks,
            progress=progress,
            **tensors,
            **server,
        )
        topology = registry.topologies.get(vs.topology.name, "topology.name")(ctx)
        try:
            outcome: TrainingOutcome = topology.run()
        except Diverged as exc:
            return diverged_variant(
                exc.round,
                exc.loss,
                [r.to_json() for r in exc.history],
                [d.describe() for d in defenses.all()],
                [int(wire.bytes_by_round.get(r, 0)) for r in range(0, exc.round + 1)],
                time.perf_counter() - t0,
            )

        members = torch.as_tensor(np.concatenate([c.train_idx for c in clients]))
        _, train_loss = evaluate(outcome.model, tensors["x_train"], tensors["y_train"], members)
        attack_results = {}
        for done, attack in enumerate(attacks):
            if self.attack_progress is not None:
                self.attack_progress(variant.name, attack.id, done, len(attacks))
            targets = attack.target_parties()
            chosen = clients if targets is None else [clients[k] for k in targets]
            referee = build_challenge(
                dataset, chosen, vs.seed, every_client=clients, iid=vs.partition.scheme == "iid"
            )
            view = FinalView(
                query=make_query(outcome.model),
                challenge=referee.challenge,
                recipe=vs,
                model_factory=functools.partial(  # picklable: reference models fan out
                    build_model, vs.model, dataset.input_shape, dataset.num_classes
                ),
                side_information={
                    "mean_train_loss": train_loss,
                    "client_num_samples": {c.client_id: len(c.train_idx) for c in clients},
                    **public_side_information(dataset),
                },
                population=PopulationData(x=dataset.x_test, y=dataset.y_test),
                defenses=tuple(d.spec for d in defenses.all()),
            )
            output = attack.finalize(view)
            if isinstance(output, RefereeGraded):
                output = output.grade(RefereeTruth(outcome.truth, dataset.x_train, dataset.y_train))
            attack_results[attack.id] = grade(attack, output, referee)
            attack_results[attack.id]["metrics"].update(
                probe_metrics(attack, view.query, tensors["x_test"], tensors["y_test"])
            )
        if self.attack_progress is not None and attacks:
            self.attack_progress(variant.name, "", len(attacks), len(attacks))
        per_round = [r.to_json() for r in outcome.rounds]
        bytes_per_round = [
            int(wire.bytes_by_round.get(r, 0)) for r in range(0, vs.topology.rounds + 1)
        ]
        return {
            "status": "ok",
            "defenses": [d.describe() for d in defenses.all()],
            "utility": {
                "final_accuracy": per_round[-1]["accuracy"],
                "final_loss": per_round[-1]["loss"],
                "train_loss": round(train_loss, 6),
                "per_round": per_round,
                **fairness_metrics(outcome.model, dataset, clients, tensors),
            },
            "attacks": attack_results,
            "privacy": _round_privacy(outcome.privacy),
            "cost": {
                "bytes_per_round": bytes_per_round,
                "bytes_total": int(sum(bytes_per_round)),
                "seconds_per_round": [round(r.seconds, 4) for r in outcome.rounds],
                "seconds": round(time.perf_counter() - t0, 3),
                **outcome.cost,
                "network": network_cost(wire.traffic, vs.topology.rounds, vs.topology.network),
            },
            "notes": outcome.notes,
            **({"topology": outcome.extra} if outcome.extra else {}),
            **({"robustness": detection_metrics(outcome)} if outcome.selections else {}),
        }


def _round_privacy(privacy: dict[str, Any] | None) -> dict[str, Any] | None:
    if privacy is None:
        return None
    return {k: _clean(v) for k, v in privacy.items()}
