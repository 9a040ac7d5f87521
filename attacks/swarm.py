"""Attacks on swarm learning: curious and rogue peers, intruders, and ledger tampering.

- `peer_membership`: a curious enrolled peer reads another peer's committed weights from the
  ledger (peers see individual weights, unlike a server behind secure aggregation) and runs the
  loss-threshold membership test (Yeom et al. 2018) on that peer's records. Setting: the
  victim's last commit, before merging. Qualitative result: an individual commit leaks more
  membership than the merged model an outsider can query.
- `rogue_peer`: an enrolled peer poisons: it trains on flipped labels and boosts its commit
  (model poisoning, Bhagoji et al. 2019 style scaling). A robust merge (median) resists.
- `unenrolled_commit`: a node that the authority never enrolled signs and submits commits; the
  ledger must refuse every one.
- `ledger_tamper`: an insider with write access to a peer's ledger storage alters an entry after
  the fact (it replaces the committed weights); ledger verification must detect it and name the
  entry. The swarm's leader then refuses to merge from the altered ledger.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from privlab.attacks.base import Attack, AttackResult, FinalView, MembershipScores, ThreatModel
from privlab.attacks.membership import cross_entropy_per_example
from privlab.errors import ScenarioError
from privlab.ledger import Authority, Ledger, LedgerError, PeerIdentity, derive_key
from privlab.wire import Message


class PeerMembershipParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attacker: int = Field(default=0, ge=0)
    victim: int = Field(default=1, ge=0)


class PeerMembershipAttack(Attack):
    """A curious peer's membership inference on another peer's committed weights."""

    family = "membership"
    Params = PeerMembershipParams
    topologies = frozenset({"swarm"})

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        if self.params.attacker == self.params.victim:
            raise ScenarioError(f"{field}.params.victim: must differ from the attacker peer")
        self.weights: dict[str, torch.Tensor] | None = None

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="peer",
            party=f"peer{self.params.attacker}",
            knowledge=("victim's committed weights on the ledger", "mean_train_loss"),
        )

    def target_parties(self) -> list[int]:
        return [self.params.victim]

    def check_setting(self, scenario, input_shape, num_classes) -> None:  # type: ignore[no-untyped-def]
        n = scenario.partition.num_clients
        if self.params.attacker >= n:
            raise ScenarioError(
                f"{self.field}.params.attacker: peer {self.params.attacker} does not exist "
                f"(peers 0..{n - 1})"
            )

    def observe(self, msg: Message) -> None:
        payload = msg.payload
        if (
            msg.kind == "ledger_entry"
            and getattr(payload, "kind", None) == "commit"
            and getattr(payload, "author", None) == self.params.victim
        ):
            self.weights = {k: v.clone() for k, v in msg.payload.items()}

    def finalize(self, view: FinalView) -> MembershipScores:
        assert view.challenge is not None
        if self.weights is None:
            from privlab.errors import PrivlabError

            raise PrivlabError(f"{self.field}: peer{self.params.victim} never committed weights")
        model = view.model_factory()
        model.load_state_dict(self.weights)
        model.eval()
        with torch.no_grad():
            probs = torch.softmax(model(torch.as_tensor(view.challenge.x)), 1).double().numpy()
        losses = cross_entropy_per_example(probs, view.challenge.y)
        return MembershipScores(scores=-losses)


class RoguePeerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    peers: list[int] = Field(default_factory=lambda: [0], min_length=1)
    mode: Literal["label_flip", "boosted_flip"] = "boosted_flip"
    boost: float = Field(default=5.0, gt=0)


class RoguePeerAttack(Attack):
    """An enrolled peer that poisons: flipped labels, optionally a boosted commit."""

    family = "poisoning"
    Params = RoguePeerParams
    topologies = frozenset({"swarm"})

    def threat_model(self) -> ThreatModel:
        return ThreatModel(adversary="peer", party=f"peer{self.params.peers[0]}", active=True)

    def controlled_clients(self, num_clients: int) -> list[int]:
        return [k for k in self.params.peers if k < num_clients]

    def check_setting(self, scenario, input_shape, num_classes) -> None:  # type: ignore[no-untyped-def]
        n = scenario.partition.num_clients
        bad = [k for k in self.params.peers if k >= n]
        if bad or len(set(self.params.peers)) >= n:
            raise ScenarioError(
                f"{self.field}.params.peers: must be distinct peers among 0..{n - 1}, "
                f"fewer than all of them (got {self.params.peers})"
            )

    def poison_data(self, client_id: int, x: torch.Tensor, y: torch.Tensor) -> tuple:
        num_classes = int(y.max().item()) + 1 if len(y) else 1
        return x, (num_classes - 1 - y) if num_classes > 1 else y

    def craft_updates(self, round_, malicious, benign, global_state):  # type: ignore[no-untyped-def]
        if self.params.mode == "label_flip":
            return malicious
        b = self.params.boost
        return {k: {n: b * v for n, v in u.items()} for k, u in malicious.items()}

    def finalize(self, view: FinalView) -> AttackResult:
        if view.population is None:
            return AttackResult({})
        probs = view.query(view.population.x)
        acc = float(np.mean(probs.argmax(1) == view.population.y))
        return AttackResult({"released_accuracy": acc, "rogue_peers": len(self.params.peers)})


class UnenrolledParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    impersonate: int | None = None
    """None: commit under the intruder's own name; a peer id: claim to be that peer."""
    rounds: list[int] = Field(default_factory=lambda: [1])


