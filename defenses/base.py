"""The defense contract: where a defense sits decides what it may change.

Placements, in the order a federated round applies them: local training (DP-SGD wraps the
optimiser), client update (clip, noise, compress), transport (encryption, masking), aggregation
(robust aggregators, central DP); split learning adds the split boundary.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from privlab.scenario import ComponentSpec, validate_params

if TYPE_CHECKING:
    import torch

    from privlab.engine.base import ClientShard, Engine
    from privlab.scenario import Scenario
    from privlab.training import LocalTrainer, TrainSettings


class Placement(StrEnum):
    LOCAL_TRAINING = "local_training"
    CLIENT_UPDATE = "client_update"
    TRANSPORT = "transport"
    AGGREGATION = "aggregation"
    SPLIT_BOUNDARY = "split_boundary"


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Defense:
    """Base class. Subclasses set `placement` and `Params` (a pydantic model, extra=forbid)."""

    placement: ClassVar[Placement]
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, spec: ComponentSpec, field: str) -> None:
        self.spec = spec
        self.field = field
        self.params: Any = validate_params(self.Params, spec.params, f"{field}.params")

    def privacy(self) -> dict[str, Any] | None:
        """Privacy this defense has accounted so far (None: it makes no formal claim)."""
        return None

    def check_setting(
        self, scenario: Scenario, input_shape: tuple[int, ...], num_classes: int
    ) -> None:
        """Raise a one-line ScenarioError if the params do not fit this scenario (called
        before any training)."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "id": self.spec.key,
            "placement": str(self.placement),
            "params": self.params.model_dump(mode="json"),
        }


class LocalTrainingDefense(Defense):
    """Replaces a party's local trainer (e.g. DP-SGD)."""

    placement = Placement.LOCAL_TRAINING

    def make_trainer(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        settings: TrainSettings,
        generator: torch.Generator,
        *,
        planned_epochs: int,
    ) -> LocalTrainer:
        raise NotImplementedError

    def make_engine(
        self,
        shards: list[ClientShard],
        model: torch.nn.Module,
        settings: TrainSettings,
        *,
        planned_epochs: int,
    ) -> Engine | None:
        """An engine that trains all clients together under this defense, or None: one
        `make_trainer` trainer per client on the sequential engine (the reference)."""
        return None


class ClientUpdateDefense(Defense):
    """Transforms a client's model update before it leaves the device."""

    placement = Placement.CLIENT_UPDATE

    def transform(
        self, update: dict[str, torch.Tensor], *, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class TransportDefense(Defense):
    """Protects updates on the wire (encryption, masking): the server handles only what
    `protect` returns, combines it with `combine`, and learns the aggregate via `reveal`, which
    runs with the key holders (never the server)."""

    placement = Placement.TRANSPORT

    def setup(self, num_clients: int, template: dict[str, torch.Tensor]) -> None:
        """Key generation and distribution, before the first round."""

    def setup_messages(self) -> list[tuple[str, str, str, Any]]:
        """(sender, receiver, kind, payload) messages of the key set-up that cross the wire at
        round 0 (e.g. the public context sent to the server)."""
        return []

    def discard(self, client_id: int) -> None:
        """The last payload `protect` made for this client was never sent (late dropout)."""

    def protect(self, client_id: int, update: dict[str, torch.Tensor], weight: float) -> Any:
        raise NotImplementedError

    def combine(self, payloads: list[Any]) -> Any:
        raise NotImplementedError

    def reveal(self, combined: Any) -> dict[str, torch.Tensor]:
        """The weighted mean of the protected updates, decrypted by the key holders."""
        raise NotImplementedError


class AggregationDefense(Defense):
    """Replaces the server's weighted mean with another aggregation rule."""

    placement = Placement.AGGREGATION
    last_selected: list[int] | None = None
    """Positions (in the stack passed to `aggregate`) the rule kept in its last call; None
    for rules that keep everyone. The topology maps them to client ids for the referee."""

    @property
    def root_size(self) -> int:
        """Clean records the server must hold (FLTrust's root set), taken from the test pool."""
        return 0

    def bind_server(self, trainer: LocalTrainer) -> None:
        """Receive a trainer on the server's root records (only when root_size > 0)."""

    def start_round(self, round_: int, global_state: dict[str, torch.Tensor]) -> None:
        """Called with the global model before the round's updates arrive."""

    def aggregate(
        self, updates: list[dict[str, torch.Tensor]], weights: list[float]
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError
