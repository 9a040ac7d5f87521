"""Gradient inversion reproduces its papers' qualitative results at small scale (digits MLP),
and what the server can invert shrinks to the aggregate under secure aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from privlab.attacks.gradient_inversion import (
    Problem,
    Recipe,
    analytic_fc,
    dlg,
    inverting_gradients,
    recover_labels,
    simulate,
)
from privlab.defenses.update_perturbation import GradientPruning, UpdateNoise
from privlab.errors import ScenarioError
from privlab.image_metrics import psnr
from privlab.results import strip_timing
from privlab.runner import ScenarioRun
from privlab.scenario import ComponentSpec, load_scenario
from privlab.training import LocalTrainer, TrainSettings

DIGITS = load_digits()
X = (DIGITS.images / 16.0)[:, None].astype(np.float32)
Y = DIGITS.target.astype(np.int64)


def _mlp(seed: int = 0, activation: type[torch.nn.Module] = torch.nn.ReLU) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 64), activation(), torch.nn.Linear(64, 10)
    )


def _problem(model: torch.nn.Module, idx: list[int], recipe: Recipe) -> Problem:
    """The observed pseudo-gradient of the records `idx` (computed from the truth)."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    truth = Problem(model, params, params, [len(idx)], recipe, (1, 8, 8), 10)
    x, y = torch.as_tensor(X[idx]), torch.as_tensor(Y[idx])
    target = {k: v.detach() for k, v in simulate(truth, x, y).items()}
    return Problem(model, params, target, [len(idx)], recipe, (1, 8, 8), 10)


FEDSGD = Recipe(lr=0.1, batch_size=1, local_epochs=1)


def test_idlg_recovers_the_label_of_every_batch_1_update() -> None:
    model = _mlp()
    labels = [int(recover_labels(_problem(model, [i], FEDSGD).target, 1)[0]) for i in range(60)]
    assert labels == Y[:60].tolist()


def test_dlg_recovers_image_and_label_with_a_twice_differentiable_model() -> None:
    """Zhu et al. 2019 use sigmoid networks (DLG needs second derivatives of the activation);
    with soft labels optimised jointly, batch-1 images come back above 30 dB."""
    model = _mlp(0, torch.nn.Sigmoid)
    for i in (0, 3):
        problem = _problem(model, [i], FEDSGD)
        images, labels, _ = dlg(problem, torch.Generator().manual_seed(i), 200, None)
        assert labels[0] == Y[i]
        assert psnr(np.clip(images, 0, 1), X[[i]])[0] >= 30


def test_idlg_reaches_30_db_at_batch_1() -> None:
    model = _mlp(1)
    for i in (0, 7, 11):
        problem = _problem(model, [i], FEDSGD)
        labels = recover_labels(problem.target, 1)
        images, _, _ = dlg(problem, torch.Generator().manual_seed(i), 100, labels)
        assert psnr(np.clip(images, 0, 1), X[[i]])[0] >= 30


def test_inverting_gradients_reaches_30_db_at_batch_1() -> None:
    problem = _problem(_mlp(2), [5], FEDSGD)
    labels = recover_labels(problem.target, 1)
    images, _, _ = inverting_gradients(
        problem, torch.Generator().manual_seed(0), 300, labels,
        tv_weight=1e-4, step_size=0.1, restarts=1, bounds=(0.0, 1.0),
    )  # fmt: skip
    assert psnr(images, X[[5]])[0] >= 30


def test_analytic_fc_recovers_the_input_exactly() -> None:
    problem = _problem(_mlp(3), [9], FEDSGD)
    assert psnr(np.clip(analytic_fc(problem), 0, 1), X[[9]])[0] > 80


def test_analytic_fc_only_mixes_a_batch() -> None:
    problem = _problem(_mlp(3), list(range(20, 28)), FEDSGD)
    mixed = np.repeat(analytic_fc(problem), 8, axis=0)
    assert psnr(np.clip(mixed, 0, 1), X[20:28]).mean() < 20


@pytest.mark.parametrize(("n", "batch", "epochs"), [(1, 1, 4), (4, 4, 3)])
def test_simulated_local_steps_equal_the_clients_real_update(
    n: int, batch: int, epochs: int
) -> None:
    model = _mlp(4)
    x, y = torch.as_tensor(X[:n]), torch.as_tensor(Y[:n])
    settings = TrainSettings(batch_size=batch, lr=0.1, local_epochs=epochs)
    trainer = LocalTrainer(model, x, y, settings, torch.Generator().manual_seed(0))
    start = trainer.state()
    trainer.train(start)
    update = {k: trainer.state()[k] - start[k] for k in start}
    recipe = Recipe(lr=0.1, batch_size=batch, local_epochs=epochs)
    params = {k: v.clone() for k, v in start.items()}
    problem = Problem(model, params, update, [n], recipe, (1, 8, 8), 10)
    assert recipe.steps(n) == epochs
    simulated = simulate(problem, x, y)
    for k in update:
        assert torch.allclose(simulated[k], -update[k] / 0.1, atol=1e-5)


