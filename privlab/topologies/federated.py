"""Federated learning: FedAvg (McMahan et al. 2017) and FedProx (Li et al. 2020).

Each round the server samples a fraction of clients and broadcasts the global model; each
sampled client (unless it drops out) trains locally, applies its client-side defenses to the
update, and sends it; the server aggregates (weighted mean by sample count, or the variant's
aggregation defense) and steps the global model by `server_lr` times the aggregate.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from privlab.topologies.base import Topology, TrainingOutcome
from privlab.training import State, seeded_generator
from privlab.wire import SERVER, client

Update = dict[str, torch.Tensor]


def weighted_mean(updates: list[Update], weights: list[float]) -> Update:
    """FedAvg's aggregate: sum_k w_k u_k / sum_k w_k."""
    total = float(sum(weights))
    return {
        key: sum((w / total) * u[key] for u, w in zip(updates, weights, strict=True))
        for key in updates[0]
    }


def difference(new: State, old: State) -> Update:
    return {k: new[k] - old[k] for k in old if old[k].is_floating_point()}


class FederatedTopology(Topology):
    """FedAvg / FedProx with client sampling, dropout and pluggable defenses."""

    def run(self) -> TrainingOutcome:
        ctx, spec = self.ctx, self.spec
        trainers = [
            self.make_trainer(
                c.client_id,
                ctx.x_train[torch.as_tensor(c.train_idx)],
                ctx.y_train[torch.as_tensor(c.train_idx)],
            )
            for c in ctx.clients
        ]
        server_model = copy.deepcopy(ctx.model)
        state: State = {k: v.detach().clone() for k, v in server_model.state_dict().items()}
        rng = np.random.default_rng([self.seed, 11])
        per_round = max(1, round(spec.client_fraction * len(trainers)))
        records = []
        for r in range(1, spec.rounds + 1):
            sampled = np.sort(rng.choice(len(trainers), size=per_round, replace=False))
            stays = rng.random(per_round) >= spec.dropout
            updates, weights = [], []
            for k, active in zip(sampled.tolist(), stays.tolist(), strict=True):
                ctx.wire.send(r, SERVER, client(k), "global_model", state)
                if not active:
                    continue
                trainer = trainers[k]
                trainer.train(state)
                update = difference(trainer.state(), state)
                gen = seeded_generator(self.seed, k, r, 13)
                for defense in ctx.defenses.client_update:
                    update = defense.transform(update, generator=gen)
                ctx.wire.send(r, client(k), SERVER, "update", update)
                updates.append(update)
                weights.append(float(trainer.num_samples))
            if updates:
                agg = (
                    ctx.defenses.aggregation.aggregate(updates, weights)
                    if ctx.defenses.aggregation
                    else weighted_mean(updates, weights)
                )
                state = {
                    k: (v + spec.server_lr * agg[k]) if k in agg else v for k, v in state.items()
                }
            server_model.load_state_dict(state)
            records.append(self.record(r, server_model, participants=len(updates)))
        privacy = self.worst_case_privacy(
            {str(c.client_id): t.privacy() for c, t in zip(ctx.clients, trainers, strict=True)}
        )
        notes = []
        if spec.dropout > 0:
            dropped = spec.rounds * per_round - sum(r.participants for r in records)
            notes.append(f"{dropped} client-rounds dropped out (p={spec.dropout})")
        return TrainingOutcome(server_model, records, privacy, notes)
