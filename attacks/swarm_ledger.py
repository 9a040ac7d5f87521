"""Attacks on the swarm's permissioned ledger: outsiders, insiders that forge, replay or re-sign.

Each acts through a `privlab.ledger_view.LedgerView`: it reads entries and submits entries
signed with the keys it holds (a peer adversary: its own enrolled key; an outsider: a key of its
own making); it can overwrite storage only with declared write access to a replica. The ledger's
answer is the result: `accepted` counts entries it took, and an accepted forgery is merged like
any commit, so a broken ledger shows in the model too.

- `unenrolled_commit`: an outsider with a key of its own (optionally claiming an enrolled
  peer's name) commits; the weakest adversary, so "refused" here is a best case.
- `insider_forgery`: the strongest submitting insider the threat model allows, an enrolled peer
  that also holds the scenario file. Modes: `scenario_key` signs as the victim with a key
  derived from the scenario seed (how privlab derived keys before keys came from the operating
  system: what a reader of the scenario would try); `replay` resubmits the victim's last signed
  commit, verbatim and re-chained onto the head under its old signature; `own_key_as_victim`
  signs with its own valid key an entry naming the victim as author.
- `ledger_tamper`: an insider with write access to a replica alters an entry's weights; with
  `resign` it also fixes the digest and hash, re-chains every later entry and re-signs them with
  its own key or with scenario-derived keys. Verification must name the first entry it can no
  longer vouch for, and the swarm's leader then refuses to merge.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, ClassVar, Literal

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field

from privlab.attacks.base import Attack, AttackResult, FinalView, ThreatModel
from privlab.errors import ScenarioError
from privlab.ledger import Entry, LedgerError, PeerIdentity, new_key, sign_entry, weights_digest
from privlab.ledger_view import LedgerView

Mode = Literal["scenario_key", "replay", "own_key_as_victim"]
MODES: tuple[Mode, ...] = ("scenario_key", "replay", "own_key_as_victim")


def scenario_derived_key(seed: int, name: str) -> Ed25519PrivateKey:
    """The key a reader of the scenario file computes for `name` (privlab's former scheme)."""
    secret = hashlib.sha256(f"privlab-ledger|{seed}|{name}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(secret)


def _check_peer(scenario: Any, field: str, k: int) -> None:
    n = scenario.partition.num_clients
    if k >= n:
        raise ScenarioError(f"{field}: peer {k} does not exist (peers 0..{n - 1})")


def _poisoned(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: -5.0 * v if v.is_floating_point() else v for k, v in weights.items()}


class _Tally:
    """Submission bookkeeping shared by the submitting attacks."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.accepted: dict[str, int] = {}
        self.reasons: list[str] = []

    def submit(self, view: LedgerView, label: str, entry: Entry) -> None:
        self.attempts[label] = self.attempts.get(label, 0) + 1
        try:
            view.submit(entry)
            self.accepted[label] = self.accepted.get(label, 0) + 1
        except LedgerError as exc:
            self.reasons.append(f"{label}: {exc}")

    def metrics(self, labels: tuple[str, ...] = ()) -> dict[str, int]:
        tried, took = sum(self.attempts.values()), sum(self.accepted.values())
        out = {"attempts": tried, "accepted": took, "rejected": tried - took}
        for label in labels:
            out[f"{label}_attempts"] = self.attempts.get(label, 0)
            out[f"{label}_accepted"] = self.accepted.get(label, 0)
        return out


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
        self.tally = _Tally()

    def threat_model(self) -> ThreatModel:
        return ThreatModel(adversary="outsider", active=True, knowledge=("ledger endpoint",))

    def check_setting(self, scenario, input_shape, num_classes) -> None:  # type: ignore[no-untyped-def]
        if self.params.impersonate is not None:
            _check_peer(scenario, f"{self.field}.params.impersonate", self.params.impersonate)

    def act_on_ledger(self, round_: int, view: LedgerView) -> None:
        if round_ not in self.params.rounds:
            return
        name = "intruder" if self.params.impersonate is None else f"peer{self.params.impersonate}"
        me = PeerIdentity(name, new_key(), None)
        template = view.latest("merge") or view.latest("commit")
        weights = {k: torch.zeros_like(v) for k, v in template.weights.items()} if template else {}
        entry = sign_entry(view.draft(name, round_, "commit", weights, {"num_samples": 1}), me)
        self.tally.submit(view, "outsider", entry)

    def finalize(self, view: FinalView) -> AttackResult:
        return AttackResult(self.tally.metrics(), {"reasons": self.tally.reasons})


class InsiderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attacker: int = Field(default=0, ge=0)
    victim: int = Field(default=1, ge=0)
    rounds: list[int] = Field(default_factory=lambda: [2], min_length=1)
    """Rounds at whose start the insider submits (the victim must have committed before)."""
    modes: list[Mode] = Field(default_factory=lambda: list(MODES), min_length=1)


class InsiderForgeryAttack(Attack):
    """An enrolled peer holding the scenario file forges, replays or misattributes commits."""

    family = "ledger_integrity"
    Params = InsiderParams
    topologies = frozenset({"swarm"})

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        if self.params.attacker == self.params.victim:
            raise ScenarioError(f"{field}.params.victim: must differ from the attacker peer")
        self.tally = _Tally()
        self.seed: int | None = None
        self.skipped: list[str] = []

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="peer",
            party=f"peer{self.params.attacker}",
            active=True,
            knowledge=("the scenario file, seed included", "every ledger entry", "its own key"),
        )

    def check_setting(self, scenario, input_shape, num_classes) -> None:  # type: ignore[no-untyped-def]
        _check_peer(scenario, f"{self.field}.params.attacker", self.params.attacker)
        _check_peer(scenario, f"{self.field}.params.victim", self.params.victim)
        if min(self.params.rounds) < 2:
            raise ScenarioError(
                f"{self.field}.params.rounds: from round 2 on (the victim commits in round 1)"
            )
        self.seed = scenario.seed  # the attacker read the scenario file

    def act_on_ledger(self, round_: int, view: LedgerView) -> None:
        if round_ not in self.params.rounds:
            return
        victim = f"peer{self.params.victim}"
        old = view.latest("commit", author=victim)
        if old is None:
            self.skipped.append(f"round {round_}: {victim} has no commit to forge from")
            return
        weights, meta = _poisoned(old.weights), {"num_samples": 10**6}
        for mode in self.params.modes:
            if mode == "scenario_key":
                assert self.seed is not None
                draft = view.draft(victim, round_, "commit", weights, meta)
                key = scenario_derived_key(self.seed, victim)
                self.tally.submit(view, mode, sign_entry(draft, key))
            elif mode == "replay":
                self.tally.submit(view, mode, old)  # verbatim: old index and link
                moved = dataclasses.replace(
                    old, index=len(view), prev_hash=view.head_hash, round=round_
                )
                self.tally.submit(view, mode, dataclasses.replace(moved, hash=moved.compute_hash()))
            else:
                assert view.identity is not None
                draft = view.draft(victim, round_, "commit", weights, meta)
                self.tally.submit(view, mode, sign_entry(draft, view.identity))

    def finalize(self, view: FinalView) -> AttackResult:
        return AttackResult(
            self.tally.metrics(tuple(self.params.modes)),
            {"reasons": self.tally.reasons, "skipped": self.skipped},
        )


class TamperParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entry: int = Field(default=1, ge=0)
    """Index of the ledger entry to alter."""
    at_round: int = Field(default=2, ge=2)
    """Round at whose start the alteration happens (entries exist from round 2 on)."""
    attacker: int = Field(default=0, ge=0)
    resign: Literal["none", "own_key", "scenario_key"] = "none"
    """none: only the weights change; own_key / scenario_key: digest and hash are recomputed,
    every later entry is re-chained, and all are re-signed with that key."""


class LedgerTamperAttack(Attack):
    """After-the-fact alteration of a ledger entry by an insider with storage access."""

    family = "ledger_integrity"
    Params = TamperParams
    topologies = frozenset({"swarm"})
    ledger_storage_write: ClassVar[bool] = True

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        self.tampered: int | None = None
        self.resigned = 0
        self.view: LedgerView | None = None
        self.seed: int | None = None
        self.skipped = ""

    def threat_model(self) -> ThreatModel:
        knowledge = ["write access to a ledger replica"]
        if self.params.resign == "scenario_key":
            knowledge.append("the scenario file, seed included")
        return ThreatModel(
            adversary="peer",
            party=f"peer{self.params.attacker}",
            active=True,
            knowledge=tuple(knowledge),
        )

    def check_setting(self, scenario, input_shape, num_classes) -> None:  # type: ignore[no-untyped-def]
        """Refuse an alteration that can never happen: after the last round, or of an entry
        index beyond the most the ledger can hold then (each earlier round adds at most one
        commit per peer and one merge)."""
        _check_peer(scenario, f"{self.field}.params.attacker", self.params.attacker)
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
            )
        self.seed = scenario.seed

    def act_on_ledger(self, round_: int, view: LedgerView) -> None:
        self.view = view
        p = self.params
        if round_ != p.at_round:
            return
        if p.entry >= len(view):
            self.skipped = f"entry {p.entry} did not exist at round {round_} ({len(view)} entries)"
            return
        old = view.entry(p.entry)
        altered = dataclasses.replace(old, weights={k: v + 0.5 for k, v in old.weights.items()})
        self.tampered = p.entry
        if p.resign == "none":
            view.overwrite(p.entry, altered)
            return
        entry = dataclasses.replace(altered, digest=weights_digest(altered.weights))
        prev = old.prev_hash
        for i in range(p.entry, len(view)):
            entry = dataclasses.replace(entry if i == p.entry else view.entry(i), prev_hash=prev)
            key = (
                view.identity
                if p.resign == "own_key"
                else scenario_derived_key(self.seed or 0, entry.author)
            )
            assert key is not None
            entry = sign_entry(entry, key)
            view.overwrite(i, entry)
            prev = entry.hash
            self.resigned += 1

    def finalize(self, view: FinalView) -> AttackResult:
        if self.view is None or self.tampered is None:
            return AttackResult({"tampered": 0}, {"skipped": self.skipped})
        check = self.view.verify()
        return AttackResult(
            {
                "tampered": 1,
                "tampered_entry": self.tampered,
                "resigned_entries": self.resigned,
                "detected": int(not check.ok),
                "detected_entry": -1 if check.bad_index is None else check.bad_index,
            },
            {"verification": check.message},
        )
