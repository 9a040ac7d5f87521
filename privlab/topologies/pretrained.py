"""Audit a model trained elsewhere: load it, do not train it (topology `pretrained`).

What an auditor holds, as ML Privacy Meter and LeakPro assume: the released model's weights
(`topology.params.weights`, a PyTorch state_dict read with `torch.load(weights_only=True)`, or
a .safetensors file), the architecture that reads them (`model`, e.g. `python` with your own
`nets.py`), the data file the model was trained from (`data`: `file`, `csv` or `image_folder`)
and which of its rows were training members (`topology.params.members`: row numbers, .npy or
text). The adversary's assumed training recipe is the scenario's own: `topology.lr`,
`batch_size`, `momentum`, `weight_decay`, `rounds` x `local_epochs` epochs of SGD, and the
variant's training-time defenses (DP-SGD), exactly the recipe the other topologies expose, so
LiRA and RMIA train their reference models with it. Nothing here trains the target.

Membership ground truth: the member rows are members; of the other rows a seeded
`challenge_fraction` (at most as many as there are members) are the challenge's non-members and
the rest is the population (the adversary's reference data and the evaluation set). One client,
id 0, holds the members, so per-client metrics read as "the model's owner".
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from privlab import registry
from privlab.data import Dataset, _make
from privlab.data_file import _read_csv, _read_npz
from privlab.data_records import Records, encode_groups, encode_labels
from privlab.defenses.base import Placement
from privlab.errors import ScenarioError
from privlab.partition import ClientData
from privlab.scenario import validate_params
from privlab.topologies.base import Topology, TrainingOutcome

PASSIVE_HOOKS = ("observe", "controlled_clients", "poison_data", "craft_updates")
"""Attack hooks that need a training run or a wire: such attacks cannot target a loaded model."""


class PretrainedParams(BaseModel):
    """`topology.params` of the pretrained topology (paths relative to the scenario file)."""

    model_config = ConfigDict(extra="forbid")
    weights: str
    """A state_dict: .pt/.pth (torch.load, weights_only=True) or .safetensors."""
    members: str
    """Row numbers (0-based) of the data file's training members: .npy, or text (one per
    line, or separated by commas/spaces)."""
    challenge_fraction: float = Field(default=0.5, gt=0, lt=1)
    """Share of the non-member rows used as the challenge's non-members (capped at the number
    of members); the rest is the population and the evaluation set."""


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- data in file order


def read_records(spec: Any) -> tuple[Records, Records | None]:
    """The data file's records in file order, and any extra held-out records (an .npz's
    x_test/y_test, never members)."""
    name, params = spec.name, dict(spec.params)
    if params.get("standardize"):
        raise ScenarioError(
            "data.params.standardize: not with topology 'pretrained' (the file must hold the "
            "features exactly as the model reads them)"
        )
    if name == "csv":
        from privlab.data_csv import read_csv_records

        return read_csv_records(params), None
    if name == "image_folder":
        from privlab.data_imagefolder import read_image_folder

        return read_image_folder(params), None
    if name == "file":
        return _file_records(params)
    reader = getattr(registry.datasets.get(name, "data.name"), "records", None)
    if callable(reader):  # a plug-in data set that can list its records in order
        return reader(params), None
    raise ScenarioError(
        f"data.name: topology 'pretrained' needs the data file the model was trained from, "
        f"in its order; '{name}' has none (allowed: file, csv, image_folder)"
    )


def _file_records(params: dict[str, Any]) -> tuple[Records, Records | None]:
    path = Path(str(params.get("path", ""))).expanduser()
    if not path.is_file():
        raise ScenarioError(f"data.params.path: file '{params.get('path')}' does not exist")
    if path.suffix.lower() == ".npz":
        x, y, x_test, y_test = _read_npz(path)
    elif path.suffix.lower() == ".csv":
        x, y = _read_csv(path, params.get("label_column", -1))
        x_test = y_test = None
    else:
        raise ScenarioError(
            f"data.params.path: unsupported file type '{path.suffix}' (allowed: .npz, .csv)"
        )
    raw = [str(v) for v in (y if y_test is None else np.concatenate([y, y_test])).tolist()]
    codes, names = encode_labels(raw)
    main = Records(np.asarray(x, dtype=np.float32), codes[: len(y)], names)
    if x_test is None:
        return main, None
    return main, Records(np.asarray(x_test, dtype=np.float32), codes[len(y) :], names)


def read_members(path_text: str, num_records: int) -> np.ndarray:
    """Sorted unique member row numbers, each in 0..num_records-1."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ScenarioError(f"topology.params.members: file '{path_text}' does not exist")
    try:
        if path.suffix.lower() == ".npy":
            raw = np.load(path, allow_pickle=False)
        else:
            text = path.read_text(encoding="utf-8").replace(",", " ").split()
            raw = np.array([float(t) for t in text])
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ScenarioError(
            f"topology.params.members: cannot read '{path.name}' as row numbers: {exc}"
        ) from None
    raw = np.asarray(raw).reshape(-1)
    if raw.size == 0:
        raise ScenarioError(f"topology.params.members: '{path.name}' lists no rows")
    if not np.issubdtype(raw.dtype, np.number) or not np.all(np.mod(raw, 1) == 0):
        raise ScenarioError(f"topology.params.members: '{path.name}' must hold whole row numbers")
    rows = raw.astype(np.int64)
    bad = rows[(rows < 0) | (rows >= num_records)]
    if bad.size:
        raise ScenarioError(
            f"topology.params.members: row {int(bad[0])} is outside the data file's "
            f"0..{num_records - 1}"
        )
    unique = np.unique(rows)
    if len(unique) != len(rows):
        raise ScenarioError(f"topology.params.members: '{path.name}' lists a row twice")
    return unique


