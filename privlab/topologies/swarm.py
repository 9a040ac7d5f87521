"""Swarm learning (Warnat-Herresthal et al. 2021, Nature): peers, a permissioned ledger, no
aggregator.

Every round (one sync interval = `local_epochs` of local training) each live peer trains on its
own records and commits its weights to the ledger (`privlab.ledger`: signed, hash-chained,
enrolment checked); the ledger copy of every other live peer receives the entry over the wire,
so peers see each other's individual weights. A leader chosen deterministically from the ledger
state (hash of the head and the round) merges the round's commits (sample-weighted mean, or a
robust merge: coordinate-wise median or trimmed mean, or the variant's aggregation defense) and
commits the merged model, which every peer then loads. Before merging, the leader verifies the
whole ledger and refuses to merge from a ledger that fails verification; such a round is
recorded with 0 participants (nothing was merged) and counted in `refused_merges`.
Every ledger read a peer acts on verifies the chain up to that entry: peers load the merged
model through `Ledger.latest_verified`, and a rejoining peer syncs the newest merged model
inside the verified prefix (never an entry at or after a tampered one).
Attacks that act on the ledger get a `LedgerView` (read, submit entries signed with the keys
they hold: a peer adversary holds its own peer's key; write access to the storage only when the
attack declares `ledger_storage_write`), never the ledger or the authority.
Faults: a peer may crash and rejoin (it then syncs the latest merged model from the ledger); a
round with fewer live peers than `min_peers` pauses (no training, no merge) with a clear note.
`local_only = true` trains every peer alone (no commits): the local-only baseline, whose
accuracy is the mean over peers of each peer's own model, and `per_peer_accuracy` (under
`topology`) holds each peer's own model's test accuracy (each clinic alone).
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from privlab.defenses.base import Placement
from privlab.errors import ScenarioError
from privlab.ledger import Authority, Ledger, LedgerError, PeerIdentity
from privlab.ledger_view import LedgerView
from privlab.scenario import validate_params
from privlab.topologies.base import (
    DefenseStack,
    RoundRecord,
    Topology,
    TopologyContext,
    TrainingOutcome,
)
from privlab.training import LocalTrainer, State, evaluate
from privlab.wire import Message

LEDGER = "ledger"


def peer(k: int) -> str:
    return f"peer{k}"


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid")
    peer: int = Field(ge=0)
    crash_round: int = Field(ge=1)
    rejoin_round: int | None = Field(default=None, ge=2)
    """None: the peer never comes back."""


class SwarmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_peers: int = Field(default=2, ge=1)
    merge: Literal["mean", "median", "trimmed_mean"] = "mean"
    trim_fraction: float = Field(default=0.2, ge=0, lt=0.5)
    faults: list[Fault] = Field(default_factory=list)
    local_only: bool = False


def coordinate_median(stack: list[State]) -> State:
    return {k: torch.stack([s[k] for s in stack]).median(dim=0).values for k in stack[0]}


def trimmed_mean(stack: list[State], fraction: float) -> State:
    """Coordinate-wise mean after dropping the `fraction` largest and smallest values."""
    n = len(stack)
    cut = int(fraction * n)
    out = {}
    for k in stack[0]:
        values = torch.stack([s[k] for s in stack]).sort(dim=0).values
        out[k] = values[cut : n - cut].mean(dim=0)
    return out


def weighted_mean(stack: list[State], weights: list[float]) -> State:
    total = float(sum(weights))
    return {
        k: sum((w / total) * s[k] for s, w in zip(stack, weights, strict=True)) for k in stack[0]
    }


class SwarmTopology(Topology):
    """Swarm learning: local training, signed commits to a permissioned ledger, a leader merge."""

    placements = frozenset({Placement.LOCAL_TRAINING, Placement.AGGREGATION})
    """An aggregation rule is the leader's merge; there is no transport: peers read each
    other's weights from the ledger."""

    @classmethod
    def check_defenses(cls, defenses: DefenseStack, topology: str) -> None:
        super().check_defenses(defenses, topology)
        agg = defenses.aggregation
        if agg is not None and agg.root_size > 0:
            raise ScenarioError(
                f"{agg.field}.name: '{agg.spec.name}' needs a server holding root data; "
                "swarm learning has no server"
            )

    @staticmethod
    def check_setting(
        scenario: Any, input_shape: tuple[int, ...], num_classes: int, num_clients: int
    ) -> SwarmParams:
        """Validate topology.params against the number of peers before any training."""
        p: SwarmParams = validate_params(  # type: ignore[assignment]
            SwarmParams, scenario.topology.params, "topology.params"
        )
        n = num_clients
        for i, f in enumerate(p.faults):
            if f.peer >= n:
                raise ScenarioError(
                    f"topology.params.faults.{i}.peer: peer {f.peer} does not exist "
                    f"(peers 0..{n - 1})"
                )
            if f.rejoin_round is not None and f.rejoin_round <= f.crash_round:
                raise ScenarioError(
                    f"topology.params.faults.{i}.rejoin_round: must be after crash_round "
                    f"{f.crash_round} (got {f.rejoin_round})"
                )
        if p.min_peers > n:
            raise ScenarioError(f"topology.params.min_peers: {p.min_peers} but only {n} peers")
        return p

    def __init__(self, ctx: TopologyContext) -> None:
        super().__init__(ctx)
        self.params = self.check_setting(ctx.scenario, (), 0, len(ctx.clients))

    def live(self, k: int, r: int) -> bool:
        for f in self.params.faults:
            if (
                f.peer == k
                and r >= f.crash_round
                and (f.rejoin_round is None or r < f.rejoin_round)
            ):
                return False
        return True

    def run(self) -> TrainingOutcome:
        ctx, spec, p = self.ctx, self.spec, self.params
        n = len(ctx.clients)
        self.owner = {}
        for attack in ctx.attacks:
            for k in attack.controlled_clients(n):
                self.owner.setdefault(k, attack)
        trainers = [self._trainer(c.client_id, c.train_idx) for c in ctx.clients]
        self.authority = Authority()
        self.identities: list[PeerIdentity] = [self.authority.enrol(peer(k)) for k in range(n)]
        self.ledger = Ledger(self.authority)
        views = self._views()
        refused = paused = 0
        model = copy.deepcopy(ctx.model)
        state: State = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.initial_state = {k: v.clone() for k, v in state.items()}
        local: list[State] = [state for _ in range(n)]
        records: list[RoundRecord] = []
        notes: list[str] = []
        was_live = [True] * n
        for r in range(1, spec.rounds + 1):
            live = [k for k in range(n) if self.live(k, r)]
            for k in range(n):
                if self.live(k, r) and not was_live[k]:
                    local[k] = self._rejoin(r, k, state, notes)
                elif not self.live(k, r) and was_live[k]:
                    notes.append(f"round {r}: peer{k} crashed")
                was_live[k] = self.live(k, r)
            for act, view in views:
                act(r, view)
            if p.local_only:
                for k in live:
                    trainers[k].train(local[k])
                    local[k] = trainers[k].state()
                records.append(self._record_local(r, trainers, live))
                continue
            if len(live) < p.min_peers:
                notes.append(
                    f"round {r}: swarm paused: {len(live)} live peer(s) < min_peers {p.min_peers}"
                )
                model.load_state_dict(state)
                records.append(self.record(r, model, participants=0))
                paused += 1
                continue
            commits = self._train_and_commit(r, live, trainers, local, state)
            state, merged = self._merge(r, live, commits, trainers, state, notes)
            refused += merged == 0
            for k in live:
                local[k] = state
            model.load_state_dict(state)
            records.append(self.record(r, model, participants=merged))
        check = self.ledger.verify()
        notes.append(f"ledger: {check.entries} entries; {check.message}")
        notes += self.ledger.rejected
        privacy = self.worst_case_privacy(
            {str(c.client_id): t.privacy() for c, t in zip(ctx.clients, trainers, strict=True)}
        )
        if p.local_only:
            notes.append("local-only baseline: accuracy is the mean of each peer's own model")
            model = trainers[0].model
        extra: dict[str, Any] = {
            "ledger": {
                "entries": check.entries,
                "verified": check.ok,
                "bad_entry": check.bad_index,
                "message": check.message,
                "rejected_commits": len(self.ledger.rejected),
                "rejections": list(self.ledger.rejected),
            },
            "paused_rounds": paused,
            "refused_merges": refused,
            "local_only": p.local_only,
        }
        if p.local_only:
            extra["per_peer_accuracy"] = {
                str(k): round(evaluate(t.model, ctx.x_test, ctx.y_test)[0], 6)
                for k, t in enumerate(trainers)
            }
        if self.owner:
            notes.append(f"rogue peers: {sorted(self.owner)}")
        return TrainingOutcome(model, records, privacy, notes, extra=extra)

    def _views(self) -> list[tuple[Any, LedgerView]]:
        """Each ledger-acting attack's restricted view, holding only the key its adversary holds:
        a peer adversary its own peer's key, anyone else none."""
        out = []
        for attack in self.ctx.attacks:
            act = getattr(attack, "act_on_ledger", None)
            if act is None:
                continue
            tm = attack.threat_model()
            match = re.fullmatch(r"peer(\d+)", tm.party or "")
            k = int(match.group(1)) if tm.adversary == "peer" and match else None
            identity = self.identities[k] if k is not None and k < len(self.identities) else None
            write = bool(getattr(attack, "ledger_storage_write", False))
            out.append((act, LedgerView(self.ledger, identity, storage_write=write)))
        return out

    def _trainer(self, k: int, idx: Any) -> LocalTrainer:
        x = self.ctx.x_train[torch.as_tensor(idx)]
        y = self.ctx.y_train[torch.as_tensor(idx)]
        if k in self.owner:
            x, y = self.owner[k].poison_data(k, x, y)
        return self.make_trainer(k, x, y)

    def _rejoin(self, r: int, k: int, state: State, notes: list[str]) -> State:
        """Sync the newest merged model whose chain verifies (the initial model if none)."""
        merged, check = self.ledger.latest_verified("merge")
        notes.append(
            f"round {r}: peer{k} rejoined and synced "
            + (f"merged model of round {merged.round}" if merged else "the initial model")
            + ("" if check.ok else f" (ledger fails verification at entry {check.bad_index})")
        )
        if merged is None:
            return self.initial_state
        self.ctx.wire.send(r, LEDGER, peer(k), "ledger_entry", merged.weights)
        return {k2: v.clone() for k2, v in merged.weights.items()}

    def _record_local(self, r: int, trainers: list[LocalTrainer], live: list[int]) -> RoundRecord:
        accs, losses = [], []
        for t in trainers:
            acc, loss = evaluate(t.model, self.ctx.x_test, self.ctx.y_test)
            accs.append(acc)
            losses.append(loss)
        acc, loss = sum(accs) / len(accs), sum(losses) / len(losses)
        now = time.perf_counter()
        rec = RoundRecord(
            r, acc, loss, self.ctx.wire.bytes_by_round.get(r, 0), now - self._clock, len(live)
        )
        self._clock = now
        if self.ctx.progress:
            self.ctx.progress(r, self.spec.rounds, acc)
        return rec

    def _train_and_commit(
        self,
        r: int,
        live: list[int],
        trainers: list[LocalTrainer],
        local: list[State],
        state: State,
    ) -> dict[int, State]:
        ctx = self.ctx
        commits: dict[int, State] = {}
        for k in live:
            trainers[k].train(local[k])
            commits[k] = trainers[k].state()
        for attack in dict.fromkeys(self.owner.values()):
            mine = {k: _delta(c, state) for k, c in commits.items() if self.owner.get(k) is attack}
            if mine:
                benign = {k: _delta(c, state) for k, c in commits.items() if k not in self.owner}
                crafted = attack.craft_updates(r, mine, benign, state)
                for k, u in crafted.items():
                    commits[k] = {n: state[n] + u[n] if n in u else state[n] for n in state}
        for k in live:
            entry = self.ledger.commit(
                self.identities[k],
                r,
                "commit",
                commits[k],
                {"num_samples": trainers[k].num_samples},
            )
            ctx.wire.send(r, peer(k), LEDGER, "commit", entry.weights)
            for j in live:
                if j != k:
                    ctx.wire.send(
                        r, LEDGER, peer(j), "ledger_entry", _EntryView(k, entry.weights, "commit")
                    )
        return commits

    def _merge(
        self,
        r: int,
        live: list[int],
        commits: dict[int, State],
        trainers: list[LocalTrainer],
        state: State,
        notes: list[str],
    ) -> tuple[State, int]:
        """The leader's merge of round r and the number of commits it merged (0: refused)."""
        leader = live[self.ledger.leader_index(r, len(live))]
        check = self.ledger.verify()
        if not check.ok:
            notes.append(f"round {r}: leader peer{leader} refused to merge: {check.message}")
            return state, 0
        entries = [e for e in self.ledger.storage if e.round == r and e.kind == "commit"]
        stack = [e.weights for e in entries]
        weights = [float(e.meta.get("num_samples", 1)) for e in entries]
        agg = self.ctx.defenses.aggregation
        if agg is not None:
            deltas = [_delta(s, state) for s in stack]
            start = getattr(agg, "start_round", None)
            if start is not None:
                start(r, state)
            mean = agg.aggregate(deltas, weights)
            merged = {k: state[k] + mean[k] if k in mean else state[k] for k in state}
        elif self.params.merge == "median":
            merged = coordinate_median(stack)
        elif self.params.merge == "trimmed_mean":
            merged = trimmed_mean(stack, self.params.trim_fraction)
        else:
            merged = weighted_mean(stack, weights)
        try:
            entry = self.ledger.commit(
                self.identities[leader],
                r,
                "merge",
                merged,
                {"leader": leader, "merged": len(stack)},
            )
        except LedgerError as exc:  # pragma: no cover - the leader is always enrolled
            notes.append(f"round {r}: merge refused: {exc}")
            return state, 0
        for j in live:
            if j != leader:
                self.ctx.wire.send(
                    r, LEDGER, peer(j), "ledger_entry", _EntryView(leader, merged, "merge")
                )
        # The peers act on the merge only after verifying the chain up to it.
        loaded, check = self.ledger.latest_verified("merge")
        if loaded is None or loaded.hash != entry.hash:  # pragma: no cover - just verified
            notes.append(f"round {r}: peers refused the merge: {check.message}")
            return state, 0
        return {k: v.clone() for k, v in loaded.weights.items()}, len(stack)


def _delta(new: State, old: State) -> dict[str, torch.Tensor]:
    return {k: new[k] - old[k] for k in old if old[k].is_floating_point()}


class _EntryView(dict):
    """A ledger entry as a peer receives it: the author's id and the weights (sized as weights)."""

    def __init__(self, author: int, weights: State, kind: str) -> None:
        super().__init__(weights)
        self.author = author
        self.kind = kind


def entry_author(msg: Message) -> int | None:
    return getattr(msg.payload, "author", None)
