"""Synthetic predictive-maintenance records: machines, sensor windows, failure labels.

The source brief's central baseline: machines stream sensor data to one server that learns to
predict failures. Each machine of a few types (pumps, compressors, fans: different baselines)
has a lifetime drawn from a Weibull distribution (the standard reliability model) and a wear
that grows as (age / apparent lifetime)^shape, where the apparent lifetime differs from the real
one by a log-normal factor (`unpredictability`): condition data predict failures, not exactly.
Every few hours a window of raw signals is recorded:
- vibration: a shaft tone at the running speed, a bearing-fault tone whose amplitude grows with
  wear, and broadband noise;
- temperature: a drift towards a wear-dependent operating temperature, with noise;
- pressure: a set point with fluctuations that widen with wear.
Each record is the window's features (vibration RMS, peak, crest factor, kurtosis and the
energy in the bearing-fault band; temperature mean and slope; pressure mean and spread; speed;
age), as condition-monitoring pipelines compute them, z-scored with training statistics. The
label is "fails within the next `horizon` hours" (imbalanced: most windows are healthy). The
machine id is exposed as each record's group.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import numpy as np
from pydantic import Field
from scipy import stats
from sklearn.model_selection import train_test_split

from privlab.data import Dataset, _make, _Params, _random_state, _standardize, _validate
from privlab.errors import ScenarioError

TYPES = (  # (running speed Hz, operating temperature C, pressure bar)
    (25.0, 55.0, 6.0),
    (50.0, 70.0, 9.0),
    (15.0, 45.0, 3.0),
)
FS = 1000.0
"""Vibration sampling rate (Hz)."""


class MaintenanceParams(_Params):
    n_machines: Annotated[int, Field(ge=2, le=5000)] = 120
    windows_per_machine: Annotated[int, Field(ge=2, le=500)] = 25
    window_samples: Annotated[int, Field(ge=32, le=8192)] = 256
    horizon: Annotated[float, Field(gt=0, lt=1)] = 0.15
    """Share of a machine's lifetime before failure whose windows are labelled 'fails soon'."""
    noise: Annotated[float, Field(ge=0, le=10)] = 1.0
    """Scale of sensor noise (1: the default signal-to-noise)."""
    unpredictability: Annotated[float, Field(ge=0, le=2)] = 0.2
    """Log-normal spread between the lifetime that wear (and so the sensors) follows and the
    actual failure time: failures are not fully predictable from condition data."""


def window_features(
    vib: np.ndarray, temp: np.ndarray, pres: np.ndarray, fault_hz: float
) -> np.ndarray:
    """Condition-monitoring features of windows of raw signals (one window per row)."""
    rms = np.sqrt(np.mean(vib**2, axis=1))
    peak = np.max(np.abs(vib), axis=1)
    spectrum = np.abs(np.fft.rfft(vib, axis=1)) ** 2
    freqs = np.fft.rfftfreq(vib.shape[1], 1 / FS)
    band = (freqs > 0.9 * fault_hz) & (freqs < 1.1 * fault_hz)
    t = np.arange(temp.shape[1]) - (temp.shape[1] - 1) / 2
    slope = (temp * t).sum(axis=1) / (t**2).sum()  # least-squares trend
    return np.column_stack(
        [
            rms,
            peak,
            peak / rms,
            stats.kurtosis(vib, axis=1),
            np.log1p(spectrum[:, band].sum(axis=1) / spectrum.sum(axis=1)),
            temp.mean(axis=1),
            slope,
            pres.mean(axis=1),
            pres.std(axis=1),
        ]
    )


def generate(p: MaintenanceParams, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, fails-soon label, machine id) for every window of every machine."""
    rng = np.random.default_rng([_random_state(seed), 1957])
    n, w = p.window_samples, p.windows_per_machine
    t = np.arange(n) / FS
    rows, labels = [], []
    for m in range(p.n_machines):
        speed, temp0, pres0 = TYPES[m % len(TYPES)]
        speed *= rng.uniform(0.9, 1.1)
        fault_hz = 3.57 * speed  # a bearing's outer-race defect frequency, in shaft orders
        lifetime = 1000.0 * rng.weibull(2.0) + 200.0  # hours
        ages = np.sort(rng.uniform(0, lifetime, w))
        apparent = lifetime * np.exp(rng.normal(0, p.unpredictability))
        wear = (np.minimum(ages / apparent, 1.5) ** rng.uniform(2.0, 4.0))[:, None]
        phase = rng.uniform(0, 2 * np.pi, (w, 2, 1))
        vib = (
            np.sin(2 * np.pi * speed * t + phase[:, 0])
            + 1.5 * wear * np.sin(2 * np.pi * fault_hz * t + phase[:, 1])
            + p.noise * 0.6 * rng.normal(0, 1, (w, n))
        )
        # spalling: sparse impacts once wear passes one half raise kurtosis
        impacts = (rng.random((w, n)) < 0.01 * wear) & (wear > 0.5)
        vib += impacts * rng.normal(0, 1, (w, n)) * 4 * wear
        drift = np.linspace(0, 2, 16) * wear
        temp = temp0 + 12 * wear + drift + p.noise * rng.normal(0, 1.5, (w, 16))
        pres = pres0 + p.noise * rng.normal(0, 1, (w, 16)) * (0.1 + 0.4 * wear)
        feats = window_features(vib, temp, pres, fault_hz)
        rows.append(np.column_stack([feats, np.full(w, speed), ages]))
        labels.append((lifetime - ages <= p.horizon * lifetime).astype(np.int64))
    machines = np.repeat(np.arange(p.n_machines, dtype=np.int64), w)
    return np.concatenate(rows), np.concatenate(labels), machines


def load_maintenance(params: dict[str, Any], *, test_fraction: float, seed: int) -> Dataset:
    """Sensor-window features and failure labels; the machine is each record's group."""
    p = _validate(MaintenanceParams, params)
    x, y, machine = generate(p, seed)
    counts = np.bincount(y, minlength=2)
    n_test = int(np.ceil(test_fraction * len(y)))
    if n_test >= len(y):
        raise ScenarioError(
            f"data.test_fraction: {test_fraction} of {len(y)} windows leaves no training windows"
        )
    stratify = y if counts.min() >= 2 and min(n_test, len(y) - n_test) >= 2 else None
    idx_tr, idx_te = train_test_split(
        np.arange(len(y)),
        test_size=test_fraction,
        random_state=_random_state(seed),
        stratify=stratify,
    )
    x_tr, x_te = _standardize(x[idx_tr], x[idx_te])
    data = _make("maintenance", x_tr, y[idx_tr], x_te, y[idx_te], 2)
    return dataclasses.replace(data, groups_train=machine[idx_tr], groups_test=machine[idx_te])
