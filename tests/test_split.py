"""Split learning: the protocol, what crosses the wire, its attacks and defenses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from privlab.attacks.split_learning import cosine_scores, norm_scores
from privlab.defenses.split_boundary import distance_correlation, max_norm_noise_std
from privlab.errors import ScenarioError
from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario

BASE = [
    "data.name=breast_cancer",
    "partition.num_clients=2",
    "model.params={hidden=[32, 16]}",
    "topology.name=split",
    "topology.rounds=3",
    "topology.batch_size=32",
    "topology.lr=0.05",
    'variants=[{name="plain"}]',
    "expectations=[]",
    "attacks=[]",
]


def _run(extra: list[str]) -> dict:
    return ScenarioRun(load_scenario("default", BASE + extra)).run()


def _variant(results: dict, name: str | None = None) -> dict:
    variants = results["variants"]
    return variants[name] if name else next(iter(variants.values()))


# ------------------------------------------------------------------ protocol


def test_vanilla_split_equals_central_training_of_the_composed_model() -> None:
    """With one client and plain SGD, passing activations and gradients over the cut changes
    nothing: the composed model is exactly the centrally trained one."""
    common = ["partition.num_clients=1", "topology.rounds=2", "topology.params={cut_layer=2}"]
    split = _variant(_run(common))
    central = _variant(_run([*common, "topology.name=central", "topology.params={}"]))
    for a, b in zip(split["utility"]["per_round"], central["utility"]["per_round"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["accuracy"] == pytest.approx(b["accuracy"])


def test_u_shaped_keeps_labels_on_the_client_and_trains() -> None:
    seen: list[tuple[str, str, str]] = []
    scenario = load_scenario(
        "default", [*BASE, "topology.params={mode='u_shaped', cut_layer=3}", "topology.rounds=5"]
    )
    run = ScenarioRun(scenario)
    from privlab import runner

    original = runner.Wire

    class Spy(original):  # type: ignore[misc, valid-type]
        def send(self, round_, sender, receiver, kind, payload):  # type: ignore[no-untyped-def]
            seen.append((sender, receiver, kind))
            return super().send(round_, sender, receiver, kind, payload)

    runner.Wire = Spy
    try:
        results = run.run()
    finally:
        runner.Wire = original
    kinds = {k for _, _, k in seen}
    assert "labels" not in kinds and {"activations", "gradients", "bottom_model"} <= kinds
    assert ("server", "client0", "activations") in seen  # server output to the client's head
    assert ("client1", "server", "gradients") in seen  # head gradients back to the server
    assert _variant(results)["utility"]["final_accuracy"] > 0.9
    assert _variant(results)["cost"]["bytes_total"] > 0


def test_vanilla_sends_labels_and_relays_bottom_model_through_server() -> None:
    from privlab.wire import Wire

    wire = Wire()
    log: list[tuple[str, str, str]] = []
    wire.subscribe(lambda m: True, lambda m: log.append((m.sender, m.receiver, m.kind)))
    scenario = load_scenario("default", [*BASE, "topology.params={handoff='server'}"])
    run = ScenarioRun(scenario)
    variant = run.variants[0]
    from privlab.models import build_model
    from privlab.topologies.base import TopologyContext
    from privlab.topologies.split import SplitTopology

    _, vs, defenses, attacks, dataset, clients = variant
    model = build_model(vs.model, dataset.input_shape, dataset.num_classes)
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    ctx = TopologyContext(
        vs,
        dataset,
        clients,
        model,
        defenses,
        wire,
        attacks,
        t(dataset.x_train),
        t(dataset.y_train),
        t(dataset.x_test),
        t(dataset.y_test),
    )
    outcome = SplitTopology(ctx).run()
    assert ("client0", "server", "labels") in log
    assert ("client0", "server", "bottom_model") in log
    assert ("server", "client1", "bottom_model") in log
    batches = outcome.truth["split_batches"]
    n_batches = sum(1 for s, r, k in log if k == "activations")
    assert len(batches) == n_batches
    train = np.concatenate([c.train_idx for c in clients])
    assert set(np.concatenate(list(batches.values()))) <= set(train)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("topology.params={cut_layer=9}", "topology.params.cut_layer: must be in 1..5"),
        ("topology.params={mode='y'}", "topology.params.mode"),
        ("topology.params={cutlayer=2}", "topology.params.cutlayer: unknown field"),
        ("topology.params={mode='u_shaped', cut_layer=5}", "topology.params.cut_layer"),
    ],
)
def test_bad_split_params_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ScenarioError) as err:
        _run([override])
    assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_attacks_and_defenses_refuse_topologies_where_they_do_not_apply() -> None:
    fed = [a for a in BASE if not a.startswith("topology.name")]
    with pytest.raises(ScenarioError, match=r"attacks.0.name: 'label_leakage' does not apply"):
        ScenarioRun(load_scenario("default", [*fed, "attacks=[{name='label_leakage'}]"]))
    with pytest.raises(ScenarioError, match=r"variants.0.defenses.0.name: 'nopeek' does not"):
        ScenarioRun(
            load_scenario("default", [*fed, "variants=[{name='n', defenses=[{name='nopeek'}]}]"])
        )
    with pytest.raises(ScenarioError, match="needs the server to see the bottom model"):
        _run(["attacks=[{name='activation_inversion'}]"])


def test_loss_threshold_runs_unchanged_on_split() -> None:
    results = _run(["attacks=[{name='loss_threshold', id='mia'}]"])
    assert 0.0 <= _variant(results)["attacks"]["mia"]["metrics"]["auc"] <= 1.0


def test_label_leakage_refuses_a_party_that_already_holds_the_labels() -> None:
    with pytest.raises(ScenarioError, match=r"attacks.0.params.party: in vanilla split"):
        ScenarioRun(load_scenario("default", [*BASE, "attacks=[{name='label_leakage'}]"]))
    with pytest.raises(ScenarioError, match=r"attacks.0.params.party: 'client5' does not exist"):
        ScenarioRun(
            load_scenario(
                "default",
                [
                    *BASE,
                    "topology.params={mode='u_shaped'}",
                    "attacks=[{name='label_leakage', params={party='client5'}}]",
                ],
            )
        )


def test_split_runs_are_deterministic() -> None:
    extra = ["topology.params={mode='u_shaped'}", "attacks=[{name='label_leakage', id='n'}]"]
    a, b = _run(extra), _run(extra)
    for r in (a, b):
        r.pop("timing")
        for v in r["variants"].values():
            v["cost"].pop("seconds")
            v["cost"].pop("seconds_per_round")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# ------------------------------------------------------------------ pure pieces


def _dcor_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Szekely, Rizzo & Bakirov (2007), written out with explicit loops."""
    n = len(x)

    def centred(z: np.ndarray) -> np.ndarray:
        d = np.array([[np.linalg.norm(z[i] - z[j]) for j in range(n)] for i in range(n)])
        return d - d.mean(0)[None, :] - d.mean(1)[:, None] + d.mean()

    a, b = centred(x), centred(y)
    v_xy, v_x, v_y = (a * b).mean(), (a * a).mean(), (b * b).mean()
    return float(np.sqrt(v_xy / np.sqrt(v_x * v_y)))


