"""Input reconstruction at the cut layer of split learning (label leakage: split_label_leakage;
the inverse-model attack of He et al. 2019: split_inversion).

UnSplit (Erdogan et al. 2022) needs no bottom weights: its surrogate starts from the server's
own random initialisation (`adversary_rng`), never from the clients' seeded initial weights.
FSHA (Pasquini et al. 2021) is an active server that hijacks the bottom model's feature space.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from privlab.attacks.base import Attack, FinalView, ThreatModel
from privlab.attacks.split_common import (
    BatchKey,
    Reconstructions,
    adversary_rng,
    adversary_seed,
    population_prior,
)
from privlab.attacks.split_common import client_id as _client_id
from privlab.attacks.split_inversion import (  # noqa: F401  (moved: old import path)
    ActivationInversionAttack,
    InversionParams,
    train_decoder,
)
from privlab.attacks.split_label_leakage import (  # noqa: F401  (registry path)
    LabelLeakageAttack,
    cosine_scores,
    norm_scores,
)
from privlab.errors import PrivlabError
from privlab.wire import SERVER, Message

# --------------------------------------------------------------------------- UnSplit


class UnSplitParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    iterations: int = Field(default=20, ge=1)
    """Alternations between input and surrogate-model updates per batch."""
    steps: int = Field(default=25, ge=1)
    lr: float = Field(default=0.01, gt=0)
    tv_weight: float = Field(default=0.05, ge=0)
    """Total-variation prior on image reconstructions (ignored for non-image data)."""
    max_examples: int = Field(default=64, ge=1)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of (B, C, H, W) images, mean over pixels."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return dh + dw


def unsplit_invert(
    target: torch.Tensor,
    surrogate: nn.Module,
    x_shape: tuple[int, ...],
    p: UnSplitParams,
    generator: torch.Generator,
) -> torch.Tensor:
    """Erdogan et al.'s coordinate descent: alternately fit the inputs and the surrogate bottom
    so that surrogate(x_hat) matches the observed activations (plus a TV prior on images)."""
    image = len(x_shape) == 3
    x_hat = (0.5 if image else 0.0) + 0.1 * torch.randn(
        (len(target), *x_shape), generator=generator
    )
    x_hat.requires_grad_(True)
    opt_x = torch.optim.Adam([x_hat], lr=p.lr)
    opt_m = torch.optim.Adam(surrogate.parameters(), lr=p.lr)

    def loss() -> torch.Tensor:
        value = nn.functional.mse_loss(surrogate(x_hat), target)
        if image and p.tv_weight > 0:
            value = value + p.tv_weight * total_variation(x_hat)
        return value

    for _ in range(p.iterations):
        for _ in range(p.steps):
            opt_x.zero_grad()
            loss().backward()
            opt_x.step()
            if image:
                with torch.no_grad():
                    x_hat.clamp_(0.0, 1.0)
        for _ in range(p.steps):
            opt_m.zero_grad()
            loss().backward()
            opt_m.step()
    return x_hat.detach()


class UnSplitAttack(Attack):
    """UnSplit (Erdogan et al. 2022): input inversion without the bottom weights."""

    family = "input_reconstruction"
    Params = UnSplitParams
    topologies = frozenset({"split"})

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        self.activations: dict[BatchKey, torch.Tensor] = {}
        self._count: dict[tuple[int, str], int] = defaultdict(int)

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="cut_layer", party=SERVER, knowledge=("bottom model architecture",)
        )

    def observe(self, msg: Message) -> None:
        if msg.kind == "activations" and msg.receiver == SERVER:
            n = self._count[(msg.round, msg.sender)]
            self._count[(msg.round, msg.sender)] += 1
            self.activations[(msg.round, _client_id(msg.sender), n)] = msg.payload.detach()

    def finalize(self, view: FinalView) -> Reconstructions:

        if not self.activations:
            raise PrivlabError(f"{self.field}: the server saw no activations")
        last = max(key[0] for key in self.activations)
        targets = sorted(key for key in self.activations if key[0] == last)
        if view.population is None:
            raise PrivlabError(f"{self.field}: needs the input shape (population data)")
        surrogate = unsplit_surrogate(view)
        x_shape = tuple(view.population.x.shape[1:])
        gen = torch.Generator().manual_seed(adversary_seed(view.recipe.seed, "unsplit_inputs"))
        out: dict[BatchKey, np.ndarray] = {}
        total = 0
        for key in targets:
            if total >= self.params.max_examples:
                break
            z = self.activations[key]
            out[key] = unsplit_invert(z, surrogate, x_shape, self.params, gen).numpy()
            total += len(z)
        return Reconstructions(
            out, image=len(x_shape) == 3, prior=population_prior(view), seed=view.recipe.seed
        )


def unsplit_surrogate(view: FinalView) -> nn.Sequential:
    """UnSplit's surrogate bottom model: the public architecture with the adversary's own
    random initialisation. The clients' initial weights come from the scenario seed, which the
    server does not hold, so the surrogate never starts from them."""
    from privlab.topologies.split import cut_model, split_params

    with adversary_rng(view.recipe.seed, "unsplit_surrogate"):
        surrogate, _, _ = cut_model(view.model_factory(), split_params(view.recipe))
    return surrogate


# --------------------------------------------------------------------------- FSHA


class FSHAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(default=256, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    gp_weight: float = Field(default=10.0, ge=0)
    gradient_scale: float = Field(default=16.0, gt=0)
    """Multiplies the returned gradients (the server chooses their size freely)."""
    pretrain_steps: int = Field(default=500, ge=0)
    """Autoencoder steps on auxiliary data before training starts (offline, server-side)."""
    train_pilot: bool = False
    """Keep training the pilot autoencoder during the protocol (the paper) or freeze it."""
    critic: Literal["wgan_gp", "mmd"] = "mmd"
    """wgan_gp: the paper's learned critic; mmd: a kernel two-sample statistic (Gaussian MMD)
    between client activations and pilot features, a critic-free and steadier alignment."""
    max_examples: int = Field(default=256, ge=1)


def mmd2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Biased Gaussian-kernel MMD^2 with the median-distance bandwidth (Gretton et al. 2012)."""
    x = torch.cat([a, b])
    d2 = torch.cdist(x, x).pow(2)
    bandwidth = d2.detach()[d2.detach() > 0].median().clamp_min(1e-12)
    k = torch.exp(-d2 / bandwidth)
    n = len(a)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


