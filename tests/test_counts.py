"""Records say what really happened: a diverged variant is marked and stops (the others run),
results.json holds no NaN, late dropouts are no participants, a colluding key holder means the
server holds the secret key."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from typer.testing import CliRunner

from privlab.cli import app
from privlab.defenses.secure_aggregation import SecureAggregation
from privlab.results import null_non_finite
from privlab.runner import ScenarioRun
from privlab.scenario import ComponentSpec, load_scenario

runner = CliRunner()
BASE = [
    "partition.num_clients=3",
    "topology.rounds=3",
    "model.params={hidden=[8]}",
]
# A sign-flipping client with an absurd (but finite) scale: the global model's weights
# overflow in round 1, its loss is NaN.
DIVERGING = (
    'variants=[{name="plain"}, {name="wild", set={"attacks"=[{name="sign_flip", '
    "params={scale=1e38, num_malicious=1}}]}}]"
)


def sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _no_nan(text: str) -> dict:
    def refuse(token: str) -> float:
        raise AssertionError(f"results.json holds {token}")

    return json.loads(text, parse_constant=refuse)


def test_a_diverged_variant_is_marked_and_the_others_finish(tmp_path: Path) -> None:
    ok_expectation = 'expectations=[{metric="utility.final_accuracy", variant="plain", min=0}]'
    out = tmp_path / "a"
    result = runner.invoke(
        app, ["run", *sets([*BASE, DIVERGING, ok_expectation]), "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    data = _no_nan((out / "results.json").read_text())
    plain, wild = data["variants"]["plain"], data["variants"]["wild"]
    assert plain["status"] == "ok" and len(plain["utility"]["per_round"]) == 3
    assert wild["status"] == "diverged" and wild["diverged_at_round"] == 1
    assert len(wild["utility"]["per_round"]) == 1  # stopped early
    assert wild["utility"]["per_round"][0]["loss"] is None
    assert wild["attacks"] == {}
    assert any("diverged at round 1" in n for n in wild["notes"])
    assert any("per_round.0.loss was not a finite number" in n for n in wild["notes"])
    assert "diverged" in (out / "report.html").read_text()
    # An expectation on the diverged variant breaches: exit 1, files still written.
    breach = 'expectations=[{metric="utility.final_loss", variant="wild", max=10}]'
    out_b = tmp_path / "b"
    result = runner.invoke(app, ["run", *sets([*BASE, DIVERGING, breach]), "--out", str(out_b)])
    assert result.exit_code == 1 and "wild: utility.final_loss" in result.stderr
    assert _no_nan((out_b / "results.json").read_text())["variants"]["wild"]["status"]


def test_non_finite_values_become_null_with_a_note() -> None:
    results = {
        "variants": {"v": {"attacks": {"a": {"metrics": {"auc": math.nan}}}, "notes": []}},
        "timing": {"seconds": math.inf},
    }
    clean = null_non_finite(results)
    assert clean["variants"]["v"]["attacks"]["a"]["metrics"]["auc"] is None
    assert clean["variants"]["v"]["notes"] == [
        "attacks.a.metrics.auc was not a finite number; stored as null"
    ]
    assert clean["timing"]["seconds"] is None
    assert clean["notes"] == ["timing.seconds was not a finite number; stored as null"]
    assert math.isnan(results["variants"]["v"]["attacks"]["a"]["metrics"]["auc"])  # a copy


def test_late_dropouts_are_not_participants() -> None:
    torch.manual_seed(0)
    scenario = load_scenario(
        None,
        [
            "partition.num_clients=4",
            "topology.rounds=3",
            "model.params={hidden=[8]}",
            "topology.params.late_dropout=0.5",
            "topology.dropout=0.3",
            'variants=[{name="v"}]',
            "attacks=[]",
            "expectations=[]",
        ],
    )
    v = ScenarioRun(scenario).run()["variants"]["v"]
    participants = [r["participants"] for r in v["utility"]["per_round"]]
    late = int(re.search(r"(\d+) client updates lost", " ".join(v["notes"]))[1])
    early = int(re.search(r"(\d+) client-rounds dropped out", " ".join(v["notes"]))[1])
    assert late > 0 and early > 0
    assert sum(participants) + late + early == 3 * 4  # every sampled client-round accounted
    # Independently: the bytes the server received are one update per participant.
    update_bytes = sum(p.numel() * 4 for p in torch.nn.Linear(64, 8).parameters()) + sum(
        p.numel() * 4 for p in torch.nn.Linear(8, 10).parameters()
    )
    broadcast = 4 * update_bytes  # the global model, to each sampled client
    for r, n in zip(range(1, 4), participants, strict=True):
        assert v["cost"]["bytes_per_round"][r] == broadcast + n * update_bytes


def test_near_total_late_dropout_shows_no_participants() -> None:
    scenario = load_scenario(
        None,
        [
            "partition.num_clients=3",
            "topology.rounds=2",
            "model.params={hidden=[8]}",
            "topology.params.late_dropout=0.999999",
            'variants=[{name="v"}]',
            "attacks=[]",
            "expectations=[]",
        ],
    )
    v = ScenarioRun(scenario).run()["variants"]["v"]
    assert [r["participants"] for r in v["utility"]["per_round"]] == [0, 0]


def test_a_colluding_key_holder_means_the_server_holds_the_secret_key() -> None:
    template = {"w": torch.zeros(4, 3)}
    spec = ComponentSpec(
        name="secure_aggregation", params={"key_holder": "clients", "colluding_client": 1}
    )
    d = SecureAggregation(spec, "defenses.0")
    d.setup(3, template)
    assert any(kind == "secret_context" for _, _, kind, _ in d.setup_messages())
    assert d.describe()["server_holds_secret_key"] is True
    honest = SecureAggregation(ComponentSpec(name="secure_aggregation"), "defenses.0")
    honest.setup(3, template)
    assert honest.describe()["server_holds_secret_key"] is False
