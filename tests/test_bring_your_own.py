"""Your own architecture and data: a nets.py beside the TOML, CSV text labels, image folders."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from privlab.cli import app
from privlab.data import load_dataset
from privlab.errors import ScenarioError
from privlab.models import FACTORY_HASH_KEY, build_model, check_model
from privlab.scenario import DataSpec, load_scenario

runner = CliRunner()

NETS = """
from torch import nn


def small(input_shape, num_classes, width=16):
    n = 1
    for d in input_shape:
        n *= d
    layers = [nn.Flatten(), nn.Linear(n, width), nn.ReLU(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


def batchnorm(input_shape, num_classes):
    layers = [nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, num_classes)]
    return nn.Sequential(*layers)


def wrong_output(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes + 1))
"""

SCENARIO = """
name = "own_net"
[data]
name = "digits"
[partition]
num_clients = 2
[model]
name = "python"
params = { factory = "nets:small", width = 12 }
[topology]
name = "central"
rounds = 2
[[attacks]]
name = "loss_threshold"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "study.toml").write_text(SCENARIO)
    return tmp_path


def test_nets_py_beside_the_scenario_builds_without_install(project: Path) -> None:
    before = sys.modules.get("nets")
    s = load_scenario(str(project / "study.toml"))
    model = build_model(s.model, (1, 8, 8), 10)
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [12, 10]
    assert str(project) not in sys.path  # on the path only while importing
    assert sys.modules.get("nets") is before  # nor left to shadow the user's own `import nets`


