"""Tiny registries, one per kind of component, filled lazily.

Built-in entries are registered as ``"module:attr"`` strings with a one-line summary so that
`privlab list` and scenario validation never import torch. Third-party components plug in
through entry points (groups ``privlab.datasets``, ``privlab.models``, ``privlab.topologies``,
``privlab.attacks``, ``privlab.defenses``), as Opacus registers its accountants.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from privlab.errors import ScenarioError


@dataclass(frozen=True)
class Entry:
    name: str
    target: Any  # "module:attr" or the object itself
    summary: str

    def load(self) -> Any:
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self.target


class Registry:
    """Name -> component for one kind (dataset, model, topology, attack, defense)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._plugins_loaded = False

    def register(self, name: str, target: Any, summary: str = "") -> None:
        if not summary and not isinstance(target, str):
            summary = (target.__doc__ or "").strip().splitlines()[0] if target.__doc__ else ""
        self._entries[name] = Entry(name, target, summary)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=f"privlab.{self.kind}s"):
            if ep.name not in self._entries:
                self._entries[ep.name] = Entry(ep.name, ep.value, f"(plugin {ep.value})")

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries

    def check(self, name: str, field: str) -> None:
        """Raise a one-line ScenarioError naming the field, the value and the closest match."""
        if name in self:
            return
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ScenarioError(
            f"{field}: unknown {self.kind} '{name}'{hint} (allowed: {', '.join(self.names())})"
        )

    def get(self, name: str, field: str | None = None) -> Any:
        self.check(name, field or self.kind)
        return self._entries[name].load()


datasets = Registry("dataset")
models = Registry("model")
topologies = Registry("topology")
attacks = Registry("attack")
defenses = Registry("defense")

datasets.register(
    "digits",
    "privlab.data:load_digits",
    "scikit-learn's 8x8 handwritten digits, 1797 samples, 10 classes",
)
datasets.register(
    "breast_cancer",
    "privlab.data:load_breast_cancer",
    "scikit-learn's Wisconsin breast cancer, 569 samples, 30 features, 2 classes",
)
datasets.register(
    "mnist1d",
    "privlab.data:load_mnist1d",
    "MNIST-1D made locally by the mnist1d generator (never downloaded), length 40, 10 classes",
)
datasets.register(
    "synthetic",
    "privlab.data:load_synthetic",
    "scikit-learn make_classification: n_samples, n_features, n_classes, class_sep",
)
datasets.register(
    "file",
    "privlab.data:load_file",
    "your own .npz (x, y[, x_test, y_test]) or .csv (label column) file",
)

models.register(
    "logreg", "privlab.models:build_logreg", "multinomial logistic regression (one linear layer)"
)
models.register(
    "mlp",
    "privlab.models:build_mlp",
    "multi-layer perceptron; params: hidden (list of widths), activation",
)
models.register(
    "cnn",
    "privlab.models:build_cnn",
    "small CNN (Conv1d/Conv2d + GroupNorm, Opacus-compatible); params: channels",
)

topologies.register(
    "central",
    "privlab.topologies.central:CentralTopology",
    "baseline: all client data pooled on one server (single point of attack)",
)
topologies.register(
    "federated",
    "privlab.topologies.federated:FederatedTopology",
    "FedAvg / FedProx: clients train locally, a server averages their updates",
)

attacks.register(
    "loss_threshold",
    "privlab.attacks.membership:LossThresholdAttack",
    "membership inference by per-example loss threshold (Yeom et al. 2018); outsider, query access",
)

defenses.register(
    "dp_sgd",
    "privlab.defenses.dp_sgd:DPSGD",
    "DP-SGD via Opacus inside each client's local training; epsilon from Opacus' accountant",
)
