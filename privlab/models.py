"""Small models chosen by name. All are Opacus-compatible (GroupNorm, no BatchNorm)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from privlab.errors import ScenarioError
from privlab.scenario import ModelSpec, validate_params

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class LogRegParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MLPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: list[int] = Field(default_factory=lambda: [64])
    activation: Literal["relu", "tanh", "sigmoid"] = "relu"


class CNNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: list[int] = Field(default_factory=lambda: [16, 32])
    kernel_size: int = Field(default=3, gt=0)
    activation: Literal["relu", "tanh", "sigmoid"] = "relu"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def build_logreg(params: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    validate_params(LogRegParams, params, "model.params")
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(input_shape), num_classes))


def build_mlp(params: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    p = validate_params(MLPParams, params, "model.params")
    if any(h <= 0 for h in p.hidden):
        raise ScenarioError(f"model.params.hidden: widths must be positive (got {p.hidden})")
    layers: list[nn.Module] = [nn.Flatten()]
    width = _numel(input_shape)
    for h in p.hidden:
        layers += [nn.Linear(width, h), _ACTIVATIONS[p.activation]()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_cnn(params: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv2d for (C,H,W) images, Conv1d for (C,L) sequences; tabular input is refused."""
    p = validate_params(CNNParams, params, "model.params")
    if len(input_shape) not in (2, 3):
        raise ScenarioError(
            f"model.name: 'cnn' needs image (C,H,W) or sequence (C,L) input, "
            f"got shape {input_shape}; use 'mlp' or 'logreg' for tabular data"
        )
    conv = nn.Conv2d if len(input_shape) == 3 else nn.Conv1d
    pad = p.kernel_size // 2
    layers: list[nn.Module] = []
    c_in = input_shape[0]
    for c in p.channels:
        groups = min(4, c) if c % min(4, c) == 0 else 1
        layers += [
            conv(c_in, c, p.kernel_size, padding=pad),
            nn.GroupNorm(groups, c),
            _ACTIVATIONS[p.activation](),
        ]
        c_in = c
    pool = nn.AdaptiveAvgPool2d(2) if len(input_shape) == 3 else nn.AdaptiveAvgPool1d(4)
    spatial = 4
    layers += [pool, nn.Flatten(), nn.Linear(c_in * spatial, num_classes)]
    return nn.Sequential(*layers)


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    from privlab import registry

    builder = registry.models.get(spec.name, "model.name")
    return builder(spec.params, input_shape, num_classes)
