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


@dataclass
class MembershipScores:
    """Higher score = more likely a member. `threshold` is the attack's own decision rule."""

    scores: np.ndarray
    threshold: float | None = None


@dataclass
class AttackResult:
    metrics: dict[str, float | int]
    artifacts: dict[str, Any] = field(default_factory=dict)


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

    def finalize(self, view: FinalView) -> AttackResult | MembershipScores:
        raise NotImplementedError