# --------------------------------------------------------------------------- weights


def read_state_dict(path_text: str) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors or a torch file (weights_only=True: no code runs)."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ScenarioError(f"topology.params.weights: file '{path_text}' does not exist")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ScenarioError(
            f"topology.params.weights: cannot read '{path.name}' as a state_dict: {first}"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint layouts
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ScenarioError(
            f"topology.params.weights: '{path.name}' is not a state_dict (name -> tensor)"
        )
    return state


def fit_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """The state_dict keyed as `model` expects, or a ScenarioError naming the first parameter
    that does not fit. Prefixes added by wrappers (Opacus' `_module.`, DataParallel's
    `module.`) are removed when every key carries them and the architecture does not."""
    expected = model.state_dict()
    for prefix in ("_module.", "module."):
        if (
            state
            and all(k.startswith(prefix) for k in state)
            and not any(k.startswith(prefix) for k in expected)
        ):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    for name, tensor in expected.items():
        if name not in state:
            raise ScenarioError(
                f"topology.params.weights: parameter '{name}' {tuple(tensor.shape)} of the "
                f"architecture is missing from the weights file"
            )
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ScenarioError(
                f"topology.params.weights: parameter '{name}' does not fit: the architecture "
                f"has shape {tuple(tensor.shape)}, the weights file {tuple(state[name].shape)}"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise ScenarioError(
            f"topology.params.weights: parameter '{extra[0]}' {tuple(state[extra[0]].shape)} "
            "of the weights file is not in the architecture"
        )
    return {k: state[k].to(expected[k].dtype) for k in expected}


# --------------------------------------------------------------------------- topology


class PretrainedTopology(Topology):
    """A released model loaded from a file; its training is declared, not run."""

    placements = frozenset({Placement.LOCAL_TRAINING})
    """A local-training defense (DP-SGD) is the declared recipe: reference models and the
    claimed epsilon follow it; the target itself is only loaded."""

    @staticmethod
    def params_of(scenario: Any) -> PretrainedParams:
        return validate_params(  # type: ignore[return-value]
            PretrainedParams, scenario.topology.params, "topology.params"
        )

    @classmethod
    def load_data(cls, scenario: Any) -> tuple[Dataset, list[ClientData]]:
        """Members, challenge non-members and population from the data file and the member
        rows (replaces the loader's split and the partition, called while preparing)."""
        p = cls.params_of(scenario)
        records, extra = read_records(scenario.data)
        members = read_members(p.members, len(records.y))
        others = np.setdiff1d(np.arange(len(records.y)), members)
        rng = np.random.default_rng([scenario.seed, 53])
        others = rng.permutation(others)
        n_pop_extra = 0 if extra is None else len(extra.y)
        n_chal = min(len(members), round(p.challenge_fraction * len(others)))
        if n_chal < 1 or len(others) - n_chal + n_pop_extra < 2:
            raise ScenarioError(
                f"topology.params.members: {len(members)} of {len(records.y)} rows are members; "
                "at least 3 non-member rows are needed (challenge and population)"
            )
        holdout, population = np.sort(others[:n_chal]), np.sort(others[n_chal:])
        train_rows = np.concatenate([members, holdout])
        x_test, y_test = records.x[population], records.y[population]
        if extra is not None:
            x_test, y_test = np.concatenate([x_test, extra.x]), np.concatenate([y_test, extra.y])
        dataset = _make(
            scenario.data.name,
            records.x[train_rows],
            records.y[train_rows],
            x_test,
            y_test,
            records.num_classes,
        )
        dataset = replace(dataset, class_names=records.class_names)
        if records.groups is not None and extra is None:  # an .npz's extra rows have no groups
            codes, names = encode_groups(records.groups)
            dataset = replace(
                dataset,
                groups_train=codes[train_rows],
                groups_test=codes[population],
                group_names=names,
            )
        n = len(members)
        clients = [ClientData(0, np.arange(n), np.arange(n, n + n_chal))]
        return dataset, clients

    @classmethod
    def check_setting(
        cls, scenario: Any, input_shape: tuple[int, ...], num_classes: int, num_clients: int
    ) -> PretrainedParams:
        """Params, attacks that need no training run, and weights that fit the architecture:
        all checked before any reference model trains."""
        from privlab.models import build_model

        p = cls.params_of(scenario)
        for i, spec in enumerate(scenario.attacks):
            attack_cls = registry.attacks.get(spec.name, f"attacks.{i}.name")
            from privlab.attacks.base import Attack

            hooks = [h for h in PASSIVE_HOOKS if getattr(attack_cls, h) is not getattr(Attack, h)]
            if hooks:
                raise ScenarioError(
                    f"attacks.{i}.name: '{spec.name}' needs a training run ({hooks[0]}); "
                    "topology 'pretrained' only loads a released model (use loss_threshold, "
                    "lira, rmia or another attack on the released model)"
                )
        model = build_model(scenario.model, input_shape, num_classes)
        fit_state_dict(model, read_state_dict(p.weights))
        return p

    def run(self) -> TrainingOutcome:
        ctx = self.ctx
        p = self.params_of(ctx.scenario)
        state = fit_state_dict(ctx.model, read_state_dict(p.weights))
        ctx.model.load_state_dict(state)
        ctx.model.eval()
        record = self.record(1, ctx.model, participants=1)
        privacy, notes = self._declared_privacy()
        spec = self.spec
        members = ctx.clients[0].train_idx
        extra = {
            "weights_sha256": sha256_file(Path(p.weights)),
            "members_sha256": sha256_file(Path(p.members)),
            "members": len(members),
            "challenge_nonmembers": len(ctx.clients[0].holdout_idx),
            "population": len(ctx.y_test),
            "recipe": {
                "optimizer": "sgd",
                "lr": spec.lr,
                "momentum": spec.momentum,
                "weight_decay": spec.weight_decay,
                "batch_size": spec.batch_size,
                "epochs": spec.rounds * spec.local_epochs,
                "defenses": [d.spec.name for d in ctx.defenses.all()],
            },
        }
        notes.insert(0, "the target was trained elsewhere and loaded; the recipe is declared")
        return TrainingOutcome(ctx.model, [record], privacy, notes, extra=extra)

    def _declared_privacy(self) -> tuple[dict[str, Any] | None, list[str]]:
        """The epsilon the declared DP-SGD recipe would give for the members' count (a claim
        about training privlab did not see, labelled as such)."""
        defense = self.ctx.defenses.local_training
        if defense is None:
            return None, []
        idx = torch.as_tensor(self.ctx.clients[0].train_idx)
        trainer = self.make_trainer(0, self.ctx.x_train[idx], self.ctx.y_train[idx])
        noise = getattr(trainer, "noise_multiplier", None)
        rate = getattr(trainer, "sample_rate", None)
        params = getattr(trainer, "params", None)
        if noise is None or rate is None or params is None:
            return None, [f"'{defense.spec.name}' declared: no epsilon derived from it"]
        from opacus.accountants import create_accountant

        steps = self.spec.rounds * self.spec.local_epochs * self.settings.steps_per_epoch(len(idx))
        accountant = create_accountant(params.accountant)
        accountant.history = [(float(noise), float(rate), int(steps))]
        eps = float(accountant.get_epsilon(delta=params.delta)) if noise > 0 else float("inf")
        if not np.isfinite(eps):
            return None, ["declared DP-SGD without noise: no finite epsilon"]
        privacy = {
            "epsilon": eps,
            "delta": params.delta,
            "accountant": params.accountant,
            "approximate": params.accountant == "gdp",
            "noise_multiplier": float(noise),
            "sample_rate": float(rate),
            "steps": int(steps),
            "max_grad_norm": params.max_grad_norm,
            "declared": True,
        }
        return privacy, [
            f"epsilon {eps:.3g} is what the declared DP-SGD recipe gives (noise {noise:.3g}, "
            f"{steps} steps at rate {rate:.3g}); privlab did not observe the training"
        ]
