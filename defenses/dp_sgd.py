"""DP-SGD (Abadi et al. 2016) inside each party's local training, through Opacus.

Opacus computes per-sample gradients (GradSampleModule), clips and noises them (DPOptimizer) and
accounts for privacy (its RDP, PRV or GDP accountant, stepped by the optimiser's own hook).
Batches are Poisson-sampled with rate q = 1 / ceil(n / batch_size), as Opacus' DPDataLoader does,
so the accountant's subsampling assumption holds. Epsilon is per party (record-level DP for that
party's data); a federated run reports the worst party.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
from opacus import GradSampleModule
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.nn import functional as F

from privlab.defenses.base import LocalTrainingDefense
from privlab.errors import ScenarioError
from privlab.training import LocalTrainer, TrainSettings

Accountant = Literal["rdp", "prv", "gdp"]


class DPSGDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    noise_multiplier: float | None = Field(default=None, ge=0)
    target_epsilon: float | None = Field(default=None, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    accountant: Accountant = "prv"
    """prv (default) and rdp are upper bounds; gdp is an approximation that can undershoot."""

    @model_validator(mode="after")
    def _one_mode(self) -> DPSGDParams:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier or target_epsilon")
        return self


class DPSGD(LocalTrainingDefense):
    """DP-SGD via Opacus inside each party's local training."""

    Params = DPSGDParams

    def noise_for(self, sample_rate: float, planned_epochs: int) -> float:
        p: DPSGDParams = self.params
        if p.noise_multiplier is not None:
            return p.noise_multiplier
        assert p.target_epsilon is not None
        try:
            return calibrate_noise(
                p.target_epsilon, p.delta, sample_rate, planned_epochs, p.accountant
            )
        except ValueError as exc:
            raise ScenarioError(
                f"{self.field}.params.target_epsilon: {p.target_epsilon} cannot be reached "
                f"with delta={p.delta}, sample rate {sample_rate:.3g} and {planned_epochs} "
                f"epochs ({exc}); raise it or train for fewer epochs"
            ) from None

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
        rate = 1.0 / settings.steps_per_epoch(len(y))
        noise = self.noise_for(rate, planned_epochs)
        return DPSGDTrainer(model, x, y, settings, generator, params=self.params, noise=noise)


@functools.lru_cache(maxsize=256)
def calibrate_noise(
    target_epsilon: float, delta: float, sample_rate: float, epochs: int, accountant: str
) -> float:
    """Opacus' noise search; cached because every party with the same sampling rate gets the
    same answer and the PRV search takes seconds."""
    return get_noise_multiplier(
        target_epsilon=target_epsilon,
        target_delta=delta,
        sample_rate=sample_rate,
        epochs=epochs,
        accountant=accountant,
        epsilon_tolerance=0.01,
    )


@functools.lru_cache(maxsize=1024)
def epsilon_of(
    history: tuple[tuple[float, float, int], ...], delta: float, accountant: str
) -> float:
    """Epsilon of an Opacus accountant history (cached: parties often share one history)."""
    acc = create_accountant(accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


class DPSGDTrainer(LocalTrainer):
    """LocalTrainer whose steps are Opacus DP-SGD steps on Poisson-sampled batches."""

    def __init__(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        settings: TrainSettings,
        generator: torch.Generator,
        *,
        params: DPSGDParams,
        noise: float,
    ) -> None:
        self.grad_sample_module = GradSampleModule(model)
        super().__init__(model, x, y, settings, generator)
        self.params = params
        self.noise_multiplier = noise
        self.sample_rate = 1.0 / settings.steps_per_epoch(len(y))
        self.optimizer = DPOptimizer(
            self.optimizer,
            noise_multiplier=noise,
            max_grad_norm=params.max_grad_norm,
            expected_batch_size=max(1, round(self.sample_rate * len(y))),
            generator=generator,
        )
        self.accountant = create_accountant(params.accountant)
        self.optimizer.attach_step_hook(
            self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate)
        )

    def _batches(self) -> list[torch.Tensor]:
        """Poisson sampling: each record joins each batch independently with rate q."""
        steps = self.settings.steps_per_epoch(self.num_samples)
        mask = torch.rand(steps, self.num_samples, generator=self.generator) < self.sample_rate
        return [row.nonzero().flatten() for row in mask]

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.grad_sample_module(xb)
        if len(yb) == 0:  # an empty Poisson batch still takes a (pure-noise) step
            F.cross_entropy(logits, yb, reduction="sum").backward()
            self.optimizer.step()
            return 0.0
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def privacy(self) -> dict[str, Any]:
        steps = sum(n for _, _, n in self.accountant.history)
        history = tuple((float(s), float(q), int(n)) for s, q, n in self.accountant.history)
        eps = epsilon_of(history, self.params.delta, self.params.accountant) if steps else 0.0
        return {
            "epsilon": float(eps),
            "delta": self.params.delta,
            "accountant": self.params.accountant,
            "approximate": self.params.accountant == "gdp",
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": steps,
            "max_grad_norm": self.params.max_grad_norm,
        }
