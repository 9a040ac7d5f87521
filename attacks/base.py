"""The attack contract: a declared threat model, exactly that adversary's view, a result.

An attack observes the wire through its threat model's visibility rule and, after training,
finalises from a `FinalView` holding only what its adversary holds. Membership attacks return
scores for a challenge set; the referee (privlab.runner), which alone knows who was a member,
turns them into metrics, so an attack cannot peek at the ground truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from privlab.scenario import ComponentSpec, validate_params
from privlab.wire import SERVER, Message

if TYPE_CHECKING:
    import torch

    from privlab.scenario import Scenario

Adversary = Literal["outsider", "server", "client", "peer", "cut_layer", "eavesdropper"]


class ThreatModel(BaseModel):
    """Who the adversary is and what it does: passive observers never change the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    adversary: Adversary
    party: str | None = None
    active: bool = False
    knowledge: tuple[str, ...] = ()
    """Side information the adversary is assumed to hold (stated in the report)."""

    def can_see(self, msg: Message) -> bool:
        if self.adversary == "eavesdropper":
            return True
        if self.adversary == "server":
            return SERVER in (msg.sender, msg.receiver)
        if self.adversary in ("client", "peer", "cut_layer") and self.party is not None:
            return self.party in (msg.sender, msg.receiver)
        return False  # an outsider sees nothing on the wire


@dataclass(frozen=True)
class MembershipChallenge:
    """Candidate records (half members, half not); the truth stays with the referee."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class PopulationData:
    """Labelled records from the data distribution that no party trains on."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class FinalView:
    """What an adversary holds after training.

    `query` returns class probabilities of the released model for a batch of inputs (black-box
    access). `model_factory` builds a fresh, untrained model of the public architecture, so an
    adversary that observed weights on the wire can load them. `recipe` is the public training
    recipe (the scenario as this variant ran it). `challenge` holds the candidate records of the
    parties the attack targets (`Attack.target_parties`).
    """

    query: Callable[[np.ndarray], np.ndarray]
    challenge: MembershipChallenge | None
    recipe: Scenario
    model_factory: Callable[[], torch.nn.Module]
    side_information: dict[str, Any] = field(default_factory=dict)
    population: PopulationData | None = None
    """Auxiliary records the adversary legitimately holds (same distribution, disjoint from
    every client's records and so from the challenge): reference (shadow) models train on it."""


@dataclass
class MembershipScores:
    """Higher score = more likely a member. `threshold` is the attack's own decision rule."""

    scores: np.ndarray
    threshold: float | None = None


@dataclass(frozen=True)
class TargetedProbe:
    """A test the referee runs for an attack on held-out records it never hands over: take the
    test records whose label is not `target` (only those of class `source`, if given), apply
    `stamp` (e.g. a backdoor trigger the attacker chose; None: unchanged) and report, as the
    attack's metric `metric`, the share the released model classifies as `target`."""

    metric: str
    target: int
    source: int | None = None
    stamp: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass
class AttackResult:
    metrics: dict[str, Any]
    artifacts: dict[str, Any] = field(default_factory=dict)
    ci_methods: dict[str, str] = field(default_factory=dict)
    """How each metric's `<m>_ci` was computed ({"psnr": "percentile bootstrap ..."})."""


@dataclass(frozen=True)
class RefereeTruth:
    """What the referee knows beyond membership: the topology's referee-only log (e.g. which
    records each split-learning batch held, keyed by round, client and step) and the data."""

    log: dict[str, Any]
    x_train: np.ndarray
    y_train: np.ndarray


class RefereeGraded:
    """An attack output the referee grades against truth the attack never saw (recovered
    labels, reconstructed inputs): `grade` turns it into an AttackResult."""

    def grade(self, truth: RefereeTruth) -> AttackResult:
        raise NotImplementedError


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Attack:
    """Base class: subclasses set `family`, `Params`, and `threat_model()`."""

    family: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    topologies: ClassVar[frozenset[str] | None] = None  # None: any topology

    def __init__(self, spec: ComponentSpec, field: str) -> None:
        self.spec = spec
        self.field = field
        self.params: Any = validate_params(self.Params, spec.params, f"{field}.params")

    @property
    def id(self) -> str:
        return self.spec.key

    def threat_model(self) -> ThreatModel:
        raise NotImplementedError

    def target_parties(self) -> list[int] | None:
        """Client ids whose records form the membership challenge (None: every client)."""
        return None

    def observe(self, msg: Message) -> None:
        """Called for each wire message the threat model can see (passive by default)."""

    # ----- active attacks (malicious clients); passive attacks leave these alone -----

    def controlled_clients(self, num_clients: int) -> list[int]:
        """Client ids this adversary controls (none for a passive attack)."""
        return []

    def poison_data(self, client_id: int, x: torch.Tensor, y: torch.Tensor) -> tuple:
        """Replace a controlled client's training data (data poisoning) before training."""
        return x, y

    def craft_updates(
        self,
        round_: int,
        malicious: dict[int, dict[str, torch.Tensor]],
        benign: dict[int, dict[str, torch.Tensor]],
        global_state: dict[str, torch.Tensor],
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Replace controlled clients' updates (model poisoning). `malicious` holds what the
        controlled clients computed honestly; `benign` holds the honest clients' updates of this
        round, which only an omniscient (colluding-with-everyone) adversary may read: an attack
        that uses it must declare so in its threat model's knowledge."""
        return malicious

    def aggregation_weights(self, round_: int, weights: dict[int, float]) -> None:
        """Called before `craft_updates` with the FedAvg weight (sample count) of every client
        whose update enters this round's aggregate; an attack that uses other clients'
        weights must declare so in its threat model's knowledge."""

    def begin_round(self, round_: int) -> None:
        """Called at the start of each training round, before local training (an attacker
        that controls clients may switch their data from this round on)."""

    def probes(self) -> list[TargetedProbe]:
        """Targeted tests (backdoor success, targeted misclassification) the referee grades
        on the test set after training."""
        return []

    def check_setting(
        self, scenario: Scenario, input_shape: tuple[int, ...], num_classes: int
    ) -> None:
        """Raise a one-line ScenarioError if the params do not fit this scenario (called
        before any training, with the variant's scenario)."""

    def finalize(self, view: FinalView) -> AttackResult | MembershipScores | RefereeGraded:
        raise NotImplementedError
