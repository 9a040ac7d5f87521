"""Small models chosen by name. All are Opacus-compatible (GroupNorm, no BatchNorm)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

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
    pool: bool = False
    """A 2x max-pool after each conv block (cheaper, and translation-tolerant, on 32x32)."""


MAX_PARAMETERS = 2**28
"""Largest built-in model accepted: 268M parameters are 1 GiB of float32 weights per copy, and
training keeps several copies (gradients, momentum, the global model, reference models)."""


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _refuse_oversized(parameters: int, field: str, value: object) -> None:
    """Count before allocating: an oversized layer would otherwise fail inside torch's
    allocator (a traceback) or swap the machine, long after the scenario could be refused."""
    if parameters > MAX_PARAMETERS:
        raise ScenarioError(
            f"model.params.{field}: {value} makes a model of {parameters:,} parameters; "
            f"built-in models hold at most {MAX_PARAMETERS:,} (1 GiB of float32 weights)"
        )


def build_logreg(params: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    validate_params(LogRegParams, params, "model.params")
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(input_shape), num_classes))


def build_mlp(params: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    p = validate_params(MLPParams, params, "model.params")
    if any(h <= 0 for h in p.hidden):
        raise ScenarioError(f"model.params.hidden: widths must be positive (got {p.hidden})")
    widths = [_numel(input_shape), *p.hidden, num_classes]
    _refuse_oversized(sum((a + 1) * b for a, b in pairwise(widths)), "hidden", p.hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    width = _numel(input_shape)
    for h in p.hidden:
        layers += [nn.Linear(width, h), _ACTIVATIONS[p.activation]()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _pooled_blocks_that_fit(side: int, kernel: int, blocks: int) -> int:
    """How many of `blocks` conv blocks (padding kernel // 2, then a 2x max-pool) leave the
    side above 0 (max-pooling a side of 1 fails in torch)."""
    for i in range(blocks):
        side = (side + 2 * (kernel // 2) - kernel + 1) // 2
        if side == 0:
            return i
    return blocks


def build_cnn(params: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv2d for (C,H,W) images, Conv1d for (C,L) sequences; tabular input is refused."""
    p = validate_params(CNNParams, params, "model.params")
    if len(input_shape) not in (2, 3):
        raise ScenarioError(
            f"model.name: 'cnn' needs image (C,H,W) or sequence (C,L) input, "
            f"got shape {input_shape}; use 'mlp' or 'logreg' for tabular data"
        )
    if any(c <= 0 for c in p.channels):
        raise ScenarioError(f"model.params.channels: must be positive (got {p.channels})")
    side = min(input_shape[1:])
    if p.kernel_size > side:
        raise ScenarioError(
            f"model.params.kernel_size: at most the input's smallest side, {side} "
            f"(input shape {input_shape}), got {p.kernel_size}"
        )
    fit = _pooled_blocks_that_fit(side, p.kernel_size, len(p.channels)) if p.pool else None
    if fit is not None and fit < len(p.channels):
        raise ScenarioError(
            f"model.params.pool: {len(p.channels)} pooled blocks shrink the input's smallest "
            f"side, {side}, to nothing; at most {fit} blocks with pool = true"
        )
    conv = nn.Conv2d if len(input_shape) == 3 else nn.Conv1d
    taps = p.kernel_size ** (len(input_shape) - 1)
    chans = [input_shape[0], *p.channels]
    count = sum((a * taps + 3) * b for a, b in pairwise(chans)) + (chans[-1] * 4 + 1) * num_classes
    _refuse_oversized(count, "channels", f"{p.channels} (kernel_size {p.kernel_size})")
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
        if p.pool:
            layers.append(nn.MaxPool2d(2) if len(input_shape) == 3 else nn.MaxPool1d(2))
        c_in = c
    pool = nn.AdaptiveAvgPool2d(2) if len(input_shape) == 3 else nn.AdaptiveAvgPool1d(4)
    spatial = 4
    layers += [pool, nn.Flatten(), nn.Linear(c_in * spatial, num_classes)]
    return nn.Sequential(*layers)


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    from privlab import registry

    builder = registry.models.get(spec.name, "model.name")
    if builder is build_python:
        return build_python(spec.params, input_shape, num_classes, folder=spec._base_dir)
    return builder(spec.params, input_shape, num_classes)


# --------------------------------------------------------------------------- your own model

FACTORY_HASH_KEY = "source_sha256"
"""Set by privlab in `model.params`: the factory file's content hash, so a cached reference
model (keyed by the model spec) never outlives an edit of the user's `nets.py`."""


class PythonParams(BaseModel):
    model_config = ConfigDict(extra="allow")
    factory: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """`package.module:function`; the function takes (input_shape, num_classes, **kwargs)."""


_FACTORIES: dict[tuple[str, str | None, str | None], Any] = {}


def _import_factory(spec: str, folder: Path | None) -> Any:
    """Import `module:function`, with the scenario's folder first on sys.path only meanwhile.

    A module that lives in that folder is imported afresh whenever its file's content differs
    from the one imported before, so an edited `nets.py` is picked up within one process (a
    notebook); it is then taken out of `sys.modules` again (the function keeps it alive), so the
    user's own `import nets` elsewhere is not shadowed by a scenario's.
    """
    module_name, _, func_name = spec.partition(":")
    local = _local_file(module_name, folder)
    key = (spec, None if local is None else str(local), _sha256(local))
    if key in _FACTORIES:
        return _FACTORIES[key]
    top = module_name.split(".")[0]
    saved = {}
    if local is not None:
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            saved[name] = sys.modules.pop(name)
    inserted = folder is not None and str(folder) not in sys.path
    if inserted:
        sys.path.insert(0, str(folder))
    try:
        importlib.invalidate_caches()
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = f" (looked in {folder} and the installed packages)" if folder else ""
        raise ScenarioError(
            f"model.params.factory: cannot import '{module_name}': {exc}{where}"
        ) from None
    except Exception as exc:  # the user's module failed while importing
        raise ScenarioError(
            f"model.params.factory: importing '{module_name}' failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        if inserted:
            sys.path.remove(str(folder))
        if local is not None:
            for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                del sys.modules[name]
            sys.modules.update(saved)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ScenarioError(
            f"model.params.factory: module '{module_name}' has no function '{func_name}'"
        )
    _FACTORIES[key] = fn
    return fn


def _sha256(path: Path | None) -> str | None:
    return None if path is None else hashlib.sha256(path.read_bytes()).hexdigest()


def _local_file(module_name: str, folder: Path | None) -> Path | None:
    """The module's source file inside the scenario folder, if it lives there."""
    if folder is None:
        return None
    base = folder.joinpath(*module_name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def factory_hash(spec: str, folder: Path | None) -> str | None:
    """SHA-256 of the factory module's source file (None: not a file in the scenario folder
    and not found by import machinery)."""
    module_name = spec.partition(":")[0]
    path = _local_file(module_name, folder)
    if path is None:
        try:
            found = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            found = None
        origin = getattr(found, "origin", None) if found else None
        path = Path(origin) if origin and origin.endswith(".py") else None
    return _sha256(path)


def build_python(
    params: dict, input_shape: tuple[int, ...], num_classes: int, *, folder: Path | None = None
) -> nn.Module:
    """Your own architecture: `factory(input_shape, num_classes, **kwargs)` -> nn.Module."""
    p = validate_params(PythonParams, params, "model.params")
    kwargs = {k: v for k, v in (p.model_extra or {}).items() if k != FACTORY_HASH_KEY}
    fn = _import_factory(p.factory, folder)
    try:
        model = fn(tuple(input_shape), int(num_classes), **kwargs)
    except TypeError as exc:
        raise ScenarioError(
            f"model.params: {p.factory}(input_shape, num_classes, **{sorted(kwargs)}) failed: {exc}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ScenarioError(
            f"model.params.factory: {p.factory} returned {type(model).__name__}, not an nn.Module"
        )
    return model


def check_model(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, *, dp: bool
) -> None:
    """Build the model once while preparing: a forward pass must give (1, num_classes) logits,
    and under DP-SGD every layer must support per-sample gradients (Opacus' ModuleValidator),
    so a bad architecture fails with one line before any variant trains."""
    import torch

    if spec.name == "python":
        factory = validate_params(PythonParams, spec.params, "model.params").factory
        spec.params[FACTORY_HASH_KEY] = factory_hash(factory, spec._base_dir)
    model = build_model(spec, input_shape, num_classes)
    if dp:
        problem = dp_problem(model)
        if problem:
            raise ScenarioError(f"model.name: '{spec.name}' is not DP-SGD compatible: {problem}")
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *input_shape)))
    except Exception as exc:
        raise ScenarioError(
            f"model.name: '{spec.name}' fails on an input of shape {(2, *input_shape)}: "
            f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ScenarioError(
            f"model.name: '{spec.name}' must return logits of shape (batch, {num_classes}), "
            f"got {shape}"
        )


def dp_problem(model: nn.Module) -> str | None:
    """The first layer Opacus cannot train with DP-SGD, named by its path in the model, with
    the first sentence of Opacus' reason (its ModuleValidator; every other layer gets
    per-sample gradients through functorch)."""
    from opacus.validators import ModuleValidator

    for name, module in model.named_modules():
        trainable = any(p.requires_grad for p in module.parameters(recurse=False))
        if not trainable:
            continue
        where = f"layer '{name or '<root>'}' ({type(module).__name__})"
        check = ModuleValidator.VALIDATORS.get(type(module))
        errors = check(module) if check is not None else []
        if errors:
            reason = str(errors[0]).split(". ")[0].rstrip(".")
            return f"{where}: {reason} (see opacus.validators.ModuleValidator.fix)"
    return None
