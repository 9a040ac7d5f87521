"""Attacks at the cut layer of split learning.

Label leakage (Li et al. 2022, "Label Leakage and Protection in Two-party Split Learning",
ICLR): the party without labels receives, per example, the gradient of the loss with respect to
its outputs. With cross-entropy that gradient is (p - onehot(y)) pulled back through the label
party's layers, so
- `norm`: examples of the minority class, on which the model is less confident, get larger
  gradient norms; the norm is the score;
- `cosine`: gradients of the two classes point in opposite directions; the score is the cosine
  similarity to a reference gradient (the paper uses a known positive; here the largest-norm
  example, with the sign chosen so that the smaller of the two clusters is the positive one).
Setting: U-shaped split learning (labels on the client); the server is the adversary observing
the gradients its outputs receive. Graded by the referee as AUC for "minority class", the
paper's "leak AUC", averaged over batches. Qualitative result reproduced: near-perfect AUC
without defense; the max-norm gradient perturbation lowers the norm attack's AUC.

Activation inversion by an inverse model (He et al. 2019, "Model inversion attacks against
collaborative inference", ACSAC): the server holds auxiliary records of the same distribution
(here: the population data no client trains on) and the bottom weights (relayed through it when
`handoff = "server"`); it trains a decoder from activations back to inputs and applies it to
the activations clients sent. Graded as MSE (and PSNR for images) against the true inputs.
Qualitative result reproduced: inversion is far better than the know-nothing baseline without
defense; NoPeek and activation noise make it worse.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import roc_auc_score
from torch import nn

from privlab.attacks.base import (
    Attack,
    AttackResult,
    FinalView,
    RefereeGraded,
    RefereeTruth,
    ThreatModel,
)
from privlab.errors import PrivlabError, ScenarioError
from privlab.wire import SERVER, Message

BatchKey = tuple[int, int, int]


def _client_id(party: str) -> int:
    return int(party.removeprefix("client"))


def norm_scores(grad: np.ndarray) -> np.ndarray:
    """Li et al.'s norm attack: per-example gradient norm."""
    return np.linalg.norm(grad.reshape(len(grad), -1), axis=1)


def cosine_scores(grad: np.ndarray) -> np.ndarray:
    """Li et al.'s direction attack without a known positive: cosine to a reference gradient
    (the largest-norm example) splits the batch into two opposite clusters; the smaller cluster
    is taken as the minority (positive) class, so the score is flipped if the reference's
    cluster is the larger one."""
    flat = grad.reshape(len(grad), -1).astype(np.float64)
    norms = np.linalg.norm(flat, axis=1)
    ref = flat[int(np.argmax(norms))]
    cos = flat @ ref / np.maximum(norms * np.linalg.norm(ref), 1e-12)
    same = int((cos > 0).sum())
    return cos if same <= len(cos) - same else -cos


# --------------------------------------------------------------------------- label leakage


@dataclass
class LabelScores(RefereeGraded):
    """Per-batch scores (higher = minority class), graded as the paper's leak AUC."""

    scores: dict[BatchKey, np.ndarray]

    def grade(self, truth: RefereeTruth) -> AttackResult:
        batches = truth.log.get("split_batches", {})
        keys = [k for k in self.scores if k in batches]
        if not keys:
            raise PrivlabError("label leakage: no observed batch matches the referee's log")
        labels = {k: truth.y_train[batches[k]] for k in keys}
        seen = np.concatenate(list(labels.values()))
        classes, counts = np.unique(seen, return_counts=True)
        positive = int(classes[np.argmin(counts)])
        per_batch = []
        for k in keys:
            y = labels[k] == positive
            if y.any() and not y.all():
                per_batch.append(roc_auc_score(y, self.scores[k]))
        pooled_y = np.concatenate([labels[k] == positive for k in keys])
        pooled_s = np.concatenate([self.scores[k] for k in keys])
        return AttackResult(
            {
                "auc": float(np.mean(per_batch)) if per_batch else float("nan"),
                "pooled_auc": float(roc_auc_score(pooled_y, pooled_s)),
                "positive_class": positive,
                "n_batches": len(per_batch),
                "n_examples": len(pooled_y),
            }
        )


class LabelLeakageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["norm", "cosine"] = "norm"
    party: str = Field(default=SERVER, pattern=r"^(server|client\d+)$")
    """The party that receives cut-layer gradients without holding the labels."""
    min_round: int = Field(default=1, ge=1)
    max_round: int | None = Field(default=None, ge=1)
    """Only use gradients of rounds min_round..max_round (None: to the end)."""