def test_distance_correlation_matches_the_reference_formula() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 5))
    y = np.tanh(x @ rng.normal(size=(5, 3))) + 0.1 * rng.normal(size=(20, 3))
    ours = distance_correlation(torch.as_tensor(x), torch.as_tensor(y)).item()
    assert ours == pytest.approx(_dcor_reference(x, y), rel=1e-9)
    assert distance_correlation(torch.as_tensor(x), torch.as_tensor(3 * x + 1)).item() == (
        pytest.approx(1.0)
    )
    indep = distance_correlation(
        torch.as_tensor(rng.normal(size=(400, 2))), torch.as_tensor(rng.normal(size=(400, 2)))
    ).item()
    assert indep < 0.15


def test_max_norm_noise_equalises_expected_norms() -> None:
    g = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    std = max_norm_noise_std(g)
    expected_sq = g.pow(2).sum(1) + 2 * std**2
    assert torch.allclose(expected_sq, torch.full((3,), 9.0))


def test_norm_and_cosine_scores_separate_opposite_gradients() -> None:
    v = np.array([1.0, -2.0, 0.5])
    grads = np.stack([0.9 * v, 0.8 * v, -0.1 * v, -0.2 * v, -0.15 * v])  # 2 positives
    assert list(np.argsort(-norm_scores(grads))[:2]) == [0, 1]
    cos = cosine_scores(grads)
    assert (cos[:2] > 0).all() and (cos[2:] < 0).all()
    assert (cosine_scores(-grads)[:2] > 0).all()  # orientation from cluster sizes


