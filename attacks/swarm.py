"""Attacks on swarm learning: curious and rogue peers, intruders, and ledger tampering.

- `peer_membership`: a curious enrolled peer reads another peer's committed weights from the
  ledger (peers see individual weights, unlike a server behind secure aggregation) and runs the
  loss-threshold membership test (Yeom et al. 2018) on that peer's records. Setting: the
  victim's last commit, before merging. Qualitative result: an individual commit leaks more
  membership than the merged model an outsider can query.
- `rogue_peer`: an enrolled peer poisons: it trains on flipped labels and boosts its commit
  (model poisoning, Bhagoji et al. 2019 style scaling). A robust merge (median) resists.
The attacks on the ledger itself (outsiders, forging, replaying and re-signing insiders,
tampering) live in `privlab.attacks.swarm_ledger`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from privlab.attacks.base import Attack, AttackResult, FinalView, MembershipScores, ThreatModel
from privlab.attacks.membership import cross_entropy_per_example
from privlab.errors import ScenarioError
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


__all__ = ["PeerMembershipAttack", "RoguePeerAttack"]