def test_inverting_gradients_inverts_a_multi_step_fedavg_update() -> None:
    """Geiping et al. Sec. 6: several local steps do not protect; the attack simulates them."""
    recipe = Recipe(lr=0.1, batch_size=1, local_epochs=5)
    problem = _problem(_mlp(5), [3], recipe)
    labels = recover_labels(problem.target, 1)
    assert labels[0] == Y[3]
    images, _, _ = inverting_gradients(
        problem, torch.Generator().manual_seed(0), 300, labels,
        tv_weight=1e-4, step_size=0.1, restarts=1, bounds=(0.0, 1.0),
    )  # fmt: skip
    assert psnr(images, X[[3]])[0] >= 30


# --------------------------------------------------------------------------- in a real run

RUN = [
    "topology.rounds=2",
    "attacks=[{name='idlg', params={rounds=[1], max_targets=2, iterations=60}}]",
    "expectations=[]",
]
VARIANTS = (
    "variants=[{name='plain'}, {name='he', defenses=[{name='secure_aggregation'}]}, "
    "{name='collude', defenses=[{name='secure_aggregation', params={key_holder='clients', "
    "colluding_client=3}}]}]"
)


@pytest.fixture(scope="module")
def he_run() -> dict:
    return ScenarioRun(load_scenario("gradient_inversion", [*RUN, VARIANTS])).run()


def test_plaintext_server_inverts_single_updates(he_run: dict) -> None:
    m = he_run["variants"]["plain"]["attacks"]["idlg"]["metrics"]
    assert m["label_accuracy"] == 1.0 and m["psnr"] >= 30 and m["aggregate_share"] == 0


def test_under_he_the_server_only_inverts_the_aggregate(he_run: dict) -> None:
    plain = he_run["variants"]["plain"]["attacks"]["idlg"]["metrics"]
    he = he_run["variants"]["he"]["attacks"]["idlg"]
    assert he["metrics"]["aggregate_share"] == 1.0 and he["metrics"]["aggregate_only"] == 1
    attempt = he["artifacts"]["attempts"][0]
    assert attempt["source"] == "aggregate" and attempt["n_records"] >= 5
    assert he["metrics"]["psnr"] < plain["psnr"] - 20
    assert he_run["variants"]["he"]["defenses"][0]["server_holds_secret_key"] is False


def test_a_colluding_key_holder_restores_single_updates(he_run: dict) -> None:
    col = he_run["variants"]["collude"]["attacks"]["idlg"]
    assert {a["source"] for a in col["artifacts"]["attempts"]} == {"decrypted_update"}
    assert col["metrics"]["psnr"] >= 30


def test_runs_are_deterministic() -> None:
    overrides = [*RUN, "variants=[{name='plain'}]"]
    a = ScenarioRun(load_scenario("gradient_inversion", overrides)).run()
    b = ScenarioRun(load_scenario("gradient_inversion", overrides)).run()
    assert strip_timing(a["variants"]) == strip_timing(b["variants"])


# --------------------------------------------------------------------------- cheap defenses


def test_pruning_zeroes_the_smallest_entries() -> None:
    update = {"a": torch.tensor([[0.1, -5.0], [0.2, 3.0]]), "b": torch.tensor([-0.05, 1.0])}
    spec = ComponentSpec(name="gradient_pruning", params={"prune_fraction": 0.5})
    out = GradientPruning(spec, "defenses.0").transform(update, generator=torch.Generator())
    assert out["a"].tolist() == [[0.0, -5.0], [0.0, 3.0]]
    assert out["b"].tolist() == [0.0, 1.0]


def test_noise_is_seeded_and_clipped() -> None:
    update = {"a": torch.full((1000,), 1.0)}
    spec = ComponentSpec(name="update_noise", params={"std": 0.1, "clip_norm": 1.0})
    d = UpdateNoise(spec, "defenses.0")
    one = d.transform(update, generator=torch.Generator().manual_seed(3))["a"]
    two = d.transform(update, generator=torch.Generator().manual_seed(3))["a"]
    assert torch.equal(one, two)
    assert float((one - 1 / 1000**0.5).std()) == pytest.approx(0.1, rel=0.1)


@pytest.mark.parametrize(
    ("name", "params"),
    [("gradient_pruning", {"prune_fraction": 1.0}), ("update_noise", {"std": -1})],
)
def test_bad_defense_params_are_one_line_errors(name: str, params: dict) -> None:
    cls = GradientPruning if name == "gradient_pruning" else UpdateNoise
    with pytest.raises(ScenarioError, match=r"^defenses\.0\.params\.") as err:
        cls(ComponentSpec(name=name, params=params), "defenses.0")
    assert "\n" not in str(err.value)


