"""DP-SGD (Abadi et al. 2016) inside each party's local training.

Batches are Poisson-sampled with rate q = 1 / k, k = ceil(n / batch_size) batches per epoch, as
Opacus' DPDataLoader does, so the accountant's subsampling assumption holds; E epochs are exactly
E * k steps, and a target epsilon is calibrated on those steps (defenses/dp_calibration.py,
cached on disk). Two implementations of the same step:

- the fast path (book-keeping clipping, Bu et al. 2023) for models made of Linear layers and
  element-wise activations: no per-sample gradients are materialised; Linear stacks (the
  built-in MLP and logistic regression) take the step written out (privlab.stacked_dp), and
  federated clients train it together on the vectorised DP engine (`make_engine`:
  privlab.engine.vectorised_dp; each client keeps its own generator and accountant), other
  such models through autograd (defenses/dp_fast.py);
- Opacus (GradSampleModule + DPOptimizer), the reference implementation, for every other model
  (or `path = "opacus"`).

Both step an Opacus accountant (RDP, PRV or GDP) once per step with (noise, q), so the
accounting is the same whichever path ran; `privacy.path` says which. Epsilon is per party
(record-level DP for that party's data); a federated run reports the worst party.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.nn import functional as F

from privlab.defenses import dp_fast
from privlab.defenses.base import LocalTrainingDefense
from privlab.defenses.dp_calibration import TargetTooLoose, calibrate_noise, steps_of
from privlab.engine.sgd import sgd_update
from privlab.engine.vectorised import linear_stack
from privlab.errors import ScenarioError
from privlab.stacked_dp import poisson_mask, private_step
from privlab.training import LocalTrainer, TrainSettings

if TYPE_CHECKING:
    from privlab.engine.base import ClientShard, Engine

Accountant = Literal["rdp", "prv", "gdp"]


class DPSGDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    noise_multiplier: float | None = Field(default=None, ge=0)
    target_epsilon: float | None = Field(default=None, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    accountant: Accountant = "prv"
    """prv (default) and rdp are upper bounds; gdp is an approximation that can undershoot."""
    path: Literal["auto", "opacus"] = "auto"
    """auto: the book-keeping fast path where the model allows, else Opacus; opacus: always."""

    @model_validator(mode="after")
    def _one_mode(self) -> DPSGDParams:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier or target_epsilon")
        return self


class DPSGD(LocalTrainingDefense):
    """DP-SGD inside each party's local training (fast path or Opacus)."""

    Params = DPSGDParams
    FAST_TOPOLOGIES = frozenset({"federated", "central", "swarm"})
    """Topologies whose trainers run their own cross-entropy steps (split learning drives the
    bottom model's optimiser with the server's gradients, so it trains through Opacus)."""

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)
        self.topology: str | None = None

    def check_setting(self, scenario: Any, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().check_setting(scenario, input_shape, num_classes)
        self.topology = scenario.topology.name

    def noise_for(self, sample_rate: float, steps: int) -> float:
        """The noise multiplier: given, or calibrated on exactly `steps` steps at `sample_rate`."""
        p: DPSGDParams = self.params
        if p.noise_multiplier is not None:
            return p.noise_multiplier
        assert p.target_epsilon is not None
        try:
            return calibrate_noise(p.target_epsilon, p.delta, sample_rate, steps, p.accountant)
        except TargetTooLoose as exc:
            raise ScenarioError(
                f"{self.field}.params.target_epsilon: {p.target_epsilon} is no guarantee DP-SGD "
                f"calibrates to ({exc}, with delta={p.delta}, sample rate {sample_rate:.3g} and "
                f"{steps} steps); lower it, or give noise_multiplier"
            ) from None
        except ValueError as exc:
            raise ScenarioError(
                f"{self.field}.params.target_epsilon: {p.target_epsilon} cannot be reached "
                f"with delta={p.delta}, sample rate {sample_rate:.3g} and {steps} "
                f"steps ({exc}); raise it or train for fewer epochs"
            ) from None

    def _plan(self, n: int, settings: TrainSettings, planned_epochs: int) -> tuple[float, int]:
        """(noise multiplier, calibrated steps) of a party holding n records."""
        per_epoch = settings.steps_per_epoch(n)
        steps = steps_of(planned_epochs, per_epoch)
        return self.noise_for(1.0 / per_epoch, steps), steps

    def _fast(self, model: torch.nn.Module) -> bool:
        return (
            self.params.path == "auto"
            and (self.topology is None or self.topology in self.FAST_TOPOLOGIES)
            and dp_fast.supports(model)
        )

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
        noise, steps = self._plan(len(y), settings, planned_epochs)
        cls = FastDPSGDTrainer if self._fast(model) else DPSGDTrainer
        trainer = cls(model, x, y, settings, generator, params=self.params, noise=noise)
        trainer.planned_steps = steps
        return trainer

    def make_engine(
        self,
        shards: list[ClientShard],
        model: torch.nn.Module,
        settings: TrainSettings,
        *,
        planned_epochs: int,
    ) -> Engine | None:
        """The vectorised DP-SGD engine (privlab.engine.vectorised_dp) where every client's
        trainer would take the written-out fast path (a Linear stack); None otherwise. Each
        client keeps its own `ClientAccount`: the accountant its FastDPSGDTrainer would keep."""
        from privlab.engine.vectorised_dp import VectorisedDPEngine

        if not self._fast(model) or linear_stack(model) is None:
            return None
        accounts = []
        for s in shards:
            noise, steps = self._plan(s.num_samples, settings, planned_epochs)
            accounts.append(ClientAccount(s.num_samples, settings, self.params, noise, steps))
        return VectorisedDPEngine(
            shards, model, settings, accounts, max_grad_norm=self.params.max_grad_norm
        )


@functools.lru_cache(maxsize=1024)
def epsilon_of(
    history: tuple[tuple[float, float, int], ...], delta: float, accountant: str
) -> float:
    """Epsilon of an Opacus accountant history (cached: parties often share one history)."""
    import numpy as np
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = list(history)
    # Sample rate 1 (a party whose data fits in one batch) makes Opacus' PRV take log(1 - q) =
    # log(0) = -inf, which it handles correctly (no amplification); only numpy's warning is noise.
    with np.errstate(divide="ignore"):
        return float(acc.get_epsilon(delta=delta))


class _Accounted:
    """What both DP-SGD trainers share: the accountant and the privacy record."""

    params: DPSGDParams
    noise_multiplier: float
    sample_rate: float
    accountant: Any
    path: str
    planned_steps: int | None = None
    num_samples: int
    settings: TrainSettings
    generator: torch.Generator

    def _poisson_batches(self) -> list[torch.Tensor]:
        """Poisson sampling: each record joins each batch independently with rate q."""
        steps = self.settings.steps_per_epoch(self.num_samples)
        mask = poisson_mask(steps, self.num_samples, self.sample_rate, self.generator)
        return [row.nonzero().flatten() for row in mask]

    def _account_step(self) -> None:
        """One DP-SGD step taken: (noise multiplier, sample rate) into the accountant."""
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def privacy(self) -> dict[str, Any]:
        steps = sum(n for _, _, n in self.accountant.history)
        history = tuple((float(s), float(q), int(n)) for s, q, n in self.accountant.history)
        eps = epsilon_of(history, self.params.delta, self.params.accountant) if steps else 0.0
        out = {
            "epsilon": float(eps),
            "delta": self.params.delta,
            "accountant": self.params.accountant,
            "approximate": self.params.accountant == "gdp",
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": steps,
            "max_grad_norm": self.params.max_grad_norm,
            "path": self.path,
        }
        if self.planned_steps is not None:
            out["calibrated_steps"] = self.planned_steps
        return out


class ClientAccount(_Accounted):
    """A party's DP-SGD parameters and accountant without a trainer: what the vectorised DP
    engine steps for each client (privlab.engine.vectorised_dp.DPClient), set up exactly as
    that party's FastDPSGDTrainer would be."""

    path = "book-keeping"

    def __init__(
        self, n: int, settings: TrainSettings, params: DPSGDParams, noise: float, steps: int
    ) -> None:
        from opacus.accountants import create_accountant

        self.params = params
        self.noise_multiplier = noise
        self.num_samples = n
        self.settings = settings
        self.sample_rate = 1.0 / settings.steps_per_epoch(n)
        self.expected_batch_size = max(1, round(self.sample_rate * n))
        self.accountant = create_accountant(params.accountant)
        self.planned_steps = steps

    def step(self) -> None:
        self._account_step()


class FastDPSGDTrainer(_Accounted, LocalTrainer):
    """DP-SGD steps without per-sample gradients and without torch.optim.

    A Linear stack (privlab.engine.vectorised.linear_stack: the built-in MLP and logistic
    regression) takes the written-out step of privlab.stacked_dp (forward, backward, ghost
    norms, clipped sums added onto the drawn noise, in reused buffers; one "stacked" model);
    other models dp_fast.supports takes autograd's backward to the layer outputs
    (dp_fast.dp_gradient). Both are Opacus' step for the same generator state; the update is
    privlab.engine.sgd's (torch.optim.SGD's arithmetic)."""

    path = "book-keeping"

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
        from opacus.accountants import create_accountant

        # LocalTrainer.__init__ is not called: nothing here builds a torch.optim optimiser,
        # whose first construction imports torch._dynamo (over a second).
        self.model = model
        self.x, self.y = x, y
        self.settings = settings
        self.generator = generator
        self.params = params
        self.noise_multiplier = noise
        self.sample_rate = 1.0 / settings.steps_per_epoch(len(y))
        self.expected_batch_size = max(1, round(self.sample_rate * len(y)))
        self.accountant = create_accountant(params.accountant)
        self._optimizer = None
        self._buffers: list[torch.Tensor | None] = []
        self.arch = linear_stack(model)
        named = dict(model.named_parameters())
        if self.arch is None:
            self._params = dp_fast.dp_parameters(model)  # type: ignore[arg-type]
        else:  # [1, ...] views of the model's parameters: the step updates them in place
            self._stacked = {k: named[k].detach().unsqueeze(0) for k in self.arch.keys}
            self._noise = {k: torch.empty_like(v) for k, v in self._stacked.items()}
            self._params = list(self._stacked.values())

    def _batches(self) -> list[torch.Tensor]:
        return self._poisson_batches()

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        p, std = self.params, self.noise_multiplier * self.params.max_grad_norm
        if self.arch is None:
            grads, loss = dp_fast.dp_gradient(
                self.model,  # type: ignore[arg-type]
                xb,
                yb,
                max_grad_norm=p.max_grad_norm,
                noise_multiplier=self.noise_multiplier,
                expected_batch_size=self.expected_batch_size,
                generator=self.generator,
            )
        else:
            private, losses = private_step(
                self.arch.ops,
                self._stacked,
                self._noise,
                xb.unsqueeze(0),
                yb.unsqueeze(0),
                None,
                max_grad_norm=p.max_grad_norm,
                stds=(std,),
                generators=(self.generator,),
                expected_batch_size=(self.expected_batch_size,),
                losses=True,
            )
            grads = list(private.values())
            assert losses is not None
            loss = float(losses) / len(yb) if len(yb) else 0.0
        if not self._buffers:
            self._buffers = [None] * len(self._params)
        s = self.settings
        sgd_update(
            self._params,
            grads,
            self._buffers,
            lr=s.lr,
            momentum=s.momentum,
            weight_decay=s.weight_decay,
        )
        self._account_step()
        return loss


class DPSGDTrainer(_Accounted, LocalTrainer):
    """The reference: Opacus DP-SGD steps (GradSampleModule + DPOptimizer) on Poisson batches."""

    path = "opacus"

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
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.optimizers import DPOptimizer

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
        return self._poisson_batches()

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
