"""Synthetic predictive-maintenance data and the central baseline scenario."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from privlab.data import load_dataset
from privlab.data_maintenance import FS, MaintenanceParams, generate, window_features
from privlab.errors import ScenarioError
from privlab.scenario import DataSpec


def test_features_match_independent_definitions() -> None:
    """RMS, crest factor and kurtosis by their textbook formulas; a pure tone at the fault
    frequency puts (almost) all its energy in the fault band."""
    rng = np.random.default_rng(0)
    vib = rng.normal(0, 1, (3, 256))
    temp = np.tile(np.arange(16.0) * 0.5 + 40, (3, 1))
    pres = rng.normal(5, 0.2, (3, 16))
    f = window_features(vib, temp, pres, fault_hz=100.0)
    rms = np.sqrt((vib**2).mean(axis=1))
    np.testing.assert_allclose(f[:, 0], rms)
    np.testing.assert_allclose(f[:, 2], np.abs(vib).max(axis=1) / rms)
    m = vib - vib.mean(axis=1, keepdims=True)
    kurt = (m**4).mean(axis=1) / (m**2).mean(axis=1) ** 2 - 3
    np.testing.assert_allclose(f[:, 3], kurt)
    np.testing.assert_allclose(f[:, 6], 0.5)  # the temperature trend per sample
    np.testing.assert_allclose(f[:, 8], pres.std(axis=1))
    tone = np.sin(2 * np.pi * 125.0 * np.arange(256) / FS)[None]  # 125 Hz: an exact FFT bin
    band = window_features(tone, temp[:1], pres[:1], fault_hz=125.0)[0, 4]
    assert band > np.log1p(0.99)


def test_wear_shows_in_the_sensors_and_failures_are_rare() -> None:
    x, y, machine = generate(MaintenanceParams(n_machines=30), seed=1)
    assert x.shape == (750, 11) and np.bincount(machine).tolist() == [25] * 30
    assert 0.05 < y.mean() < 0.3  # imbalanced: most windows are healthy
    for col in (0, 4, 5, 8):  # vibration RMS, fault-band energy, temperature, pressure spread
        _, p = stats.mannwhitneyu(x[y == 1, col], x[y == 0, col], alternative="greater")
        assert p < 1e-6


def test_loader_groups_are_machines_and_it_is_deterministic() -> None:
    spec = DataSpec(name="maintenance", params={"n_machines": 10}, test_fraction=0.2)
    a, b = load_dataset(spec, 4), load_dataset(spec, 4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.groups_train is not None and set(np.unique(a.groups_train)) == set(range(10))
    with pytest.raises(ScenarioError, match=r"data\.params\.n_machine"):
        load_dataset(DataSpec(name="maintenance", params={"n_machine": 3}), 0)


def test_central_baseline_beats_the_class_prior() -> None:
    from privlab.runner import ScenarioRun
    from privlab.scenario import load_scenario

    quick = [
        "topology.rounds=4",
        "attacks=[{name='loss_threshold', id='mia'}]",
        "variants=[{name='central'}]",
    ]
    v = ScenarioRun(load_scenario("maintenance_central", quick)).run()["variants"]["central"]
    d = load_dataset(load_scenario("maintenance_central").data, 0)
    prior = max(d.y_test.mean(), 1 - d.y_test.mean())
    assert v["utility"]["final_accuracy"] > prior + 0.02
    assert v["attacks"]["mia"]["metrics"]["n_members"] > 300