def test_bad_attack_params_are_one_line_errors() -> None:
    with pytest.raises(ScenarioError, match=r"^attacks\.0\.params\.iterations"):
        ScenarioRun(
            load_scenario(
                "gradient_inversion",
                [
                    "attacks=[{name='idlg', params={iterations=0}}]",
                    "variants=[{name='a'}]",
                    "expectations=[]",
                ],
            )
        )


def test_report_shows_reconstructions_tradeoff_and_he_cost(he_run: dict) -> None:
    from privlab.report import render_report
    from privlab.report_sections.gradient_inversion import sections

    assert sections({}) == []
    titles = [s.title for s in sections(he_run)]
    assert "Originals beside reconstructions" in titles
    assert "Reconstruction quality against accuracy" in titles
    assert "Cost of CKKS secure aggregation" in titles
    html = render_report(he_run)
    assert "only the aggregate" in html and "decrypted with the colluding client" in html
    assert html.count('fill="rgb(') >= 2 * 64  # at least one original and one reconstruction


# --------------------------------------------------------------------------- baselines


def test_box_bounds_come_from_the_population_not_the_victims() -> None:
    """Geiping et al. box the dummies to the data range; the adversary knows the range from
    its population data, never from the victims' records (here given a wider range)."""
    from privlab.attacks.base import FinalView, MembershipChallenge, PopulationData
    from privlab.attacks.gradient_inversion import InvertingGradientsAttack
    from privlab.wire import Message

    attack = InvertingGradientsAttack(ComponentSpec(name="inverting_gradients"), "attacks.0")
    seen: list[tuple[float, float]] = []
    attack.invert = lambda problem, gen, bounds: (  # type: ignore[method-assign]
        seen.append(bounds) or (np.zeros((1, 1, 8, 8)), np.zeros(1, dtype=np.int64))
    )
    model = _mlp()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    attack.observe(Message(1, "server", "client0", "global_model", state, 0))
    update = {k: torch.zeros_like(v) for k, v in state.items()}
    attack.observe(Message(1, "client0", "server", "update", update, 0))
    victims = MembershipChallenge(x=np.full((2, 1, 8, 8), 5.0, np.float32), y=np.zeros(2))
    pop_x = X[:50].copy()
    pop_x[0, 0, 0, 0], pop_x[1, 0, 0, 0] = 0.0, 1.0
    view = FinalView(
        query=lambda x: x,
        challenge=victims,
        recipe=load_scenario("gradient_inversion"),
        model_factory=_mlp,
        side_information={"client_num_samples": {0: 1}},
        population=PopulationData(pop_x, Y[:50]),
    )
    out = attack.finalize(view)
    assert seen == [(0.0, 1.0)]
    assert out.prior is not None and np.allclose(out.prior[0], pop_x.mean(axis=0))
    assert any("population" in k for k in attack.threat_model().knowledge)


def _client_records(results: dict) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray, int]:
    from privlab.data import load_dataset
    from privlab.partition import partition
    from privlab.scenario import Scenario

    scenario = Scenario.model_validate(results["scenario"])
    data = load_dataset(scenario.data, scenario.seed)
    clients = partition(data.y_train, scenario.partition, scenario.seed)
    records = {c.client_id: c.train_idx for c in clients}
    prior = data.x_test.astype(np.float64).mean(axis=0)
    classes, counts = np.unique(data.y_test, return_counts=True)
    return data.x_train, data.y_train, records, prior, int(classes[np.argmax(counts)])


def test_baselines_are_the_population_mean_scored_by_scikit_image(he_run: dict) -> None:
    """m_baseline is the data-free guess (population mean image, majority class) graded like
    the attack: recompute it with scikit-image on the attacked clients' true records."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x, y, records, prior, majority = _client_records(he_run)
    span = float(x.max() - x.min())
    for name in ("plain", "he"):
        a = he_run["variants"][name]["attacks"]["idlg"]
        idx = np.concatenate([records[k] for t in a["artifacts"]["attempts"] for k in t["clients"]])
        psnrs = [peak_signal_noise_ratio(x[i, 0], prior[0], data_range=span) for i in idx]
        ssims = [structural_similarity(x[i, 0], prior[0], data_range=span) for i in idx]
        m = a["metrics"]
        assert m["psnr_baseline"] == pytest.approx(np.mean(psnrs), abs=1e-5)
        assert m["ssim_baseline"] == pytest.approx(np.mean(ssims), abs=1e-5)
        assert m["label_accuracy_baseline"] == pytest.approx(np.mean(y[idx] == majority), abs=1e-6)
        assert m["psnr_gain"] == pytest.approx(m["psnr"] - m["psnr_baseline"], abs=2e-6)
        assert "bootstrap" in a["ci_methods"]["psnr"]
    plain = he_run["variants"]["plain"]["attacks"]["idlg"]["metrics"]
    he = he_run["variants"]["he"]["attacks"]["idlg"]["metrics"]
    assert plain["psnr_gain"] > 15  # a single FedSGD update leaks the record
    assert he["psnr_gain"] < 3  # the aggregate: about what the mean image already scores