class FeatureSpaceHijackingAttack(Attack):
    """Feature-space hijacking (Pasquini et al. 2021) by a malicious split-learning server.

    "Unleashing the Tiger: Inference Attacks on Split Learning" (CCS 2021): instead of training
    the task, the server trains on its auxiliary data a pilot encoder and its decoder (an
    autoencoder) and a discriminator (WGAN-GP) between pilot features and client activations;
    the gradients it returns are the generator gradients that push the client's bottom model
    into the pilot's feature space. The decoder then inverts client activations. Setting: any
    split topology; the server is active, its pilot is freshly initialised (it does not reuse
    the client's initial weights) and pre-trained on auxiliary data. At this small scale the
    paper's WGAN-GP critic (`critic = "wgan_gp"`) does not converge in a few hundred steps, so
    the default aligns the distributions with a Gaussian-kernel MMD instead of a learned critic
    (same attack, a steadier two-sample statistic). Qualitative result reproduced:
    reconstructions far better than the mean guess, and the hijacked model learns nothing
    about the task.
    """

    family = "input_reconstruction"
    Params = FSHAParams
    topologies = frozenset({"split"})

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        self.activations: dict[BatchKey, torch.Tensor] = {}
        self._count: dict[tuple[int, str], int] = defaultdict(int)
        self.ready = False

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="cut_layer",
            party=SERVER,
            active=True,
            knowledge=("auxiliary data from the population", "bottom model architecture"),
        )

    def split_server_setup(self, bottom: nn.Module, aux_x: torch.Tensor, seed: int) -> None:
        """Called by the split topology before training: build pilot, decoder, discriminator."""
        p = self.params
        self.aux = aux_x
        self.gen = torch.Generator().manual_seed(adversary_seed(seed, "fsha_batches"))
        self.pilot = bottom
        with adversary_rng(seed, "fsha_models"):  # the server's own pilot: fresh weights
            for module in bottom.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            with torch.no_grad():
                z_dim = bottom(aux_x[:2]).reshape(2, -1).shape[1]
            x_dim = aux_x[0].numel()
            self.decoder = nn.Sequential(
                nn.Linear(z_dim, p.hidden), nn.ReLU(), nn.Linear(p.hidden, x_dim)
            )
            self.disc = nn.Sequential(nn.Linear(z_dim, p.hidden), nn.ReLU(), nn.Linear(p.hidden, 1))
        self.opt_ae = torch.optim.Adam(
            [*self.pilot.parameters(), *self.decoder.parameters()], lr=p.lr
        )
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=p.lr)
        for _ in range(p.pretrain_steps):
            self._autoencoder_step(aux_x)
        self.ready = True

    def _autoencoder_step(self, xa: torch.Tensor) -> None:
        self.opt_ae.zero_grad()
        rec = self.decoder(self.pilot(xa).reshape(len(xa), -1))
        nn.functional.mse_loss(rec, xa.reshape(len(xa), -1)).backward()
        self.opt_ae.step()

    def split_server_gradients(self, round_: int, client: int, activations: torch.Tensor):  # type: ignore[no-untyped-def]
        """One FSHA step; returns the gradient sent back to the client in place of the task's."""
        n = len(activations)
        idx = torch.randint(len(self.aux), (n,), generator=self.gen)
        xa = self.aux[idx]
        if self.params.train_pilot:  # 1. pilot autoencoder on auxiliary data
            self._autoencoder_step(xa)
        real = self.pilot(xa).reshape(n, -1).detach()
        if self.params.critic == "mmd":
            z = activations.detach().clone().requires_grad_(True)
            mmd2(z.reshape(n, -1), real).backward()
            return self.params.gradient_scale * z.grad.detach()
        # 2. WGAN-GP critic: pilot features are "real", client activations "fake"
        fake = activations.reshape(n, -1).detach()
        self.opt_d.zero_grad()
        loss_d = self.disc(fake).mean() - self.disc(real).mean()
        if self.params.gp_weight > 0:
            eps = torch.rand(n, 1, generator=self.gen)
            mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
            g = torch.autograd.grad(self.disc(mix).sum(), mix, create_graph=True)[0]
            loss_d = loss_d + self.params.gp_weight * ((g.norm(dim=1) - 1) ** 2).mean()
        loss_d.backward()
        self.opt_d.step()
        # 3. generator gradient for the client's bottom model
        z = activations.detach().clone().requires_grad_(True)
        (-self.disc(z.reshape(n, -1)).mean()).backward()
        return self.params.gradient_scale * z.grad.detach()

    def observe(self, msg: Message) -> None:
        if msg.kind == "activations" and msg.receiver == SERVER:
            n = self._count[(msg.round, msg.sender)]
            self._count[(msg.round, msg.sender)] += 1
            self.activations[(msg.round, _client_id(msg.sender), n)] = msg.payload.detach()

    def finalize(self, view: FinalView) -> Reconstructions:
        if not self.ready or not self.activations:
            raise PrivlabError(f"{self.field}: the malicious server never took part")
        last = max(key[0] for key in self.activations)
        out: dict[BatchKey, np.ndarray] = {}
        total = 0
        with torch.no_grad():
            for key in sorted(k for k in self.activations if k[0] == last):
                if total >= self.params.max_examples:
                    break
                z = self.activations[key]
                out[key] = self.decoder(z.reshape(len(z), -1)).reshape(len(z), *self.aux.shape[1:])
                out[key] = out[key].numpy()
                total += len(z)
        return Reconstructions(
            out, image=self.aux.dim() == 4, prior=population_prior(view), seed=view.recipe.seed
        )
