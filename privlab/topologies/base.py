"""The topology contract.

A topology receives a `TopologyContext` (data, partition, initial model, defenses, the wire, the
attacks that act through parties) and returns a `TrainingOutcome`: the released model, one
record per round, and privacy spent. Federated exchanges weights with a server; split learning
will exchange activations and gradients; swarm learning commits weights to a ledger. All of them
speak through `ctx.wire`, so attacks see what their threat model allows and bytes are counted.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from privlab.defenses.base import (
    AggregationDefense,
    ClientUpdateDefense,
    Defense,
    LocalTrainingDefense,
    Placement,
    TransportDefense,
)
from privlab.errors import Diverged, ScenarioError
from privlab.training import LocalTrainer, TrainSettings, evaluate, seeded_generator

if TYPE_CHECKING:
    from privlab.attacks.base import Attack
    from privlab.data import Dataset
    from privlab.engine.base import ClientShard, Engine
    from privlab.partition import ClientData
    from privlab.scenario import Scenario
    from privlab.wire import Wire

ProgressFn = Callable[[int, int, float], None]


@dataclass
class DefenseStack:
    """A variant's defenses grouped by placement, in the order a round applies them."""

    local_training: LocalTrainingDefense | None = None
    client_update: list[ClientUpdateDefense] = field(default_factory=list)
    transport: TransportDefense | None = None
    aggregation: AggregationDefense | None = None
    other: list[Defense] = field(default_factory=list)

    @classmethod
    def build(cls, defenses: list[Defense]) -> DefenseStack:
        stack = cls()
        single_slots = (
            (LocalTrainingDefense, "local_training", "local-training defense"),
            (TransportDefense, "transport", "transport defense"),
            (AggregationDefense, "aggregation", "aggregation rule"),
        )
        for d in defenses:
            if isinstance(d, ClientUpdateDefense):
                stack.client_update.append(d)
                continue
            slot = next(
                ((a, label) for kind, a, label in single_slots if isinstance(d, kind)), None
            )
            if slot is None:
                stack.other.append(d)
                continue
            attr, label = slot
            taken = getattr(stack, attr)
            if taken is not None:
                raise ScenarioError(
                    f"{d.field}.name: only one {label} per variant "
                    f"('{taken.spec.name}' is already set)"
                )
            setattr(stack, attr, d)
        agg, transport = stack.aggregation, stack.transport
        if agg is not None and transport is not None:
            # The server only ever holds the transport's combined aggregate, so no server-side
            # rule can run on single updates: refuse rather than silently skip it.
            raise ScenarioError(
                f"{agg.field}.name: '{agg.spec.name}' must inspect each client's update, but "
                f"'{transport.spec.name}' hides single updates from the server; use one of "
                "them, or clip on the clients before encryption ('update_clipping')"
            )
        return stack

    def all(self) -> list[Defense]:
        out: list[Defense] = []
        if self.local_training:
            out.append(self.local_training)
        out += self.client_update
        if self.transport:
            out.append(self.transport)
        if self.aggregation:
            out.append(self.aggregation)
        return out + self.other


@dataclass(frozen=True)
class DefenseTrainers:
    """Per-client trainers of a local-training defense (DP-SGD), each on its own model copy."""

    defense: LocalTrainingDefense
    model: torch.nn.Module
    settings: TrainSettings
    planned_epochs: int

    def __call__(self, s: ClientShard) -> LocalTrainer:
        import copy

        model = copy.deepcopy(self.model)
        return self.defense.make_trainer(
            model, s.x, s.y, self.settings, s.generator, planned_epochs=self.planned_epochs
        )


@dataclass(frozen=True)
class DefenseEngine:
    """The engine a local-training defense offers for all its clients at once (DP-SGD's
    vectorised engine), else `fallback`: one trainer per client on the sequential engine."""

    defense: LocalTrainingDefense
    model: torch.nn.Module
    settings: TrainSettings
    planned_epochs: int
    fallback: Callable[[list[ClientShard]], Engine]

    def __call__(self, shards: list[ClientShard]) -> Engine:
        engine = self.defense.make_engine(
            shards, self.model, self.settings, planned_epochs=self.planned_epochs
        )
        return self.fallback(shards) if engine is None else engine


@dataclass
class RoundRecord:
    round: int
    accuracy: float
    loss: float
    bytes: int
    seconds: float
    participants: int
    epsilon: float | None = None
    critical_path_seconds: float | None = None
    """Simulated round time (slowest client's train + protect + transfer, then the server),
    measured apart from the simulation's own wall time `seconds`."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "round": self.round,
            "accuracy": round(self.accuracy, 6),
            "loss": round(self.loss, 6),
            "participants": self.participants,
        }
        if self.epsilon is not None:
            out["epsilon"] = round(self.epsilon, 6)
        return out


@dataclass
class TrainingOutcome:
    model: torch.nn.Module
    rounds: list[RoundRecord]
    privacy: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)
    """Referee-only log (never shown to attacks): e.g. which records each batch held."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Topology-specific results (ledger checks, baselines), saved under the variant's
    `topology` key of results.json."""
    selections: list[dict[str, Any]] = field(default_factory=list)
    """Per round, the clients a selecting aggregator kept: {round, participants, selected}."""
    malicious: list[int] = field(default_factory=list)
    """Client ids controlled by attacks (referee-only truth for detection metrics)."""
    cost: dict[str, Any] = field(default_factory=dict)
    """Extra keys for the variant's `cost` (the engine that trained the clients, ...)."""