# ------------------------------------------------------------------ the papers' results


def test_label_leakage_reproduces_li_et_al() -> None:
    """Li et al. 2022: without defense both attacks leak labels; max-norm noise defeats the
    norm attack (but not the direction attack, as the paper notes)."""
    results = ScenarioRun(
        load_scenario(
            "split_label_leakage",
            [
                "variants=[{name='none'}, "
                "{name='max_norm', defenses=[{name='gradient_perturbation'}]}]",
                "expectations=[]",
            ],
        )
    ).run()
    none, defended = _variant(results, "none"), _variant(results, "max_norm")
    assert none["attacks"]["norm"]["metrics"]["auc"] > 0.8
    assert none["attacks"]["cosine"]["metrics"]["auc"] > 0.9
    assert defended["attacks"]["norm"]["metrics"]["auc"] < 0.6
    from privlab.report import render_report

    html = render_report(results)
    assert "Split learning: leakage at the cut layer" in html
    drop = defended["attacks"]["norm"]["metrics"]["auc"] - none["attacks"]["norm"]["metrics"]["auc"]
    assert f"({drop:+.3f})" in html  # the report states how much the defense lowers the AUC


def test_activation_inversion_beats_the_mean_guess_and_noise_hurts_it() -> None:
    """He et al. 2019: an inverse model trained on auxiliary data reconstructs inputs from
    activations far better than guessing the mean; activation noise degrades it."""
    results = ScenarioRun(
        load_scenario(
            "split_inversion",
            [
                "topology.rounds=4",
                "attacks.0.params.epochs=150",
                "variants=[{name='none'}, {name='noise', defenses=[{name='activation_noise', "
                "params={sigma=1.0}}]}]",
                "expectations=[]",
            ],
        )
    ).run()
    none = _variant(results, "none")["attacks"]["inversion"]["metrics"]
    noisy = _variant(results, "noise")["attacks"]["inversion"]["metrics"]
    assert none["mse_ratio"] < 0.5
    assert noisy["mse"] > 2 * none["mse"]


@pytest.mark.slow
def test_fsha_hijacks_the_feature_space_and_inverts_inputs() -> None:
    """Pasquini et al. 2021: a malicious server that returns hijacking gradients can decode the
    client's activations far better than the mean guess, and the task is not learned."""
    results = ScenarioRun(
        load_scenario(
            "split_image_inversion",
            [
                "topology.rounds=6",
                "attacks=[{name='feature_space_hijacking', id='fsha'}]",
                "variants=[{name='malicious'}]",
                "expectations=[]",
            ],
        )
    ).run()
    v = _variant(results)
    assert v["attacks"]["fsha"]["metrics"]["mse_ratio"] < 0.3
    assert v["attacks"]["fsha"]["metrics"]["psnr"] > 18
    assert v["utility"]["final_accuracy"] < 0.3


def test_unsplit_beats_the_mean_guess_on_images_without_the_weights() -> None:
    """Erdogan et al. 2022: alternating optimisation of inputs and a surrogate bottom model
    reconstructs images from a shallow cut better than guessing, without the bottom weights."""
    results = ScenarioRun(
        load_scenario(
            "split_image_inversion",
            [
                "topology.rounds=3",
                "attacks=[{name='unsplit', id='u', params={max_examples=16, iterations=10}}]",
                "variants=[{name='plain'}]",
                "expectations=[]",
            ],
        )
    ).run()
    assert _variant(results)["attacks"]["u"]["metrics"]["mse_ratio"] < 0.85
