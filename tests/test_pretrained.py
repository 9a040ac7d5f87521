"""Auditing a model trained elsewhere: a plain PyTorch script trains, privlab loads and attacks.

The example under examples/audit_pretrained is run as a user would: train.py (plain PyTorch, and
Opacus DP-SGD) writes the data file, the member rows and the state_dict; audit.toml declares the
architecture (nets.py beside it, no install) and the recipe. LiRA and RMIA must show the leak
from the CLI and the Python API; DP-SGD must leak visibly less (slow test).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import privlab
from privlab.cli import app
from privlab.errors import ScenarioError
from privlab.results import strip_timing
from privlab.topologies.pretrained import fit_state_dict, read_members, read_state_dict

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "audit_pretrained"
ONE_VARIANT = 'variants=[{name="plain_sgd"}]'
runner = CliRunner()


def _train_module():
    spec = importlib.util.spec_from_file_location("privlab_example_train", EXAMPLE / "train.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, str(EXAMPLE))  # train.py imports nets.py from its own folder
    saved = sys.modules.pop("nets", None)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop("nets", None)
        if saved is not None:
            sys.modules["nets"] = saved
    return module


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: the trained model, its data and members, nets.py and audit.toml."""
    out = tmp_path_factory.mktemp("audit")
    for name in ("nets.py", "audit.toml"):
        shutil.copy(EXAMPLE / name, out / name)
    _train_module().main(out, dp=False)
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_plain_script_model_leaks_from_cli_and_api(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = invoke("run", str(folder / "audit.toml"), "--set", ONE_VARIANT, "--out", str(out))
    assert result.exit_code == 0, result.output
    from_cli = json.loads((out / "results.json").read_text())
    variant = from_cli["variants"]["plain_sgd"]
    rmia, lira = variant["attacks"]["rmia"]["metrics"], variant["attacks"]["lira"]["metrics"]
    # The leak: far above chance (AUC 0.5, TPR 1% at 1% FPR) with 200 members vs 200 others.
    assert rmia["auc"] > 0.6 and rmia["tpr_at_1pct_fpr"] > 0.03, rmia
    assert lira["auc"] > 0.52, lira
    assert variant["topology"]["members"] == 200
    assert variant["utility"]["final_accuracy"] > 0.85
    html = (out / "report.html").read_text()
    assert "rmia" in html and "lira" in html
    # Paths in results are as the user wrote them (relative to the scenario's folder).
    assert from_cli["scenario"]["topology"]["params"]["weights"] == "model.pt"
    assert from_cli["scenario"]["data"]["params"]["path"] == "digits.npz"

    # The Python API gives the same document (the reference models come from the cache).
    results = privlab.run(folder / "audit.toml", overrides=[ONE_VARIANT])
    assert strip_timing(results.to_dict()) == strip_timing(from_cli)
    best = results.strongest_attack("plain_sgd")
    assert best is not None and best.attack_id == "rmia"
    assert results.metric("attacks.rmia.auc", "plain_sgd") == rmia["auc"]


def test_same_folder_elsewhere_gives_same_results(folder: Path, tmp_path: Path) -> None:
    """Relative paths: a copy of the folder is the same scenario (only the loss attack, fast)."""
    copy = tmp_path / "moved"
    shutil.copytree(folder, copy)
    quick = [ONE_VARIANT, 'attacks=[{name="loss_threshold", id="loss"}]']
    a = privlab.run(folder / "audit.toml", overrides=quick).to_dict()
    b = privlab.run(copy / "audit.toml", overrides=quick).to_dict()
    assert strip_timing(a) == strip_timing(b)


def test_weights_that_do_not_fit_name_the_parameter(folder: Path) -> None:
    result = invoke(
        "run", str(folder / "audit.toml"), "--set", "model.params.hidden=64", "--set", ONE_VARIANT
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    line = result.stderr.strip()
    assert line.count("\n") == 0
    assert "topology.params.weights: parameter '1.weight' does not fit" in line
    assert "(64, 64)" in line and "(128, 64)" in line


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("0 1 5000", "row 5000 is outside the data file's 0..1796"),
        ("3 3", "lists a row twice"),
        ("1.5", "whole row numbers"),
        ("", "lists no rows"),
    ],
)
def test_bad_member_files_are_one_line_errors(
    folder: Path, tmp_path: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "members.txt"
    path.write_text(content)
    result = invoke(
        "run",
        str(folder / "audit.toml"),
        "--set",
        f'topology.params.members="{path}"',
        "--set",
        ONE_VARIANT,
    )
    assert result.exit_code == 2, result.output
    assert "topology.params.members" in result.stderr and fragment in result.stderr


def test_attack_that_needs_training_is_refused(folder: Path) -> None:
    """Built-in poisoning attacks name their topologies; a plug-in that does not is refused by
    the hooks it overrides."""
    from privlab import registry
    from privlab.attacks.base import Attack

    class Poisoner(Attack):
        """A plug-in data poisoner that declares no topologies."""

        family = "poisoning"

        def poison_data(self, client_id, x, y):  # type: ignore[no-untyped-def]
            return x, y

    registry.attacks.register("test_poisoner", Poisoner)
    try:
        result = invoke(
            "run",
            str(folder / "audit.toml"),
            "--set",
            ONE_VARIANT,
            "--set",
            'attacks=[{name="test_poisoner"}]',
        )
    finally:
        registry.attacks._entries.pop("test_poisoner")
    assert result.exit_code == 2
    assert "attacks.0.name: 'test_poisoner' needs a training run (poison_data)" in result.stderr


def test_member_rows_from_text_and_npy(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("4\n2, 9\n")
    np.save(tmp_path / "m.npy", np.array([9, 2, 4]))
    for name in ("m.txt", "m.npy"):
        np.testing.assert_array_equal(read_members(str(tmp_path / name), 10), [2, 4, 9])


def test_safetensors_and_wrapped_state_dicts_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({f"_module.{k}": v for k, v in state.items()}, tmp_path / "opacus.pt")
    torch.save({"state_dict": state, "epoch": torch.tensor(3)}, tmp_path / "ckpt.pt")
    for name in ("w.safetensors", "opacus.pt", "ckpt.pt"):
        fitted = fit_state_dict(model, read_state_dict(str(tmp_path / name)))
        assert all(torch.equal(fitted[k], state[k]) for k in state), name


def test_extra_or_missing_parameters_are_named(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(ScenarioError, match=r"parameter '0.bias' \(2,\) of the architecture"):
        fit_state_dict(model, {"0.weight": torch.zeros(2, 3)})
    extra = {**model.state_dict(), "1.weight": torch.zeros(1)}
    with pytest.raises(ScenarioError, match=r"parameter '1.weight' \(1,\) of the weights file"):
        fit_state_dict(model, extra)
    (tmp_path / "code.pt").write_bytes(b"not a torch file")
    with pytest.raises(ScenarioError, match=r"cannot read 'code.pt' as a state_dict"):
        read_state_dict(str(tmp_path / "code.pt"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning")
def test_dp_sgd_model_leaks_visibly_less(folder: Path) -> None:
    """Same script, same data and members, Opacus DP-SGD (noise 2.0, clip 1.0): LiRA and RMIA
    lose most of their edge; the declared epsilon equals Opacus' own for the training run."""
    _, opacus_epsilon = _train_module().main(folder, dp=True)
    results = privlab.run(folder / "audit.toml")
    plain, dp = results.variants["plain_sgd"], results.variants["dp_sgd"]
    for attack in ("lira", "rmia"):
        p, d = plain.attacks[attack].metrics, dp.attacks[attack].metrics
        assert d["auc"] < p["auc"] - 0.03, (attack, p["auc"], d["auc"])
        assert d["tpr_at_1pct_fpr"] <= p["tpr_at_1pct_fpr"], attack
    assert dp.epsilon == pytest.approx(opacus_epsilon, rel=1e-3)
    assert dp["privacy"]["declared"] is True
