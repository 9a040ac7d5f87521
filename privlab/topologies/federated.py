"""Federated learning: FedAvg (McMahan et al. 2017) and FedProx (Li et al. 2020).

One round, as data flows: the server samples a fraction of clients and broadcasts the global
model; each sampled client that does not drop out trains locally (a controlled client may train
on poisoned data) and applies its client-side defenses; controlled clients may then replace
their updates (model poisoning); each update crosses the wire, protected by the transport
defense if any (the server then sees only ciphertexts); the server aggregates (weighted mean by
sample count, a robust rule, or the decrypted sum) and steps the global model by `server_lr`.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from privlab.attacks.base import Attack
from privlab.defenses.base import Placement
from privlab.scenario import validate_params
from privlab.topologies.base import RoundRecord, Topology, TrainingOutcome
from privlab.training import LocalTrainer, State, seeded_generator
from privlab.wire import SERVER, client

Update = dict[str, torch.Tensor]


def weighted_mean(updates: list[Update], weights: list[float]) -> Update:
    """FedAvg's aggregate: sum_k w_k u_k / sum_k w_k."""
    total = float(sum(weights))
    return {
        key: sum((w / total) * u[key] for u, w in zip(updates, weights, strict=True))
        for key in updates[0]
    }


class FederatedParams(BaseModel):
    """`topology.params` of the federated topology (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")
    late_dropout: float = Field(default=0.0, ge=0, lt=1)
    """Probability that a client drops out after computing (and protecting) its update,
    before it reaches the server: it is left out of the aggregate."""


def difference(new: State, old: State) -> Update:
    return {k: new[k] - old[k] for k in old if old[k].is_floating_point()}


class FederatedTopology(Topology):
    """FedAvg / FedProx with client sampling, dropout, malicious clients and defenses."""

    placements = frozenset(
        {
            Placement.LOCAL_TRAINING,
            Placement.CLIENT_UPDATE,
            Placement.TRANSPORT,
            Placement.AGGREGATION,
        }
    )

    @staticmethod
    def check_setting(
        scenario: Any, input_shape: tuple[int, ...], num_classes: int, num_clients: int
    ) -> FederatedParams:
        """Validate topology.params while preparing, before any variant trains."""
        params = validate_params(FederatedParams, scenario.topology.params, "topology.params")
        return params  # type: ignore[return-value]

    def run(self) -> TrainingOutcome:
        ctx, spec = self.ctx, self.spec
        self.params = self.check_setting(ctx.scenario, (), 0, len(ctx.clients))
        num_clients = len(ctx.clients)
        self.owner: dict[int, Attack] = {}
        for attack in ctx.attacks:
            for k in attack.controlled_clients(num_clients):
                self.owner.setdefault(k, attack)
        trainers = [self._client_trainer(c.client_id, c.train_idx) for c in ctx.clients]
        server_model = copy.deepcopy(ctx.model)
        state: State = {k: v.detach().clone() for k, v in server_model.state_dict().items()}
        if ctx.defenses.transport is not None:
            ctx.defenses.transport.setup(num_clients, difference(state, state))
            for sender, receiver, kind, payload in ctx.defenses.transport.setup_messages():
                ctx.wire.send(0, sender, receiver, kind, payload)
        self._late_rng = np.random.default_rng([self.seed, 17])
        self._late_dropped = 0
        self._selections: list[dict] = []
        aggregation = ctx.defenses.aggregation
        if aggregation is not None and ctx.server_x is not None and ctx.server_y is not None:
            aggregation.bind_server(  # the server's own clean root records (FLTrust)
                LocalTrainer(
                    copy.deepcopy(ctx.model),
                    ctx.server_x,
                    ctx.server_y,
                    self.settings,
                    seeded_generator(self.seed, 1_000_003, 7),
                )
            )
        rng = np.random.default_rng([self.seed, 11])
        per_round = max(1, round(spec.client_fraction * num_clients))
        records: list[RoundRecord] = []
        for r in range(1, spec.rounds + 1):
            sampled = np.sort(rng.choice(num_clients, size=per_round, replace=False))
            stays = rng.random(per_round) >= spec.dropout
            for attack in ctx.attacks:
                attack.begin_round(r)
            updates, weights = self._local_round(r, state, trainers, sampled, stays)
            lost_before = self._late_dropped
            if updates:
                if aggregation is not None:
                    aggregation.start_round(r, state)
                agg = self._aggregate(r, updates, weights)
                state = {
                    k: (v + spec.server_lr * agg[k]) if k in agg else v for k, v in state.items()
                }
            server_model.load_state_dict(state)
            # Participants: clients whose update reached the server (late dropouts did not).
            arrived = len(updates) - (self._late_dropped - lost_before)
            record = self.record(r, server_model, participants=arrived)
            record.epsilon = self._aggregation_epsilon()
            records.append(record)
        privacy = self.worst_case_privacy(
            {str(c.client_id): t.privacy() for c, t in zip(ctx.clients, trainers, strict=True)}
        )
        if privacy is None and ctx.defenses.aggregation is not None:
            privacy = ctx.defenses.aggregation.privacy()
        notes = []
        if spec.dropout > 0:
            dropped = (
                spec.rounds * per_round
                - sum(rec.participants for rec in records)
                - self._late_dropped
            )
            notes.append(f"{dropped} client-rounds dropped out (p={spec.dropout})")
        if self.owner:
            notes.append(f"malicious clients: {sorted(self.owner)}")
        if self._late_dropped:
            notes.append(
                f"{self._late_dropped} client updates lost after being computed "
                f"(late_dropout={self.params.late_dropout}); left out of the aggregate"
            )
        return TrainingOutcome(
            server_model,
            records,
            privacy,
            notes,
            selections=self._selections,
            malicious=sorted(self.owner),
            # Referee-only: each client's training records (a reconstruction's ground truth).
            truth={"client_records": {c.client_id: c.train_idx for c in ctx.clients}},
        )

    def _client_trainer(self, k: int, idx: np.ndarray) -> LocalTrainer:
        x = self.ctx.x_train[torch.as_tensor(idx)]
        y = self.ctx.y_train[torch.as_tensor(idx)]
        if k in self.owner:
            x, y = self.owner[k].poison_data(k, x, y)
        return self.make_trainer(k, x, y)

    def _local_round(
        self,
        r: int,
        state: State,
        trainers: list[LocalTrainer],
        sampled: np.ndarray,
        stays: np.ndarray,
    ) -> tuple[dict[int, Update], dict[int, float]]:
        """Broadcast, local training, client-side defenses, then malicious replacement."""
        ctx = self.ctx
        updates: dict[int, Update] = {}
        weights: dict[int, float] = {}
        for k, active in zip(sampled.tolist(), stays.tolist(), strict=True):
            ctx.wire.send(r, SERVER, client(k), "global_model", state)
            if not active:
                continue
            trainers[k].train(state)
            update = difference(trainers[k].state(), state)
            gen = seeded_generator(self.seed, k, r, 13)
            for defense in ctx.defenses.client_update:
                update = defense.transform(update, generator=gen)
            updates[k] = update
            weights[k] = float(trainers[k].num_samples)
        for attack in dict.fromkeys(self.owner.values()):
            mine = {k: u for k, u in updates.items() if self.owner.get(k) is attack}
            if mine:
                benign = {k: u for k, u in updates.items() if k not in self.owner}
                updates.update(attack.craft_updates(r, mine, benign, state))
        return updates, weights

    def _aggregate(self, r: int, updates: dict[int, Update], weights: dict[int, float]) -> Update:
        """Send each update over the wire and combine them as the variant's defenses say."""
        ctx = self.ctx
        ids = sorted(updates)
        transport = ctx.defenses.transport
        late = self.params.late_dropout
        if transport is not None:
            payloads = []
            for k in ids:
                payload = transport.protect(k, updates[k], weights[k])
                if late and self._late_rng.random() < late:
                    transport.discard(k)  # encrypted, then dropped out before sending
                    self._late_dropped += 1
                    continue
                ctx.wire.send(r, client(k), SERVER, "update", payload)
                payloads.append(payload)
            if not payloads:
                return {key: torch.zeros_like(v) for key, v in updates[ids[0]].items()}
            return transport.reveal(transport.combine(payloads))
        if late:
            kept = [k for k in ids if self._late_rng.random() >= late]
            self._late_dropped += len(ids) - len(kept)
            ids = kept
            if not ids:
                return {key: torch.zeros_like(v) for key, v in next(iter(updates.values())).items()}
        for k in ids:
            ctx.wire.send(r, client(k), SERVER, "update", updates[k])
        stack, w = [updates[k] for k in ids], [weights[k] for k in ids]
        if ctx.defenses.aggregation is not None:
            out = ctx.defenses.aggregation.aggregate(stack, w)
            kept = ctx.defenses.aggregation.last_selected
            if kept is not None:  # the server's decision, graded by the referee
                self._selections.append(
                    {"round": r, "participants": ids, "selected": [ids[i] for i in kept]}
                )
            return out
        return weighted_mean(stack, w)

    def _aggregation_epsilon(self) -> float | None:
        agg = self.ctx.defenses.aggregation
        spent = agg.privacy() if agg is not None else None
        return None if spent is None else float(spent["epsilon"])
