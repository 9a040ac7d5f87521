"""Input reconstruction from cut-layer activations by an inverse model (He et al. 2019).

"Model inversion attacks against collaborative inference" (ACSAC 2019), the query-free /
shadow setting: the server holds auxiliary images and the bottom weights (relayed through it
when `handoff = "server"`); it passes its auxiliary images through its copy of the bottom,
trains a decoder from activations back to images, and applies it to the activations the
clients sent during the turn that started from that bottom. Graded as MSE, PSNR and SSIM
against the true inputs, each beside the population mean image (the know-nothing baseline).

- `aux = "population"`: auxiliary images from the clients' own distribution (the test pool);
  `aux = "public"`: the dataset's public records (`Dataset.x_public`, e.g. studio photographs
  of signs the server pretrained on), a shifted distribution the server holds legitimately.
- `decoder = "mlp"`: one hidden layer on the flattened activations; `"conv"`: a convolutional
  decoder that upsamples the activation map back to the image (He et al. use a conv inverse
  network for image data).
- `adaptive = true` (Kerckhoffs): the attacker knows the variant's defense from the public
  recipe and trains the decoder on activations passed through it: the same Gaussian noise
  (`activation_noise` sigma) on its auxiliary activations. NoPeek and DP-SGD act on the bottom
  weights, which the server already holds, so there the naive and adaptive attacks coincide.
Qualitative result reproduced: far better than the mean image without defense; activation
noise makes it worse, an adaptive decoder recovers part of the loss.
"""

from __future__ import annotations

import math
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
    digest,
    population_prior,
)
from privlab.attacks.split_common import client_id as _client_id
from privlab.errors import PrivlabError, ScenarioError
from privlab.wire import SERVER, Message


class InversionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(default=256, ge=1)
    """MLP: hidden units; conv: channels of the decoder's convolutions."""
    epochs: int = Field(default=200, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    max_examples: int = Field(default=256, ge=1)
    decoder: Literal["mlp", "conv"] = "mlp"
    aux: Literal["population", "public"] = "population"
    adaptive: bool = False
    """Train on auxiliary activations passed through the variant's activation noise."""
    batch_size: int = Field(default=64, ge=1)
    """Conv decoder: minibatch size of its Adam steps (the MLP trains full batch)."""


def defense_noise_sigma(view: FinalView) -> float:
    """The Gaussian sigma the variant's public recipe adds to activations (0 if none)."""
    return float(
        sum(d.params.get("sigma", 0.5) ** 2 for d in view.defenses if d.name == "activation_noise")
        ** 0.5
    )


def conv_decoder(z_shape: tuple[int, ...], x_shape: tuple[int, ...], width: int) -> nn.Module:
    """Upsample a (C, h, w) activation map to a (C', H, W) image: a 3x3 conv at the map's
    resolution, one transposed conv per factor of 2, a 3x3 conv to the image's channels and
    a sigmoid (images live in [0, 1]). Kept narrow at full resolution: it trains on CPU."""
    c, h = z_shape[0], z_shape[1]
    factor = x_shape[1] // h
    if factor < 1 or x_shape[1] != h * factor or factor & (factor - 1):
        raise PrivlabError(f"conv decoder: cannot upsample {z_shape} to {x_shape}")
    layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
    for _ in range(int(math.log2(factor))):
        layers += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.ReLU()]
    layers += [nn.Conv2d(width, x_shape[0], 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(*layers)


_DECODERS: dict[str, nn.Module] = {}


def cached_decoder(
    z: torch.Tensor, x: torch.Tensor, p: InversionParams, sigma: float, seed: int
) -> nn.Module:
    """`train_decoder` under the adversary's seed, kept for an identical request (the naive and
    the adaptive attack train the same decoder where the variant adds no activation noise)."""
    key = digest(z, x, p.model_dump(exclude={"adaptive", "max_examples", "aux"}), sigma, seed)
    if key not in _DECODERS:
        gen = torch.Generator().manual_seed(adversary_seed(seed, "inverse_batches"))
        with adversary_rng(seed, "inverse_model"):
            _DECODERS.clear()
            _DECODERS[key] = train_decoder(z, x, p, sigma=sigma, generator=gen)
    return _DECODERS[key]


def train_decoder(
    z: torch.Tensor,
    x: torch.Tensor,
    p: InversionParams,
    *,
    sigma: float = 0.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """A decoder z -> x trained with MSE on auxiliary pairs (Adam), initialised from the global
    torch RNG (callers wrap it in `adversary_rng`). With `sigma`, each step sees the
    activations with fresh Gaussian noise of that std (the adaptive attacker)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    def noisy(zb: torch.Tensor) -> torch.Tensor:
        if sigma <= 0:
            return zb
        return zb + sigma * torch.randn(zb.shape, generator=gen, dtype=zb.dtype)

    if p.decoder == "conv" and z.dim() == 4 and x.dim() == 4:
        decoder = conv_decoder(tuple(z.shape[1:]), tuple(x.shape[1:]), p.hidden)
        opt = torch.optim.Adam(decoder.parameters(), lr=p.lr)
        for _ in range(p.epochs):
            order = torch.randperm(len(z), generator=gen)
            for i in range(0, len(z), p.batch_size):
                b = order[i : i + p.batch_size]
                opt.zero_grad()
                nn.functional.mse_loss(decoder(noisy(z[b])), x[b]).backward()
                opt.step()
        return decoder
    zf, xf = z.reshape(len(z), -1), x.reshape(len(x), -1)
    mlp = nn.Sequential(
        nn.Flatten(), nn.Linear(zf.shape[1], p.hidden), nn.ReLU(), nn.Linear(p.hidden, xf.shape[1])
    )
    opt = torch.optim.Adam(mlp.parameters(), lr=p.lr)
    for _ in range(p.epochs):
        opt.zero_grad()
        nn.functional.mse_loss(mlp(noisy(zf)), xf).backward()
        opt.step()
    return mlp


def _has_public(scenario) -> bool:  # type: ignore[no-untyped-def]
    """Whether the scenario's dataset carries public records (known loaders: traffic_signs)."""
    if scenario.data.name == "traffic_signs":
        return int(scenario.data.params.get("public_images", 0)) > 0
    return True  # a plug-in dataset may carry them: checked again when the attack runs


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
        aux = (
            "the public images (it pretrained the base model on them)"
            if self.params.aux == "public"
            else "auxiliary data from the population"
        )
        knowledge = [aux, "bottom weights relayed by server"]
        if self.params.adaptive:
            knowledge.append("the variant's defense and its parameters (public recipe)")
        return ThreatModel(adversary="cut_layer", party=SERVER, knowledge=tuple(knowledge))

    def check_setting(self, scenario, input_shape, num_classes) -> None:  # type: ignore[no-untyped-def]
        from privlab.topologies.split import split_params

        if self.params.aux == "public" and not _has_public(scenario):
            raise ScenarioError(
                f"{self.field}.params.aux: 'public' needs public records in the dataset "
                "(traffic_signs: set data.params.public_images > 0)"
            )
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

    def _aux(self, view: FinalView) -> torch.Tensor:
        source = view.side_information.get("public") if self.params.aux == "public" else None
        if self.params.aux == "public" and source is None:
            raise PrivlabError(
                f"{self.field}.params.aux: 'public' needs public records in the dataset "
                "(traffic_signs: data.params.public_images > 0)"
            )
        source = source if source is not None else view.population
        if source is None:
            raise PrivlabError(f"{self.field}: no auxiliary data to train the decoder on")
        return torch.as_tensor(source.x)

    def finalize(self, view: FinalView) -> Reconstructions:
        from privlab.topologies.split import cut_model, split_params

        if self.bottom is None:
            raise PrivlabError(f"{self.field}: the server saw no bottom model to invert")
        r, k, state = self.bottom
        bottom, _, _ = cut_model(view.model_factory(), split_params(view.recipe))
        bottom.load_state_dict({n: v for n, v in state.items() if n in bottom.state_dict()})
        targets = sorted(key for key in self.activations if key[:2] == (r, k))
        x_aux = self._aux(view)
        with torch.no_grad():
            z_aux = bottom(x_aux)
        sigma = defense_noise_sigma(view) if self.params.adaptive else 0.0
        decoder = cached_decoder(z_aux, x_aux, self.params, sigma, view.recipe.seed)
        out: dict[BatchKey, np.ndarray] = {}
        total = 0
        with torch.no_grad():
            for key in targets:
                if total >= self.params.max_examples:
                    break
                z = self.activations[key]
                out[key] = decoder(z).reshape(len(z), *x_aux.shape[1:]).numpy()
                total += len(z)
        return Reconstructions(
            out, image=x_aux.dim() == 4, prior=population_prior(view), seed=view.recipe.seed
        )
