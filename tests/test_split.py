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


def test_distance_correlation_gradient_matches_the_direct_distance_formula() -> None:
    """NoPeek trains through dCor: its gradient against autograd through distances computed
    row pair by row pair (no Gram-matrix shortcut), duplicate rows included."""
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.normal(size=(12, 4, 3)))
    z0 = rng.normal(size=(12, 6))
    z0[5] = z0[2]  # a zero off-diagonal distance

    def direct(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(len(t), -1)
        rows = [[(flat[i] - flat[j]).pow(2).sum() for j in range(len(t))] for i in range(len(t))]
        d2 = torch.stack([torch.stack(r) for r in rows])
        d = torch.sqrt(d2 + 1e-18) * (d2 > 0)
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()

    z = torch.tensor(z0, requires_grad=True)
    distance_correlation(x, z).backward()
    ours = z.grad.clone()
    z = torch.tensor(z0, requires_grad=True)
    a, b = direct(x), direct(z)
    torch.sqrt((a * b).mean() / torch.sqrt((a * a).mean() * (b * b).mean())).backward()
    assert torch.allclose(ours, z.grad, rtol=1e-6, atol=1e-9)


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
    for aid in ("norm", "cosine"):  # beside chance and the class prior
        m = none["attacks"][aid]["metrics"]
        assert m["auc_baseline"] == 0.5 and m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1]
        share = m["positive_share"]
        assert m["accuracy_baseline"] == pytest.approx(max(share, 1 - share), abs=1e-6)
    cos = none["attacks"]["cosine"]["metrics"]
    assert cos["accuracy_ci"][0] > cos["accuracy_baseline"]
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


def _final_view(name: str) -> tuple:
    from privlab.attacks.base import FinalView, PopulationData
    from privlab.data import load_dataset
    from privlab.models import build_model

    scenario = load_scenario(name)
    data = load_dataset(scenario.data, scenario.seed)

    def factory() -> torch.nn.Module:
        return build_model(scenario.model, data.input_shape, data.num_classes)

    view = FinalView(
        query=lambda x: x,
        challenge=None,
        recipe=scenario,
        model_factory=factory,
        population=PopulationData(data.x_test, data.y_test),
    )
    return scenario, data, factory, view


def test_unsplit_surrogate_does_not_start_from_the_clients_initial_weights() -> None:
    """The runner builds the clients' model under torch.manual_seed(scenario seed); UnSplit's
    server does not hold that seed, so its surrogate must be initialised independently (and
    reproducibly), without disturbing the global RNG."""
    from privlab.attacks.split_learning import unsplit_surrogate
    from privlab.topologies.split import cut_model, split_params

    scenario, _, factory, view = _final_view("split_image_inversion")
    torch.manual_seed(scenario.seed)
    client_bottom, _, _ = cut_model(factory(), split_params(scenario))
    before = torch.random.get_rng_state()
    surrogate = unsplit_surrogate(view)
    assert torch.equal(before, torch.random.get_rng_state())
    pairs = list(zip(client_bottom.parameters(), surrogate.parameters(), strict=True))
    assert pairs and all(a.shape == b.shape for a, b in pairs)
    weights = [(a, b) for a, b in pairs if a.dim() > 1]  # conv kernels (norm layers start at 1)
    assert weights and not any(torch.allclose(a, b) for a, b in weights)
    again = unsplit_surrogate(view)
    same = zip(surrogate.parameters(), again.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in same)


def test_fsha_pilot_and_inverse_model_use_the_adversarys_own_randomness() -> None:
    from privlab.attacks.split_common import adversary_seed

    seeds = {adversary_seed(0, p) for p in ("unsplit_surrogate", "fsha_models", "inverse_model")}
    assert len(seeds) == 3 and 0 not in seeds and 1 not in seeds
    assert adversary_seed(0, "unsplit_surrogate") == adversary_seed(0, "unsplit_surrogate")


def test_unsplit_is_graded_beside_the_population_mean() -> None:
    """Erdogan et al. 2022 invert without the bottom weights. With an honestly independent
    surrogate this small CNN cut is not inverted better than the population-mean guess at this
    budget (the run says so through psnr_gain); the grading itself is checked here."""
    results = ScenarioRun(
        load_scenario(
            "split_image_inversion",
            [
                "topology.rounds=1",
                "attacks=[{name='unsplit', id='u', params={max_examples=8, iterations=2}}]",
                "variants=[{name='plain'}]",
                "expectations=[]",
            ],
        )
    ).run()
    a = _variant(results)["attacks"]["u"]
    m = a["metrics"]
    for key in ("psnr", "ssim", "mse"):
        assert m[f"{key}_gain"] == pytest.approx(m[key] - m[f"{key}_baseline"], abs=2e-6)
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi
        assert "bootstrap" in a["ci_methods"][key]


def test_reconstruction_baseline_matches_scikit_image() -> None:
    """The know-nothing baseline is the population mean image scored like the attack: check
    its PSNR and SSIM per record against scikit-image directly."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from privlab.attacks.base import RefereeTruth
    from privlab.attacks.split_common import Reconstructions

    rng = np.random.default_rng(0)
    x_train = rng.random((40, 1, 8, 8))
    population = rng.random((30, 1, 8, 8))
    prior = population.mean(axis=0)
    log = {"split_batches": {(1, 0, 0): np.arange(0, 10), (1, 1, 0): np.arange(20, 26)}}
    x_hat = {
        k: np.clip(x_train[v] + rng.normal(0, 0.05, x_train[v].shape), 0, 1)
        for k, v in log["split_batches"].items()
    }
    truth = RefereeTruth(log, x_train, np.zeros(40, dtype=np.int64))
    res = Reconstructions(x_hat, image=True, prior=prior).grade(truth)
    idx = np.concatenate(list(log["split_batches"].values()))
    ref_psnr = [peak_signal_noise_ratio(x_train[i, 0], prior[0], data_range=1.0) for i in idx]
    ref_ssim = [structural_similarity(x_train[i, 0], prior[0], data_range=1.0) for i in idx]
    ref_mse = [np.mean((x_train[i] - prior) ** 2) for i in idx]
    m = res.metrics
    assert m["psnr_baseline"] == pytest.approx(np.mean(ref_psnr), rel=1e-9)
    assert m["ssim_baseline"] == pytest.approx(np.mean(ref_ssim), rel=1e-9)
    assert m["mse_baseline"] == pytest.approx(np.mean(ref_mse), rel=1e-9)
    att = [
        peak_signal_noise_ratio(x_train[i, 0], x_hat[k][j, 0], data_range=1.0)
        for k, v in log["split_batches"].items()
        for j, i in enumerate(v)
    ]
    assert m["psnr"] == pytest.approx(np.mean(att), rel=1e-9)
    assert m["psnr_gain"] > 10 and m["psnr_gain_ci"][0] > 10


def test_two_means_split_matches_kmeans() -> None:
    from sklearn.cluster import KMeans

    from privlab.attacks.split_label_leakage import two_means_split

    rng = np.random.default_rng(4)
    for trial in range(5):
        v = np.concatenate([rng.normal(0, 1, 20), rng.normal(3 + trial, 1, 7)])
        km = KMeans(2, n_init=20, random_state=0).fit(v[:, None])
        upper = km.labels_ == int(np.argmax(km.cluster_centers_.ravel()))
        np.testing.assert_array_equal(two_means_split(v), upper)