@dataclass
class TopologyContext:
    scenario: Scenario
    dataset: Dataset
    clients: list[ClientData]
    model: torch.nn.Module
    defenses: DefenseStack
    wire: Wire
    attacks: list[Attack]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    progress: ProgressFn | None = None
    server_x: torch.Tensor | None = None
    server_y: torch.Tensor | None = None
    """Clean records the server holds itself (FLTrust's root set), kept out of evaluation."""


class Topology(ABC):
    """Base class: owns the training loop of one variant."""

    placements: ClassVar[frozenset[Placement]] = frozenset({Placement.LOCAL_TRAINING})
    """Where this protocol applies defenses; a defense placed elsewhere would silently do
    nothing here, so the runner refuses it before any variant trains."""

    @classmethod
    def check_defenses(cls, defenses: DefenseStack, topology: str) -> None:
        """Raise a one-line ScenarioError for a defense this topology cannot apply."""
        allowed = ", ".join(sorted(str(p) for p in cls.placements))
        for d in defenses.all():
            if d.placement not in cls.placements:
                raise ScenarioError(
                    f"{d.field}.name: '{d.spec.name}' ({d.placement}) does not apply to "
                    f"topology '{topology}' (it applies defenses at: {allowed})"
                )

    def __init__(self, ctx: TopologyContext) -> None:
        self.ctx = ctx
        self.spec = ctx.scenario.topology
        self.settings = TrainSettings.from_topology(self.spec)
        self.seed = ctx.scenario.seed
        self._clock = time.perf_counter()
        self.history: list[RoundRecord] = []

    @abstractmethod
    def run(self) -> TrainingOutcome: ...

    def make_trainer(self, party: int, x: torch.Tensor, y: torch.Tensor) -> LocalTrainer:
        """A trainer for one party: plain SGD, or the local-training defense's (DP-SGD)."""
        import copy

        model = copy.deepcopy(self.ctx.model)
        gen = seeded_generator(self.seed, party, 7)
        defense = self.ctx.defenses.local_training
        if defense is None:
            return LocalTrainer(model, x, y, self.settings, gen)
        planned = self.spec.rounds * self.spec.local_epochs
        return defense.make_trainer(model, x, y, self.settings, gen, planned_epochs=planned)

    def make_engine(self, shards: list[ClientShard]) -> Engine:
        """The engine `engine_builder` builds; its clients as Ray tasks with `client_tasks`."""
        scenario = self.ctx.scenario
        if scenario.client_tasks:
            from privlab.engine.ray_clients import RayClientEngine

            return RayClientEngine(
                shards, self.engine_builder(), scenario.client_tasks, scenario.ray_address
            )
        return self.engine_builder()(shards)

    def engine_builder(self) -> Callable[[list[ClientShard]], Engine]:
        """Vectorised where the model allows (under a local-training defense: the engine the
        defense offers, e.g. DP-SGD's); else the sequential reference (forced by the scenario's
        `engine`). A plain picklable callable, so Ray tasks can build the same engine."""
        import functools

        from privlab.engine.sequential import SequentialEngine
        from privlab.engine.vectorised import VectorisedEngine

        ctx = self.ctx
        defense = ctx.defenses.local_training
        if defense is not None:
            planned = self.spec.rounds * self.spec.local_epochs
            factory = DefenseTrainers(defense, ctx.model, self.settings, planned)
            trainers = functools.partial(
                SequentialEngine, model=ctx.model, settings=self.settings, trainer_factory=factory
            )
            if ctx.scenario.engine == "auto":
                return DefenseEngine(defense, ctx.model, self.settings, planned, trainers)
            return trainers
        if ctx.scenario.engine == "auto" and VectorisedEngine.supports(ctx.model):
            return functools.partial(VectorisedEngine, model=ctx.model, settings=self.settings)
        return functools.partial(SequentialEngine, model=ctx.model, settings=self.settings)

    def record(self, round_: int, model: torch.nn.Module, participants: int) -> RoundRecord:
        acc, loss = evaluate(model, self.ctx.x_test, self.ctx.y_test)
        now = time.perf_counter()
        rec = RoundRecord(
            round_,
            acc,
            loss,
            self.ctx.wire.bytes_by_round.get(round_, 0),
            now - self._clock,
            participants,
        )
        self._clock = now
        self.history.append(rec)
        if not math.isfinite(loss):  # the runner marks the variant diverged, runs the others
            raise Diverged(round_, loss, list(self.history))
        if self.ctx.progress:
            self.ctx.progress(round_, self.spec.rounds, acc)
        return rec

    @staticmethod
    def worst_case_privacy(per_party: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
        """The largest epsilon across parties, with each party's epsilon listed."""
        spent = {k: v for k, v in per_party.items() if v is not None}
        if not spent:
            return None
        worst = max(spent.values(), key=lambda v: v["epsilon"])
        return {**worst, "per_client": {k: round(v["epsilon"], 6) for k, v in spent.items()}}
