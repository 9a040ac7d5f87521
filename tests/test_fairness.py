"""Accuracy per client and per group, the synthetic minority, and DP-SGD's disparate impact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import accuracy_score

import privlab
from privlab.data import load_dataset
from privlab.fairness import clopper_pearson, fairness_metrics, gap_interval, grouped_pays
from privlab.partition import ClientData
from privlab.scenario import DataSpec

MINORITY = {"n_samples": 1000, "minority_fraction": 0.1, "minority_shift": 3.0}


def test_synthetic_minority_has_few_records_and_its_own_distribution() -> None:
    d = load_dataset(DataSpec(name="synthetic", params=MINORITY), seed=0)
    assert d.group_names == ("majority", "minority")
    groups = np.concatenate([d.groups_train, d.groups_test])
    assert (groups == 1).sum() == 100
    # Stratified by group: the test set holds the same minority share as the whole.
    assert (d.groups_test == 1).mean() == pytest.approx(0.1, abs=0.01)
    x = np.concatenate([d.x_train, d.x_test])
    gap = x[groups == 1].mean(axis=0) - x[groups == 0].mean(axis=0)
    assert np.all(gap > 1.0)  # shifted in every (standardized) feature
    same = load_dataset(DataSpec(name="synthetic", params=MINORITY), seed=0)
    np.testing.assert_array_equal(same.x_train, d.x_train)
    np.testing.assert_array_equal(same.groups_test, d.groups_test)


def test_group_and_client_accuracy_against_sklearn() -> None:
    d = load_dataset(DataSpec(name="synthetic", params=MINORITY), seed=1)
    torch.manual_seed(0)
    model = torch.nn.Linear(20, 2)
    tensors = {k: torch.as_tensor(getattr(d, k)) for k in ("x_train", "y_train")}
    n = len(d.y_train)
    clients = [
        ClientData(0, np.arange(0, n // 2), np.arange(0, n // 4)),
        ClientData(1, np.arange(n // 2, n), np.arange(n // 2, n // 2 + 50)),
    ]
    out = fairness_metrics(model, d, clients, tensors)
    with torch.no_grad():
        pred_test = model(torch.as_tensor(d.x_test)).argmax(1).numpy()
        pred_train = model(tensors["x_train"]).argmax(1).numpy()
    for code, g in enumerate(("majority", "minority")):
        mask = d.groups_test == code
        expected = accuracy_score(d.y_test[mask], pred_test[mask])
        assert out["per_group_accuracy"][g] == pytest.approx(expected, abs=1e-6)
        assert out["per_group_n"][g] == mask.sum()
        prior = np.bincount(d.y_test[mask]).max() / mask.sum()
        assert out["per_group_accuracy_baseline"][g] == pytest.approx(prior, abs=1e-6)
    accs = out["per_group_accuracy"].values()
    assert out["group_accuracy_gap"] == pytest.approx(max(accs) - min(accs), abs=1e-6)
    for c in clients:
        expected = accuracy_score(d.y_train[c.holdout_idx], pred_train[c.holdout_idx])
        assert out["per_client_accuracy"][str(c.client_id)] == pytest.approx(expected, abs=1e-6)
    lo, hi = out["group_accuracy_gap_ci"]
    assert lo <= out["group_accuracy_gap"] <= hi


def test_clopper_pearson_matches_the_beta_quantiles() -> None:
    """Exact interval: Beta(k, n-k+1) and Beta(k+1, n-k) quantiles at 2.5% and 97.5%."""
    for k, n in ((0, 10), (7, 20), (40, 40), (33, 90)):
        lo = stats.beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
        hi = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
        assert clopper_pearson(k, n) == pytest.approx([lo, hi], abs=1e-6)


def test_gap_interval_is_seeded_and_covers_a_real_gap() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(400) < 0.9, rng.random(80) < 0.6
    ci = gap_interval([a, b])
    assert ci == gap_interval([a, b])
    assert ci[0] < a.mean() - b.mean() < ci[1] and ci[0] > 0.1


def test_dp_sgd_costs_the_minority_more_than_the_majority() -> None:
    """Bagdasaryan et al. 2019, qualitatively, in the bundled fairness_dp scenario: under
    DP-SGD at epsilon 1 the 5% minority loses more accuracy than the majority."""
    results = privlab.run(
        "fairness_dp",
        overrides={"variants": [{"name": "no_defense"}, _dp_variant()], "expectations": []},
    )
    before = results.metric("utility.per_group_accuracy", "no_defense")
    after = results.metric("utility.per_group_accuracy", "dp_sgd_eps1")
    loss_major = before["majority"] - after["majority"]
    loss_minor = before["minority"] - after["minority"]
    assert loss_minor > loss_major + 0.05, (before, after)
    gaps = results.metric("utility.group_accuracy_gap")
    assert gaps["dp_sgd_eps1"] > gaps["no_defense"]
    assert set(results.metric("utility.per_client_accuracy", "no_defense")) == {
        "0",
        "1",
        "2",
        "3",
        "4",
    }


def _dp_variant() -> dict:
    scenario = privlab.api._scenario("fairness_dp", None, None)
    spec = next(v for v in scenario.variants if v.name == "dp_sgd_eps1")
    return spec.model_dump(mode="json")


def test_gap_interval_matches_an_index_resampling_bootstrap() -> None:
    """The binomial shortcut against the textbook bootstrap (resample each part's records
    with replacement, take max - min of the parts' means), 4,000 draws of the latter."""
    rng = np.random.default_rng(3)
    parts = [rng.random(n) < p for n, p in ((40, 0.9), (25, 0.6), (60, 0.75))]
    gaps = []
    for _ in range(4000):
        accs = [h[rng.integers(0, len(h), len(h))].mean() for h in parts]
        gaps.append(max(accs) - min(accs))
    lo, hi = np.percentile(gaps, [2.5, 97.5])
    ci = gap_interval(parts)
    assert abs(ci[0] - lo) < 0.04 and abs(ci[1] - hi) < 0.04


def test_grouped_gap_interval_matches_an_index_resampling_bootstrap() -> None:
    """Many parts sharing a few (n, k), as clients do at scale: the multinomial-per-group
    sampler against the textbook bootstrap (every part's records resampled, 4,000 draws)."""
    rng = np.random.default_rng(5)
    ks = rng.choice([9, 10, 11, 12], size=80, p=[0.1, 0.3, 0.4, 0.2])
    parts = [np.arange(12) < k for k in ks] + [np.arange(20) < 17 for _ in range(20)]
    pairs = {(len(h), int(h.sum())) for h in parts}
    assert grouped_pays(np.array([n for n, _ in pairs]), len(parts))  # the grouped sampler
    gaps = []
    for _ in range(4000):
        accs = [h[rng.integers(0, len(h), len(h))].mean() for h in parts]
        gaps.append(max(accs) - min(accs))
    lo, hi = np.percentile(gaps, [2.5, 97.5])
    ci = gap_interval(parts)
    assert abs(ci[0] - lo) < 0.02 and abs(ci[1] - hi) < 0.02, (ci, lo, hi)
    assert ci == gap_interval(parts)


def test_grouped_gaps_follow_the_exact_distribution() -> None:
    """The per-group sampler against the gap's exact distribution, enumerated over every joint
    outcome of 3 parts of Binomial(2, 1/2) and 2 parts of Binomial(3, 2/3) hits."""
    from itertools import product

    from scipy import stats as st

    from privlab.fairness import _grouped_gaps

    n_of = [2, 2, 2, 3, 3]
    pmfs = [st.binom.pmf(np.arange(n + 1), n, (1 / 2 if n == 2 else 2 / 3)) for n in n_of]
    exact: dict[float, float] = {}
    for hits in product(*[range(n + 1) for n in n_of]):
        accs = [h / n for h, n in zip(hits, n_of, strict=True)]
        p = float(np.prod([pmf[h] for pmf, h in zip(pmfs, hits, strict=True)]))
        key = round(max(accs) - min(accs), 9)
        exact[key] = exact.get(key, 0.0) + p
    draws = 200_000
    gaps = _grouped_gaps(
        np.array([[2, 1], [3, 2]]), np.array([3, 2]), np.random.default_rng(1), draws
    )
    values, freq = np.unique(np.round(gaps, 9), return_counts=True)
    got = dict(zip(values.tolist(), (freq / draws).tolist(), strict=True))
    assert set(got) <= set(exact)
    for key, p in exact.items():  # binomial standard error at 200,000 draws is <= 0.0012
        assert abs(got.get(key, 0.0) - p) < 0.005, (key, got.get(key), p)
