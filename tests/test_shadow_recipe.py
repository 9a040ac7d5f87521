"""Reference models mirror the target's recipe: training-set size and training-time defenses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from privlab.attacks.base import FinalView, MembershipChallenge, PopulationData
from privlab.attacks.lira import LiRAAttack, LiRAServerAttack
from privlab.attacks.shadow_recipe import shadow_defenses
from privlab.cli import app
from privlab.scenario import ComponentSpec, load_scenario


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path / "cache"))


def test_a_dp_variant_is_attacked_with_dp_shadows_of_the_targets_size(tmp_path: Path) -> None:
    """The shadows' DP-SGD is the target's (the noise multiplier and sampling rate its own
    trainers reported), and they train on as many records as the target."""
    overrides = [
        "data.name=digits",
        "data.params={}",
        "partition.num_clients=2",
        "topology.rounds=2",
        "topology.local_epochs=1",
        "model.params={hidden=[8]}",
        'attacks=[{name="lira", id="lira", params={num_reference_models=2, cache=false}},'
        ' {name="rmia_server", id="srv", params={num_reference_models=2, cache=false}}]',
        'variants=[{name="plain"}, {name="dp", defenses=[{name="dp_sgd", params='
        "{noise_multiplier=1.3, max_grad_norm=0.7}}, "
        '{name="update_clipping", params={max_norm=2.0}}]}]',
        "expectations=[]",
    ]
    args = ["run", "mia_lira", "--out", str(tmp_path)]
    for o in overrides:
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    variants = json.loads((tmp_path / "results.json").read_text())["variants"]
    plain = variants["plain"]["attacks"]
    dp = variants["dp"]["attacks"]
    privacy = variants["dp"]["privacy"]
    sizes = {
        k: int(v["metrics"]["n_members"]) for k, v in plain.items()
    }  # every member is in the challenge: the training-set sizes
    out_ref = dp["lira"]["artifacts"]["reference_models"]
    srv_ref = dp["srv"]["artifacts"]["reference_models"]
    assert out_ref["records_per_model"] == sizes["lira"]
    assert srv_ref["records_per_model"] == sizes["srv"]
    assert out_ref["clients_per_model"] == 2 and srv_ref["clients_per_model"] == 1
    for ref in (out_ref, srv_ref):
        assert ref["mirrored_defenses"] == ["dp_sgd", "update_clipping"]
        assert ref["dp_sgd"]["noise_multiplier"] == pytest.approx(privacy["noise_multiplier"])
        assert ref["dp_sgd"]["max_grad_norm"] == 0.7
        assert ref["dp_sgd"]["sample_rate"] == pytest.approx(privacy["sample_rate"], rel=0.05)
    assert plain["lira"]["artifacts"]["reference_models"]["dp_sgd"] is None
    assert plain["lira"]["artifacts"]["reference_models"]["mirrored_defenses"] == []
    assert "training-time defenses" in " ".join(dp["lira"]["threat_model"]["knowledge"])
    assert "training-set size" in " ".join(dp["lira"]["threat_model"]["knowledge"])


def _view(defenses: tuple[ComponentSpec, ...]) -> FinalView:
    return FinalView(
        query=lambda x: np.full((len(x), 10), 0.1),
        challenge=MembershipChallenge(np.zeros((4, 1, 40), np.float32), np.zeros(4, np.int64)),
        recipe=load_scenario("mia_lira"),
        model_factory=lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10)),
        population=PopulationData(np.zeros((4, 1, 40), np.float32), np.zeros(4, np.int64)),
        defenses=defenses,
    )


def test_client_side_transforms_are_applied_and_aggregation_rules_are_named() -> None:
    specs = (
        ComponentSpec(name="update_clipping", params={"max_norm": 0.5}),
        ComponentSpec(name="secure_aggregation"),
        ComponentSpec(name="median"),
    )
    shadow = shadow_defenses(_view(specs), lane_size=100)
    assert shadow.dp is None and len(shadow.transforms) == 1
    assert shadow.not_mirrored == ["median"]
    update = {"w": torch.full((3, 4), 1.0)}
    clipped = shadow.transforms[0](update, torch.Generator().manual_seed(0))
    assert torch.isclose(clipped["w"].norm(), torch.tensor(0.5), atol=1e-5)
    assert shadow.key != shadow_defenses(_view(specs[1:]), lane_size=100).key


def test_knowledge_is_stated_for_both_adversaries() -> None:
    outsider = LiRAAttack(ComponentSpec(name="lira"), "a.0").threat_model()
    server = LiRAServerAttack(ComponentSpec(name="lira_server"), "a.1").threat_model()
    for tm in (outsider, server):
        text = " ".join(tm.knowledge)
        assert "DP-SGD noise multiplier" in text and "population data" in text
    assert any("client k's training-set size" in k for k in server.knowledge)
