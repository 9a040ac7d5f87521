"""Models build for every input kind; topologies honour their settings."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator

from privlab.errors import ScenarioError
from privlab.models import build_model
from privlab.runner import ScenarioRun
from privlab.scenario import ModelSpec, load_scenario
from privlab.topologies.federated import weighted_mean


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 40)])
def test_models_build_run_and_are_opacus_compatible(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(ModelSpec(name=name), shape, 10)
    assert model(torch.randn(5, *shape)).shape == (5, 10)
    assert ModuleValidator.validate(model, strict=False) == []


def test_cnn_refuses_tabular_input() -> None:
    with pytest.raises(ScenarioError, match=r"model\.name: 'cnn' needs image"):
        build_model(ModelSpec(name="cnn"), (30,), 2)


def test_bad_model_params_name_the_field() -> None:
    with pytest.raises(ScenarioError, match=r"model\.params\.hidden"):
        build_model(ModelSpec(name="mlp", params={"hidden": "wide"}), (4,), 2)


@pytest.mark.parametrize(
    ("name", "params", "shape"),
    [
        ("mlp", {"hidden": [7, 5]}, (1, 8, 8)),
        ("cnn", {"channels": [4, 6], "kernel_size": 3}, (1, 8, 8)),
        ("cnn", {"channels": [3, 5], "kernel_size": 5}, (2, 40)),
    ],
)
def test_model_size_bound_counts_what_torch_allocates(
    name: str, params: dict, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound is checked before allocating, from the params: at exactly the parameter count
    torch reports for the built model the model builds, one below it is refused in one line."""
    from privlab import models

    spec = ModelSpec(name=name, params=params)
    numel = sum(p.numel() for p in build_model(spec, shape, 10).parameters())
    monkeypatch.setattr(models, "MAX_PARAMETERS", numel)
    build_model(spec, shape, 10)
    monkeypatch.setattr(models, "MAX_PARAMETERS", numel - 1)
    field = "hidden" if name == "mlp" else "channels"
    with pytest.raises(ScenarioError, match=rf"^model\.params\.{field}: .* {numel:,} parameters"):
        build_model(spec, shape, 10)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("mlp", {"hidden": [349599524]}, r"^model\.params\.hidden: \[349599524\] makes"),
        ("cnn", {"channels": [4, -3]}, r"^model\.params\.channels: must be positive"),
        ("cnn", {"kernel_size": 9}, r"^model\.params\.kernel_size: at most .* 8 "),
        ("cnn", {"channels": [2] * 4, "pool": True}, r"^model\.params\.pool: .* at most 3 "),
    ],
)
def test_impossible_model_params_are_refused_in_one_line(
    name: str, params: dict, message: str
) -> None:
    shape = (64,) if name == "mlp" else (1, 8, 8)
    with pytest.raises(ScenarioError, match=message):
        build_model(ModelSpec(name=name, params=params), shape, 10)


