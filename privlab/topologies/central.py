"""Central learning: every client uploads its raw data to one server, which trains.

The baseline of the source brief: best utility, and a single point of attack holding everyone's
records. The upload is sent over the wire (round 0) so its cost and visibility are measured.
"""

from __future__ import annotations

from typing import Any

import torch

from privlab.defenses.base import NoParams
from privlab.scenario import validate_params
from privlab.topologies.base import Topology, TrainingOutcome
from privlab.wire import SERVER, client


class CentralTopology(Topology):
    """All client data pooled on one server; one round = `local_epochs` epochs of training."""

    @staticmethod
    def check_setting(
        scenario: Any, input_shape: tuple[int, ...], num_classes: int, num_clients: int
    ) -> None:
        """Central training takes no topology.params: refuse any, rather than ignore them."""
        validate_params(NoParams, scenario.topology.params, "topology.params")

    def run(self) -> TrainingOutcome:
        ctx = self.ctx
        parts = []
        for c in ctx.clients:
            idx = torch.as_tensor(c.train_idx)
            ctx.wire.send(
                0,
                client(c.client_id),
                SERVER,
                "raw_data",
                {"x": ctx.x_train[idx], "y": ctx.y_train[idx]},
            )
            parts.append(idx)
        pooled = torch.cat(parts)
        trainer = self.make_trainer(0, ctx.x_train[pooled], ctx.y_train[pooled])
        state = trainer.state()
        records = []
        for r in range(1, self.spec.rounds + 1):
            trainer.train(state)
            state = trainer.state()
            records.append(self.record(r, trainer.model, participants=1))
        privacy = self.worst_case_privacy({SERVER: trainer.privacy()})
        if privacy:
            privacy.pop("per_client", None)
        return TrainingOutcome(trainer.model, records, privacy)
