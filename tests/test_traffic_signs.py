"""Traffic-sign generator, route inference and its metrics, checked independently."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from privlab.attacks.base import RefereeTruth
from privlab.attacks.property_inference import RoutePredictions, majority_share, set_summary
from privlab.data_traffic_signs import (
    REGION_MIX,
    SIGNS,
    load_traffic_signs,
    render,
    vehicle_regions,
)

PARAMS = {"num_vehicles": 6, "num_regions": 3, "images_per_vehicle": 120}


def test_generator_is_deterministic_per_seed() -> None:
    a = load_traffic_signs(PARAMS, test_fraction=0.25, seed=3)
    b = load_traffic_signs(PARAMS, test_fraction=0.25, seed=3)
    c = load_traffic_signs(PARAMS, test_fraction=0.25, seed=4)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_train, b.y_train)
    assert np.array_equal(a.groups_train, b.groups_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.x_train.shape[1:] == (3, 32, 32) and a.num_classes == len(SIGNS)
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    assert sorted(np.unique(a.groups_train)) == list(range(6))
    assert len(a.y_test) == 6 * 30


def test_classes_are_learnable() -> None:
    d = load_traffic_signs(PARAMS, test_fraction=0.25, seed=0)

    def pooled(x: np.ndarray) -> np.ndarray:  # 8x8 average pooling: 192 features
        return x.reshape(len(x), 3, 8, 4, 8, 4).mean(axis=(3, 5)).reshape(len(x), -1)

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    model.fit(pooled(d.x_train), d.y_train)
    acc = model.score(pooled(d.x_test), d.y_test)
    chance = majority_share(d.y_test)
    assert acc > chance + 0.4, (acc, chance)


def test_region_skews_class_mix_and_conditions() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros(200, dtype=np.int64)
    bright = render(labels, np.zeros(200, dtype=np.int64), rng).mean()
    dark = render(labels, np.full(200, 2), rng).mean()
    assert dark < bright - 0.1  # the night-highway region is darker
    assert not np.allclose(REGION_MIX[0] / REGION_MIX[0].sum(), REGION_MIX[1] / REGION_MIX[1].sum())


def test_vehicle_regions_balanced_and_seeded() -> None:
    r = vehicle_regions(12, 3, seed=0)
    assert np.array_equal(np.bincount(r), [4, 4, 4])
    assert np.array_equal(r, vehicle_regions(12, 3, seed=0))


def test_route_grade_against_scipy() -> None:
    params = {"num_vehicles": 9, "num_regions": 3}
    true = vehicle_regions(9, 3, seed=5)
    pred = true.copy()
    pred[:2] = (pred[:2] + 1) % 3  # two wrong
    out = RoutePredictions({k: int(p) for k, p in enumerate(pred)}, params, seed=5)
    graded = out.grade(RefereeTruth({}, np.zeros((1, 1)), np.zeros(1, dtype=np.int64)))
    m = graded.metrics
    assert "accuracy" in graded.ci_methods
    assert m["accuracy"] == pytest.approx(7 / 9)
    assert m["accuracy_baseline"] == pytest.approx(max(np.bincount(true)) / 9)
    assert m["accuracy_gain"] == pytest.approx(7 / 9 - m["accuracy_baseline"])
    ci = binomtest(7, 9).proportion_ci(confidence_level=0.95, method="exact")
    assert m["accuracy_ci"] == pytest.approx([ci.low, ci.high])


def test_set_summary_is_permutation_invariant_mean_std() -> None:
    import torch

    z = torch.randn(10, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    s = set_summary(z)
    assert np.allclose(s, set_summary(z[torch.randperm(10)]))
    pooled = z.double().reshape(10, 2, 4, 2, 4, 2).mean(dim=(3, 5)).reshape(10, -1).numpy()
    assert np.allclose(s, np.concatenate([pooled.mean(0), pooled.std(0)]))