@pytest.mark.parametrize(("kernel", "shape"), [(3, (1, 8, 8)), (2, (1, 8, 8)), (5, (1, 40))])
def test_pooled_blocks_are_refused_exactly_where_torch_fails(
    kernel: int, shape: tuple[int, ...]
) -> None:
    """Against torch itself: each number of pooled blocks either builds and runs, or is refused
    in one line, and it is refused exactly when the same convolutions and pools fail in torch."""
    for blocks in range(1, 8):
        params = {"channels": [2] * blocks, "kernel_size": kernel, "pool": True}
        spec = ModelSpec(name="cnn", params=params)
        try:
            model = build_model(spec, shape, 10)
        except ScenarioError as exc:
            assert str(exc).startswith("model.params.pool: ")
            refused = True
        else:
            assert model(torch.zeros(2, *shape)).shape == (2, 10)
            refused = False
        nn = torch.nn
        conv, pool = (nn.Conv2d, nn.MaxPool2d) if len(shape) == 3 else (nn.Conv1d, nn.MaxPool1d)
        block = [conv(1, 1, kernel, padding=kernel // 2), pool(2)]
        layers = [m for _ in range(blocks) for m in block]
        try:  # the shape-relevant layers alone, unchecked
            torch.nn.Sequential(*layers)(torch.zeros(2, 1, *shape[1:]))
            fails = False
        except RuntimeError:
            fails = True
        assert refused == fails, (kernel, shape, blocks)


def test_weighted_mean_is_fedavg() -> None:
    a = {"w": torch.tensor([1.0, 2.0])}
    b = {"w": torch.tensor([3.0, 6.0])}
    out = weighted_mean([a, b], [1.0, 3.0])
    assert torch.allclose(out["w"], torch.tensor([2.5, 5.0]))


def run(overrides: list[str]) -> dict:
    scenario = load_scenario(
        None, ["attacks=[]", *overrides, "expectations=[]", 'variants=[{name="v"}]']
    )
    return ScenarioRun(scenario).run()["variants"]["v"]


def test_central_baseline_learns_and_uploads_raw_data() -> None:
    v = run(['topology.name="central"', "topology.rounds=5", "partition.num_clients=4"])
    assert v["utility"]["final_accuracy"] > 0.85
    assert v["cost"]["bytes_per_round"][0] > 0 and sum(v["cost"]["bytes_per_round"][1:]) == 0
    assert [r["participants"] for r in v["utility"]["per_round"]] == [1] * 5


def test_client_fraction_and_dropout_reduce_participants() -> None:
    v = run(
        [
            "topology.rounds=6",
            "topology.client_fraction=0.5",
            "topology.dropout=0.5",
            "partition.num_clients=8",
        ]
    )
    participants = [r["participants"] for r in v["utility"]["per_round"]]
    assert all(p <= 4 for p in participants) and sum(participants) < 24
    assert any("dropped out" in n for n in v["notes"])


def test_fedprox_pulls_clients_towards_the_global_model() -> None:
    common = [
        "topology.rounds=2",
        "topology.local_epochs=3",
        "partition.num_clients=4",
        'partition.scheme="shards"',
    ]
    plain = run(common)
    prox = run([*common, "topology.fedprox_mu=5.0"])
    assert plain["utility"]["per_round"] != prox["utility"]["per_round"]


def test_cnn_federated_with_dp_runs_end_to_end() -> None:
    v = run(
        [
            'model.name="cnn"',
            "model.params={channels=[8]}",
            "topology.rounds=2",
            "partition.num_clients=3",
            'defenses=[{name="dp_sgd", params={noise_multiplier=1.0, accountant="rdp"}}]',
        ]
    )
    assert v["privacy"]["epsilon"] > 0 and set(v["privacy"]["per_client"]) == {"0", "1", "2"}


@pytest.mark.parametrize(
    ("topology", "defense", "placement"),
    [
        ("central", '{name="secure_aggregation"}', "transport"),
        ("central", '{name="median"}', "aggregation"),
        ("swarm", '{name="update_noise", params={std=0.1}}', "client_update"),
        ("split", '{name="krum"}', "aggregation"),
    ],
)
def test_a_defense_the_topology_cannot_apply_is_refused_before_training(
    topology: str, defense: str, placement: str
) -> None:
    scenario = load_scenario(
        None,
        [
            f'topology.name="{topology}"',
            "attacks=[]",
            "partition.num_clients=10",
            "expectations=[]",
            f'variants=[{{name="fine"}}, {{name="bad", defenses=[{defense}]}}]',
        ],
    )
    with pytest.raises(ScenarioError, match=rf"variants\.1\.defenses\.0\.name: .*\({placement}\)"):
        ScenarioRun(scenario)  # preparation alone: no variant has trained yet


def test_fltrust_root_set_too_large_is_refused_before_training() -> None:
    scenario = load_scenario(
        None,
        [
            "expectations=[]",
            'variants=[{name="fine"}, {name="bad", defenses=[{name="fltrust", '
            "params={root_size=1000}}]}]",
        ],
    )
    with pytest.raises(ScenarioError, match="root_size: at most half the test pool"):
        ScenarioRun(scenario)


def test_evaluate_matches_cross_entropy_and_accuracy_over_blocks() -> None:
    """evaluate's blockwise logsumexp loss and hit count against F.cross_entropy and argmax on
    the whole set at once (2,500 records: three blocks, the last one short)."""
    import torch
    from torch.nn import functional as F

    from privlab.training import EVAL_BLOCK, evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    x, y = torch.randn(2500, 8) * 3, torch.randint(0, 5, (2500,))
    assert len(y) > 2 * EVAL_BLOCK
    acc, loss = evaluate(model, x, y)
    with torch.no_grad():
        logits = model(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert acc == int((logits.argmax(1) == y).sum()) / len(y)
    assert model.training  # left in the mode it was in
    rows = torch.randperm(2500)[:1500]
    acc_r, loss_r = evaluate(model, x, y, rows)
    assert loss_r == pytest.approx(F.cross_entropy(logits[rows], y[rows]).item(), rel=1e-5)
    assert acc_r == int((logits[rows].argmax(1) == y[rows]).sum()) / len(rows)
