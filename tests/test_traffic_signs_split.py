"""traffic_signs_split: pretraining, multi-class label inference, inversion from public images,
the adaptive attacker; unit pieces checked against closed forms, and one small run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from privlab.attacks.base import RefereeTruth
from privlab.attacks.split_inversion import conv_decoder, defense_noise_sigma
from privlab.attacks.split_label_cluster import (
    LabelPredictions,
    candidate_gradients,
    cluster_labels,
    match_labels,
)
from privlab.data_traffic_signs import SIGNS, load_traffic_signs, public_images
from privlab.errors import ScenarioError
from privlab.scenario import ComponentSpec


def test_candidate_gradients_match_the_softmax_closed_form() -> None:
    torch.manual_seed(0)
    head = nn.Linear(6, 4).double()
    h = torch.randn(5, 6, dtype=torch.float64)
    cand = candidate_gradients(head, h, 4)
    w, b = head.weight.detach().numpy(), head.bias.detach().numpy()
    logits = h.numpy() @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for y in range(4):
        expected = (p - np.eye(4)[y]) @ w  # d CE / d h = W^T (p - e_y)
        assert np.allclose(cand[:, y], expected)


def test_match_and_cluster_recover_labels_of_separable_gradients() -> None:
    torch.manual_seed(1)
    head = nn.Linear(8, 5).double()
    rng = np.random.default_rng(0)
    h = torch.as_tensor(rng.normal(size=(60, 8)))
    y = rng.integers(0, 5, 60)
    cand = candidate_gradients(head, h, 5)
    grads = cand[np.arange(60), y] + 0.01 * rng.normal(size=(60, 8))
    assert (match_labels(grads, cand) == y).mean() == 1.0
    assert (cluster_labels(grads, cand, 5, seed=3) == y).mean() > 0.9


def test_label_predictions_grade_against_a_direct_count() -> None:
    y_train = np.array([0, 1, 1, 2, 1, 0, 1, 1])
    log = {"split_batches": {(1, 0, 0): np.array([0, 1, 2, 3]), (1, 0, 1): np.array([4, 5, 6, 7])}}
    pred = {(1, 0, 0): np.array([0, 1, 0, 2]), (1, 0, 1): np.array([1, 1, 1, 1])}
    m = LabelPredictions(pred, seed=0).grade(RefereeTruth(log, np.zeros((8, 1)), y_train)).metrics
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["accuracy_baseline"] == pytest.approx(5 / 8)  # label 1 is 5 of the 8
    assert m["n_examples"] == 8


def test_conv_decoder_shape_and_defense_sigma() -> None:
    dec = conv_decoder((16, 8, 8), (3, 32, 32), 8)
    with torch.no_grad():
        out = dec(torch.zeros(2, 16, 8, 8))
    assert out.shape == (2, 3, 32, 32) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0

    class View:
        defenses = (ComponentSpec(name="activation_noise", params={"sigma": 0.3}),)

    assert defense_noise_sigma(View()) == pytest.approx(0.3)  # type: ignore[arg-type]
    View.defenses = (ComponentSpec(name="nopeek"),)
    assert defense_noise_sigma(View()) == 0.0  # type: ignore[arg-type]


def test_public_set_balanced_studio_and_disjoint() -> None:
    x, y = public_images(100, seed=0)
    assert np.array_equal(np.bincount(y), [10] * len(SIGNS))
    x2, y2 = public_images(100, seed=0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    d = load_traffic_signs(
        {"num_vehicles": 3, "images_per_vehicle": 40, "public_images": 50},
        test_fraction=0.25,
        seed=0,
    )
    assert d.x_public is not None and d.x_public.shape == (50, 3, 32, 32)
    flat = d.x_train.reshape(len(d.x_train), -1)
    nearest = ((d.x_public.reshape(50, 1, -1) - flat[None]) ** 2).mean(-1).min(axis=1)
    assert nearest.min() > 1e-4  # no public image is a vehicle's image
    assert load_traffic_signs({"num_vehicles": 3}, test_fraction=0.25, seed=0).x_public is None


def test_pretrain_without_public_records_is_a_scenario_error() -> None:
    from privlab.topologies.split_pretrain import PretrainParams, pretrain

    with pytest.raises(ScenarioError, match=r"topology\.params\.pretrain"):
        pretrain(
            nn.Linear(2, 2),
            (None, None),
            PretrainParams(),
            lr=0.1,
            momentum=0.0,
            weight_decay=0.0,
            batch_size=4,
            seed=0,
            x_eval=torch.zeros(1, 2),
            y_eval=torch.zeros(1, dtype=torch.long),
        )


def test_pretrain_is_deterministic_and_learns_the_public_task() -> None:
    from privlab.topologies import split_pretrain

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, len(SIGNS)))
    x, y = public_images(200, seed=0)
    kw = dict(lr=0.05, momentum=0.0, weight_decay=0.0, batch_size=32, seed=0)
    ev = dict(x_eval=torch.as_tensor(x), y_eval=torch.as_tensor(y))
    a, acc_a = split_pretrain.pretrain(
        model, (x, y), split_pretrain.PretrainParams(epochs=5), **kw, **ev
    )
    split_pretrain._CACHE.clear()
    b, acc_b = split_pretrain.pretrain(
        model, (x, y), split_pretrain.PretrainParams(epochs=5), **kw, **ev
    )
    assert acc_a == acc_b and all(
        torch.equal(u, v)
        for u, v in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert acc_a > 0.5  # well above the 0.1 of a balanced 10-class guess
    assert not torch.equal(a[1].weight, model[1].weight)  # the input model is left untouched


SMALL = [
    "data.params={num_vehicles=6, num_regions=3, images_per_vehicle=160, public_images=300}",
    "partition.num_clients=6",
    "topology.rounds=3",
    "expectations=[]",
    'variants=[{name="no_defense"},'
    ' {name="no_pretrain", set={"topology.params.pretrain.epochs"=0}},'
    ' {name="noise", defenses=[{name="activation_noise", params={sigma=0.5}}]}]',
    'attacks=[{name="activation_inversion", id="inv", params={decoder="conv", aux="public",'
    " hidden=16, epochs=8, lr=0.003}},"
    ' {name="label_inference", id="labels"}, {name="route_inference", id="route"}]',
]


@pytest.fixture(scope="module")
def small_run() -> dict:
    from privlab.runner import ScenarioRun
    from privlab.scenario import load_scenario

    return ScenarioRun(load_scenario("traffic_signs_split", SMALL)).run()["variants"]


def _metrics(run: dict, variant: str, attack: str) -> dict:
    return run[variant]["attacks"][attack]["metrics"]


@pytest.mark.slow
def test_route_inference_beats_class_prior_undefended(small_run: dict) -> None:
    m = _metrics(small_run, "no_defense", "route")
    assert m["accuracy_ci"][0] > m["accuracy_baseline"], m


@pytest.mark.slow
def test_reconstruction_beats_mean_image_and_noise_hurts_it(small_run: dict) -> None:
    clean, noisy = _metrics(small_run, "no_defense", "inv"), _metrics(small_run, "noise", "inv")
    assert clean["psnr_ci"][0] > clean["psnr_baseline"], clean
    assert clean["ssim_ci"][0] > clean["ssim_baseline"], clean
    assert noisy["psnr"] < clean["psnr"], (noisy, clean)


@pytest.mark.slow
def test_label_inference_beats_class_prior_undefended(small_run: dict) -> None:
    m = _metrics(small_run, "no_defense", "labels")
    assert m["accuracy_ci"][0] > m["accuracy_baseline"], m


@pytest.mark.slow
def test_pretraining_improves_accuracy(small_run: dict) -> None:
    with_pre = small_run["no_defense"]["utility"]["final_accuracy"]
    without = small_run["no_pretrain"]["utility"]["final_accuracy"]
    assert with_pre > without, (with_pre, without)
    assert small_run["no_defense"]["topology"]["pretrain"]["public_records"] == 300


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("data.params={num_vehicles=12}", r"topology\.params\.pretrain"),
        (
            'attacks=[{name="activation_inversion", params={aux="public"}}]',
            r"attacks\.0\.params\.aux",
        ),
        (
            "topology.params={mode='vanilla', cut_layer=4, handoff='server'}",
            r"attacks\.0\.name: 'label_inference'",
        ),
    ],
)
def test_bad_settings_are_one_line_scenario_errors(override: str, field: str) -> None:
    from privlab.runner import ScenarioRun
    from privlab.scenario import load_scenario

    extra = [] if "attacks" in override else ["attacks=[]"]
    if "vanilla" in override:
        extra = ["attacks=[{name='label_inference'}]"]
    if "aux" in override:  # no public records, and no pretraining that would need them
        top = "topology.params={mode='u_shaped', cut_layer=4, handoff='server'}"
        extra = ["data.params={num_vehicles=12}", top]
    with pytest.raises(ScenarioError, match=field):
        ScenarioRun(load_scenario("traffic_signs_split", [*extra, override, "expectations=[]"]))


def test_report_states_multi_class_label_inference_as_accuracy() -> None:
    from privlab.grading import grade
    from privlab.report_verdict import attack_sentence, headline

    entry = {
        "family": "label_leakage",
        "metrics": {"accuracy": 0.83, "accuracy_baseline": 0.18},
        "threat_model": {"adversary": "cut_layer", "party": "server"},
    }
    g = grade("label_leakage", entry["metrics"])
    assert g.value is None  # no AUC: not graded by the two-class rule
    assert headline(entry, g) == ("label accuracy", "0.830 (prior 0.180)")
    assert "accuracy 0.830 (class prior 0.180)" in attack_sentence(entry, g, 0.9)
