"""The example plug-in package (examples/privlab_example_plugin): found by entry points, listed
with its own summary, run in a scenario; its attack checked against a hand computation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "privlab_example_plugin"
sys.path.insert(0, str(PLUGIN))
from privlab_example_plugin.attacks import modified_entropy  # noqa: E402

sys.path.remove(str(PLUGIN))


def test_modified_entropy_by_hand() -> None:
    """Song & Mittal 2021, eq. for Mentr: -(1-p_y) log p_y - sum_{i!=y} p_i log(1-p_i)."""
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 0])
    by_hand = [
        -0.3 * np.log(0.7) - 0.2 * np.log(0.8) - 0.1 * np.log(0.9),
        -0.9 * np.log(0.1) - 0.1 * np.log(0.9) - 0.8 * np.log(0.2),
    ]
    np.testing.assert_allclose(modified_entropy(probs, labels), by_hand, rtol=1e-12)


def test_modified_entropy_on_two_classes_is_twice_the_weighted_loss() -> None:
    """With two classes Mentr = -2 (1 - p_y) log p_y: decreasing in p_y, ranked like the loss."""
    p = np.linspace(0.01, 0.99, 50)
    probs = np.stack([p, 1 - p], axis=1)
    got = modified_entropy(probs, np.zeros(50, dtype=int))
    np.testing.assert_allclose(got, -2 * (1 - p) * np.log(p), rtol=1e-12)
    assert np.all(np.diff(got) < 0)


def _plugin_env(tmp_path: Path) -> dict[str, str]:
    """The installed plug-in (CI: pip install -e examples/privlab_example_plugin), or, when it
    is not installed, the same entry points from a dist-info folder on PYTHONPATH: either way
    privlab finds it only through importlib.metadata entry points."""
    env = dict(os.environ)
    try:
        metadata.distribution("privlab-example-plugin")
        return env
    except metadata.PackageNotFoundError:
        pass
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    info = tmp_path / "site" / "privlab_example_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: 0.1.0\n"
    )
    lines = []
    for group, eps in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    paths = [str(tmp_path / "site"), str(PLUGIN), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def test_plugin_is_listed_and_runs_in_a_scenario(tmp_path: Path) -> None:
    env = {**_plugin_env(tmp_path), "COLUMNS": "200"}
    listed = subprocess.run(
        [sys.executable, "-m", "privlab", "list"], env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert "membership by modified prediction entropy (Song & Mittal 2021)" in listed.stdout
    assert "Two interleaving half-moons" in listed.stdout  # the loader's first docstring line
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "privlab",
            "run",
            str(PLUGIN / "scenario.toml"),
            "-q",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads((out / "results.json").read_text())
    variant = results["variants"]["baseline"]
    mentr, loss = variant["attacks"]["mentr"], variant["attacks"]["loss"]
    assert mentr["family"] == "membership" and mentr["threat_model"]["adversary"] == "outsider"
    assert mentr["metrics"]["n_members"] > 0
    # Two classes: modified entropy ranks records as the loss does, so the AUCs agree.
    assert mentr["metrics"]["auc"] == pytest.approx(loss["metrics"]["auc"], abs=1e-6)
    assert results["scenario"]["data"]["name"] == "two_moons"
