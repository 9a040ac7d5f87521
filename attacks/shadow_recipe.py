"""The target's training-time defenses, as reference (shadow) models mirror them.

A membership attack calibrated on shadows that train differently from the target mis-states the
target's leakage: non-private shadows against a DP-SGD target make the target look safer than
it is. The adversary knows the recipe (`FinalView.defenses`: names and params, public like the
rest of the scenario), so it rebuilds each defense from its spec and mirrors:
- a local-training defense with a DP-SGD claim (`privacy()` reporting noise multiplier, clip and
  sampling rate; e.g. dp_sgd): the noise multiplier is the one the target's own trainer chose
  for a party of the shadow lane's size and the run's planned epochs;
- client-side update defenses (clipping, noise, pruning): applied to each shadow lane's update;
- transport defenses (secure aggregation) do not change the aggregate: nothing to mirror.
Aggregation rules (robust aggregators, DP-FedAvg) are not mirrored: the shadows average
plainly, which the attack's artifacts state.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from privlab import registry
from privlab.defenses.base import Placement
from privlab.reference_models import UpdateTransform
from privlab.stacked_dp import PrivateRecipe
from privlab.training import TrainSettings

if TYPE_CHECKING:
    from privlab.attacks.base import FinalView


@dataclass
class ShadowDefenses:
    dp: PrivateRecipe | None = None
    transforms: tuple[UpdateTransform, ...] = ()
    mirrored: list[dict[str, Any]] = field(default_factory=list)
    not_mirrored: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return json.dumps(self.mirrored, sort_keys=True)


def _dp_claim(defense: Any, view: FinalView, lane_size: int) -> PrivateRecipe | None:
    """The DP-SGD parameters the target's trainer uses for a party holding `lane_size`."""
    recipe = view.recipe
    settings = TrainSettings.from_topology(recipe.topology)
    assert view.challenge is not None
    shape = view.challenge.x.shape[1:]
    trainer = defense.make_trainer(
        view.model_factory(),
        torch.zeros((lane_size, *shape), dtype=torch.as_tensor(view.challenge.x[:1]).dtype),
        torch.zeros(lane_size, dtype=torch.long),
        settings,
        torch.Generator().manual_seed(0),
        planned_epochs=recipe.topology.rounds * recipe.topology.local_epochs,
    )
    claim = trainer.privacy() or {}
    if not {"noise_multiplier", "max_grad_norm", "sample_rate"} <= set(claim):
        return None
    return PrivateRecipe(
        noise_multiplier=float(claim["noise_multiplier"]),
        max_grad_norm=float(claim["max_grad_norm"]),
        sample_rate=float(claim["sample_rate"]),
    )


def _transform(defense: Any, update: dict, generator: torch.Generator) -> dict:
    return defense.transform(update, generator=generator)


def shadow_defenses(view: FinalView, lane_size: int) -> ShadowDefenses:
    """Rebuild the variant's defenses from the public recipe and keep what shadows mirror."""
    out = ShadowDefenses()
    transforms: list[UpdateTransform] = []
    for i, spec in enumerate(view.defenses):
        defense = registry.defenses.get(spec.name, f"defenses.{i}.name")(spec, f"defenses.{i}")
        placement = defense.placement
        if placement == Placement.LOCAL_TRAINING:
            dp = _dp_claim(defense, view, lane_size)
            if dp is None:
                out.not_mirrored.append(spec.name)
                continue
            out.dp = dp
            out.mirrored.append({**defense.describe(), "as": dp.__dict__})
        elif placement == Placement.CLIENT_UPDATE:
            transforms.append(functools.partial(_transform, defense))  # picklable
            out.mirrored.append(defense.describe())
        elif placement == Placement.TRANSPORT:
            continue  # the server learns the exact aggregate: nothing changes for shadows
        else:
            out.not_mirrored.append(spec.name)
    out.transforms = tuple(transforms)
    return out