class UnenrolledCommitAttack(Attack):
    """A node without enrolment tries to commit (poisoned) weights to the ledger."""

    family = "ledger_integrity"
    Params = UnenrolledParams
    topologies = frozenset({"swarm"})

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        self.attempts = 0
        self.accepted = 0
        self.reasons: list[str] = []

    def threat_model(self) -> ThreatModel:
        return ThreatModel(adversary="outsider", active=True, knowledge=("ledger endpoint",))

    def act_on_ledger(self, round_: int, ledger: Ledger) -> None:
        if round_ not in self.params.rounds:
            return
        name = "intruder" if self.params.impersonate is None else f"peer{self.params.impersonate}"
        me = PeerIdentity(name, derive_key(round_ + 10_000, "intruder"), None)
        template = ledger.latest("merge") or ledger.latest("commit")
        weights = {k: torch.zeros_like(v) for k, v in template.weights.items()} if template else {}
        self.attempts += 1
        try:
            ledger.append(ledger.make_entry(me, round_, "commit", weights, {"num_samples": 1}))
            self.accepted += 1
        except LedgerError as exc:
            self.reasons.append(str(exc))

    def finalize(self, view: FinalView) -> AttackResult:
        return AttackResult(
            {
                "attempts": self.attempts,
                "accepted": self.accepted,
                "rejected": self.attempts - self.accepted,
            },
            {"reasons": self.reasons},
        )


class TamperParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entry: int = Field(default=1, ge=0)
    """Index of the ledger entry to alter."""
    at_round: int = Field(default=2, ge=1)
    """Round at whose start the alteration happens."""


class LedgerTamperAttack(Attack):
    """After-the-fact alteration of a ledger entry's weights by an insider with storage access."""

    family = "ledger_integrity"
    Params = TamperParams
    topologies = frozenset({"swarm"})

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        self.tampered: int | None = None
        self.ledger: Ledger | None = None

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="peer",
            party="peer0",
            active=True,
            knowledge=("write access to a ledger replica",),
        )

    def check_setting(self, scenario, input_shape, num_classes) -> None:  # type: ignore[no-untyped-def]
        """Refuse an alteration that can never happen: after the last round, or of an entry
        index beyond the most the ledger can hold then (each earlier round adds at most one
        commit per peer and one merge)."""
        p, rounds = self.params, scenario.topology.rounds
        if p.at_round > rounds:
            raise ScenarioError(
                f"{self.field}.params.at_round: round {p.at_round} never comes "
                f"(topology.rounds = {rounds})"
            )
        most = (p.at_round - 1) * (scenario.partition.num_clients + 1)
        if p.entry >= most:
            raise ScenarioError(
                f"{self.field}.params.entry: entry {p.entry} cannot exist when round "
                f"{p.at_round} starts (the ledger then holds at most {most} entries, "
                f"indices 0..{most - 1})"
                if most
                else f"{self.field}.params.at_round: the ledger is empty when round 1 starts; "
                "use at_round >= 2"
            )

    def act_on_ledger(self, round_: int, ledger: Ledger) -> None:
        self.ledger = ledger
        if round_ != self.params.at_round or self.params.entry >= len(ledger.storage):
            return
        old = ledger.storage[self.params.entry]
        altered = {k: v + 0.5 for k, v in old.weights.items()}
        ledger.storage[self.params.entry] = dataclasses.replace(old, weights=altered)
        self.tampered = self.params.entry

    def finalize(self, view: FinalView) -> AttackResult:
        if self.ledger is None or self.tampered is None:
            return AttackResult({"tampered": 0})
        check = self.ledger.verify()
        return AttackResult(
            {
                "tampered": 1,
                "tampered_entry": self.tampered,
                "detected": int(not check.ok),
                "detected_entry": -1 if check.bad_index is None else check.bad_index,
            },
            {"verification": check.message},
        )


__all__ = [
    "Authority",
    "LedgerTamperAttack",
    "PeerMembershipAttack",
    "RoguePeerAttack",
    "UnenrolledCommitAttack",
]