class LabelLeakageAttack(Attack):
    """Label leakage from cut-layer gradients, norm or cosine attack (Li et al. 2022)."""

    family = "label_leakage"
    Params = LabelLeakageParams
    topologies = frozenset({"split"})

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        self.scores: dict[BatchKey, np.ndarray] = {}
        self._count: dict[tuple[int, str], int] = defaultdict(int)

    def threat_model(self) -> ThreatModel:
        knowledge = (
            ("the minority class gets the larger gradients",)
            if self.params.method == "norm"
            else ("the positive class is the minority within a batch",)
        )
        return ThreatModel(adversary="cut_layer", party=self.params.party, knowledge=knowledge)

    def check_setting(self, scenario, input_shape, num_classes) -> None:  # type: ignore[no-untyped-def]
        from privlab.topologies.split import split_params

        p = self.params
        if scenario.topology.name == "split":
            mode = split_params(scenario).mode
            if mode == "vanilla" and p.party == SERVER:
                raise ScenarioError(
                    f"{self.field}.params.party: in vanilla split learning the server already "
                    "receives the labels (nothing to infer); use topology.params.mode = "
                    "'u_shaped' or a client as the party"
                )
        if p.party != SERVER and _client_id(p.party) >= scenario.partition.num_clients:
            raise ScenarioError(
                f"{self.field}.params.party: '{p.party}' does not exist "
                f"({scenario.partition.num_clients} clients)"
            )

    def observe(self, msg: Message) -> None:
        if msg.kind != "gradients" or msg.receiver != self.params.party:
            return
        other = msg.sender
        n = self._count[(msg.round, other)]
        self._count[(msg.round, other)] += 1
        p = self.params
        if msg.round < p.min_round or (p.max_round is not None and msg.round > p.max_round):
            return
        if not other.startswith("client"):  # a client receiving from the server
            other = self.params.party
        grad = msg.payload.detach().double().numpy()
        score = norm_scores(grad) if self.params.method == "norm" else cosine_scores(grad)
        self.scores[(msg.round, _client_id(other), n)] = score

    def finalize(self, view: FinalView) -> LabelScores:
        if not self.scores:
            raise PrivlabError(
                f"{self.field}: party '{self.params.party}' received no cut-layer gradients "
                "(in vanilla split learning the server already holds the labels: use "
                "topology.params.mode = 'u_shaped', or a client as the party)"
            )
        return LabelScores(self.scores)


# --------------------------------------------------------------------------- inversion


@dataclass
class Reconstructions(RefereeGraded):
    """Reconstructed inputs per observed batch, graded against the true inputs."""

    x_hat: dict[BatchKey, np.ndarray]
    image: bool

    def grade(self, truth: RefereeTruth) -> AttackResult:
        batches = truth.log.get("split_batches", {})
        keys = [k for k in self.x_hat if k in batches]
        if not keys:
            raise PrivlabError("inversion: no observed batch matches the referee's log")
        x_true = np.concatenate([truth.x_train[batches[k]] for k in keys]).astype(np.float64)
        x_hat = np.concatenate([self.x_hat[k] for k in keys]).astype(np.float64)
        x_hat = x_hat.reshape(x_true.shape)
        mse = float(np.mean((x_hat - x_true) ** 2))
        baseline = float(np.mean((x_true - truth.x_train.mean(axis=0)) ** 2))
        metrics: dict[str, float | int] = {
            "mse": mse,
            "mse_baseline": baseline,
            "mse_ratio": mse / baseline if baseline > 0 else float("nan"),
            "n_examples": len(x_true),
        }
        artifacts = {}
        if self.image:
            from privlab.image_metrics import psnr

            clipped = np.clip(x_hat, 0.0, 1.0)
            metrics["psnr"] = float(np.mean(psnr(clipped, x_true)))
            artifacts["examples"] = {
                "true": np.round(x_true[:8], 3).tolist(),
                "reconstructed": np.round(clipped[:8], 3).tolist(),
            }
        return AttackResult(metrics, artifacts)


class InversionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(default=256, ge=1)
    epochs: int = Field(default=200, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    max_examples: int = Field(default=256, ge=1)


class ActivationInversionAttack(Attack):
    """Inverse-model reconstruction of client inputs from activations (He et al. 2019)."""

    family = "input_reconstruction"
    Params = InversionParams
    topologies = frozenset({"split"})

    def __init__(self, spec, field) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, field)
        self.activations: dict[BatchKey, torch.Tensor] = {}
        self._count: dict[tuple[int, str], int] = defaultdict(int)
        self.bottom: tuple[int, int, dict[str, torch.Tensor]] | None = None

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="cut_layer",
            party=SERVER,
            knowledge=("auxiliary data from the population", "bottom weights relayed by server"),
        )

    def check_setting(self, scenario, input_shape, num_classes) -> None:  # type: ignore[no-untyped-def]
        from privlab.topologies.split import split_params

        if scenario.topology.name != "split":
            return
        if split_params(scenario).handoff != "server" or scenario.partition.num_clients < 2:
            raise ScenarioError(
                f"{self.field}.name: '{self.spec.name}' needs the server to see the bottom "
                "model: set topology.params.handoff = 'server' and use 2 or more clients"
            )

    def observe(self, msg: Message) -> None:
        if msg.kind == "activations" and msg.receiver == SERVER:
            n = self._count[(msg.round, msg.sender)]
            self._count[(msg.round, msg.sender)] += 1
            self.activations[(msg.round, _client_id(msg.sender), n)] = msg.payload.detach()
        elif msg.kind == "bottom_model" and msg.sender == SERVER:
            self.bottom = (msg.round, _client_id(msg.receiver), msg.payload)

    def finalize(self, view: FinalView) -> Reconstructions:
        from privlab.topologies.split import cut_model, split_params

        if self.bottom is None or view.population is None:
            raise PrivlabError(f"{self.field}: the server saw no bottom model to invert")
        r, k, state = self.bottom
        bottom, _, _ = cut_model(view.model_factory(), split_params(view.recipe))
        bottom.load_state_dict({n: v for n, v in state.items() if n in bottom.state_dict()})
        targets = sorted(key for key in self.activations if key[:2] == (r, k))
        x_aux = torch.as_tensor(view.population.x)
        with torch.no_grad():
            z_aux = bottom(x_aux)
        decoder = train_decoder(z_aux, x_aux, self.params, seed=view.recipe.seed)
        out: dict[BatchKey, np.ndarray] = {}
        total = 0
        with torch.no_grad():
            for key in targets:
                if total >= self.params.max_examples:
                    break
                z = self.activations[key]
                out[key] = decoder(z.reshape(len(z), -1)).reshape(len(z), *x_aux.shape[1:]).numpy()
                total += len(z)
        return Reconstructions(out, image=x_aux.dim() == 4)


def train_decoder(z: torch.Tensor, x: torch.Tensor, p: InversionParams, seed: int) -> nn.Module:
    """An MLP decoder z -> x trained with MSE on auxiliary pairs (full batch, Adam)."""
    torch.manual_seed(seed)
    zf, xf = z.reshape(len(z), -1), x.reshape(len(x), -1)
    decoder = nn.Sequential(
        nn.Linear(zf.shape[1], p.hidden), nn.ReLU(), nn.Linear(p.hidden, xf.shape[1])
    )
    opt = torch.optim.Adam(decoder.parameters(), lr=p.lr)
    for _ in range(p.epochs):
        opt.zero_grad()
        loss = nn.functional.mse_loss(decoder(zf), xf)
        loss.backward()
        opt.step()
    return decoder


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
        from privlab.topologies.split import cut_model, split_params

        if not self.activations:
            raise PrivlabError(f"{self.field}: the server saw no activations")
        last = max(key[0] for key in self.activations)
        targets = sorted(key for key in self.activations if key[0] == last)
        torch.manual_seed(view.recipe.seed)
        surrogate, _, _ = cut_model(view.model_factory(), split_params(view.recipe))
        x_shape = tuple(view.population.x.shape[1:]) if view.population is not None else ()
        if not x_shape:
            x_shape = tuple(view.challenge.x.shape[1:]) if view.challenge is not None else ()
        gen = torch.Generator().manual_seed(view.recipe.seed)
        out: dict[BatchKey, np.ndarray] = {}
        total = 0
        for key in targets:
            if total >= self.params.max_examples:
                break
            z = self.activations[key]
            out[key] = unsplit_invert(z, surrogate, x_shape, self.params, gen).numpy()
            total += len(z)
        return Reconstructions(out, image=len(x_shape) == 3)


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
        torch.manual_seed(seed + 1)  # the server's own pilot: same architecture, fresh weights
        for module in bottom.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        p = self.params
        self.aux = aux_x
        self.gen = torch.Generator().manual_seed(seed)
        self.pilot = bottom
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
        return Reconstructions(out, image=self.aux.dim() == 4)