def test_run_with_own_net_from_cli(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(project / "study.toml"), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    text = (out / "results.json").read_text()
    assert '"factory": "nets:small"' in text and FACTORY_HASH_KEY in text


def test_sweep_keeps_the_scenario_folder_importable(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", str(project / "study.toml"), "--param", "topology.lr=0.05,0.1"]
    result = runner.invoke(app, [*args, "-q", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "results.json").is_file()


def test_an_edited_nets_py_is_picked_up_and_hashed(project: Path) -> None:
    s = load_scenario(str(project / "study.toml"))
    check_model(s.model, (1, 8, 8), 10, dp=False)
    first = s.model.params[FACTORY_HASH_KEY]
    (project / "nets.py").write_text(NETS.replace("nn.ReLU()", "nn.Tanh()"))
    s2 = load_scenario(str(project / "study.toml"))
    check_model(s2.model, (1, 8, 8), 10, dp=False)
    assert s2.model.params[FACTORY_HASH_KEY] != first  # the cache key of reference models moves
    assert any(isinstance(m, torch.nn.Tanh) for m in build_model(s2.model, (1, 8, 8), 10))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ('model.params.factory="nets:missing"', "module 'nets' has no function 'missing'"),
        ('model.params.factory="nosuchmodule:f"', "cannot import 'nosuchmodule'"),
        ('model.params.factory="not a spec"', "model.params.factory"),
        ('model.params={factory="nets:wrong_output"}', "must return logits of shape (batch, 10)"),
        ("model.params.depth=3", "unexpected keyword argument 'depth'"),
    ],
)
def test_bad_factories_are_one_line_errors(project: Path, override: str, fragment: str) -> None:
    result = runner.invoke(app, ["run", str(project / "study.toml"), "--set", override])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and "Traceback" not in result.output


def test_dp_sgd_checks_opacus_compatibility_up_front(project: Path) -> None:
    result = runner.invoke(
        app,
        [
            "run",
            str(project / "study.toml"),
            "--set",
            'model.params={factory="nets:batchnorm"}',
            "--set",
            'variants=[{name="dp", defenses=[{name="dp_sgd", params={noise_multiplier=1.0}}]}]',
        ],
    )
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "is not DP-SGD compatible: layer '2' (BatchNorm1d): BatchNorm cannot" in line
    assert "\n" not in line


# --------------------------------------------------------------------------- CSV


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_text_labels_map_to_sorted_classes_with_groups(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["age,dose,site,outcome"]
    names = ["relapse", "cured", "stable"]
    for i in range(60):
        rows.append(f"{rng.normal():.3f},{rng.normal():.3f},{'AB'[i % 2]},{names[i % 3]}")
    path = write_csv(tmp_path / "t.csv", rows)
    params = {"path": str(path), "label_column": "outcome", "group_column": "site"}
    d = load_dataset(DataSpec(name="csv", params=params, test_fraction=0.25), seed=0)
    assert d.class_names == ("cured", "relapse", "stable")
    assert d.input_shape == (2,) and d.num_classes == 3
    assert d.group_names == ("A", "B") and set(d.groups_test.tolist()) == {0, 1}
    assert len(d.groups_train) == len(d.y_train)
    # The mapping is the sorted text: check it against the raw file, record by record.
    raw = {(round(float(r.split(",")[0]), 3), r.split(",")[3]) for r in rows[1:]}
    for x, y in zip(d.x_train, d.y_train, strict=True):
        assert (round(float(x[0]), 3), d.class_names[y]) in raw


def test_csv_without_header_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    rows = [f"{i * 0.1:.1f},{[2, 10, 9][i % 3]}" for i in range(30)]
    d = load_dataset(
        DataSpec(name="csv", params={"path": str(write_csv(tmp_path / "n.csv", rows))}), 0
    )
    assert d.class_names == ("2", "9", "10")


def test_csv_standardize_uses_train_statistics(tmp_path: Path) -> None:
    rows = ["a,b,label"] + [f"{i},{i * 3 + 1},{'xy'[i % 2]}" for i in range(40)]
    path = write_csv(tmp_path / "s.csv", rows)
    d = load_dataset(DataSpec(name="csv", params={"path": str(path), "standardize": True}), 0)
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(axis=0), 1, atol=1e-4)


@pytest.mark.parametrize(
    ("rows", "params", "fragment"),
    [
        (["a,b,c", "1,x,u", "2,3,v"], {}, "non-numeric feature 'x' at line 2, column 2"),
        (["a,c", "1,u", "2,u"], {}, "need at least 2 classes"),
        (["a,c", "1,u", "2,v"], {"group_column": "c"}, "must differ from label_column"),
        (["a,c", "1,u", "2,v"], {"label_column": "zz"}, "no column named 'zz'"),
        (["a,b,c", "1,2,u", "2,v"], {}, "line 3 of 'f.csv' has 2 columns, expected 3"),
    ],
)
def test_csv_errors_name_the_field(
    tmp_path: Path, rows: list[str], params: dict, fragment: str
) -> None:
    path = write_csv(tmp_path / "f.csv", rows)
    with pytest.raises(ScenarioError, match=r"^data\.params\.") as err:
        load_dataset(DataSpec(name="csv", params={"path": str(path), **params}), 0)
    assert fragment in str(err.value)


# --------------------------------------------------------------------------- image folder


def make_images(root: Path, per_class: int = 6, size: tuple[int, int] = (6, 5)) -> dict:
    """Small generated PNGs: class 'dark' near black, 'light' near white, one RGB pixel set."""
    truth = {}
    rng = np.random.default_rng(1)
    for name, level in (("light", 220), ("dark", 20)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(level + rng.integers(-10, 10, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{i:02d}.png")
            truth[(name, i)] = pixels
    return truth


def test_image_folder_loads_like_torchvision_image_folder(tmp_path: Path) -> None:
    from privlab.data_imagefolder import read_image_folder

    truth = make_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    records = read_image_folder({"root": str(tmp_path / "imgs")})
    assert records.class_names == ("dark", "light")  # sorted folder names, as ImageFolder
    assert records.x.shape == (12, 3, 6, 5) and records.x.dtype == np.float32
    np.testing.assert_array_equal(records.y, [0] * 6 + [1] * 6)
    # Record 7 is light/01.png: channels first, scaled to [0, 1].
    np.testing.assert_allclose(records.x[7], truth[("light", 1)].transpose(2, 0, 1) / 255.0)


def test_image_folder_grayscale_resize_and_split(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", size=(8, 8))
    params = {"root": str(tmp_path / "imgs"), "color": "grayscale", "size": [4, 4]}
    d = load_dataset(DataSpec(name="image_folder", params=params, test_fraction=0.25), 0)
    assert d.input_shape == (1, 4, 4) and d.kind == "image"
    assert len(d.y_test) == 3 and set(d.y_test.tolist()) == {0, 1}
    assert (d.x_train[d.y_train == 1].mean() > 0.7) and (d.x_train[d.y_train == 0].mean() < 0.2)


def test_image_folder_mixed_sizes_need_size(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs")
    Image.new("RGB", (9, 9)).save(tmp_path / "imgs" / "dark" / "zz.png")
    with pytest.raises(ScenarioError, match=r"data\.params\.size: 'dark/zz.png' is 9x9"):
        load_dataset(DataSpec(name="image_folder", params={"root": str(tmp_path / "imgs")}), 0)


def test_image_folder_runs_relative_to_scenario(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs")
    (tmp_path / "s.toml").write_text(
        'name = "imgs"\n[data]\nname = "image_folder"\ntest_fraction = 0.25\n'
        'params = { root = "imgs" }\n[partition]\nnum_clients = 1\n'
        '[model]\nname = "cnn"\nparams = { channels = [4] }\n'
        '[topology]\nname = "central"\nrounds = 1\n'
    )
    result = runner.invoke(
        app, ["run", str(tmp_path / "s.toml"), "-q", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert '"root": "imgs"' in (tmp_path / "o" / "results.json").read_text()
