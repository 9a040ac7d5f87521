"""Image metrics agree with scikit-image; matching undoes any permutation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from privlab.image_metrics import (
    PSNR_CAP,
    grade_attempt,
    label_accuracy,
    match,
    mse,
    psnr,
    ssim,
)


def _pair(seed: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1)
    return a, b


@pytest.mark.parametrize("shape", [(5, 8, 8), (4, 1, 8, 8), (3, 3, 16, 12)])
def test_mse_psnr_ssim_match_scikit_image(shape: tuple[int, ...]) -> None:
    a, b = _pair(0, shape)
    ours_mse, ours_psnr, ours_ssim = mse(a, b), psnr(a, b, 1.0), ssim(a, b, 1.0)
    for i in range(shape[0]):
        assert ours_mse[i] == pytest.approx(mean_squared_error(a[i], b[i]), rel=1e-10)
        assert ours_psnr[i] == pytest.approx(
            peak_signal_noise_ratio(a[i], b[i], data_range=1.0), rel=1e-10
        )
        channel_axis = 0 if len(shape) == 4 else None
        ref = structural_similarity(a[i], b[i], data_range=1.0, channel_axis=channel_axis)
        assert ours_ssim[i] == pytest.approx(ref, abs=1e-9)


def test_identical_images_are_perfect() -> None:
    a, _ = _pair(1, (2, 8, 8))
    assert np.all(np.isinf(psnr(a, a)))
    assert ssim(a, a) == pytest.approx([1.0, 1.0])


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=12), st.integers(min_value=0, max_value=10_000))
def test_hungarian_matching_undoes_a_permutation(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    originals = rng.random((n, 1, 8, 8))
    perm = rng.permutation(n)
    rows, cols = match(originals[perm] + rng.normal(0, 1e-3, originals.shape), originals)
    assert np.array_equal(perm[rows], cols)


def test_matching_is_optimal_not_greedy() -> None:
    # Costs (squared error): rec0-orig0 1, rec0-orig1 1, rec1-orig0 0, rec1-orig1 4. Greedy in
    # order pairs rec0 with orig0 and pays 1 + 4; the optimum pays 1 + 0.
    recs = np.array([1.0, 0.0]).reshape(2, 1, 1, 1)
    originals = np.array([0.0, 2.0]).reshape(2, 1, 1, 1)
    rows, cols = match(recs, originals)
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 1, 1: 0}


def test_label_accuracy_counts_a_multiset() -> None:
    assert label_accuracy([3, 1, 1], [1, 3, 1]) == 1.0
    assert label_accuracy([1, 1, 1], [1, 3, 2]) == pytest.approx(1 / 3)


def test_grade_attempt_caps_exact_psnr_and_matches_rectangular_batches() -> None:
    a, _ = _pair(2, (4, 1, 8, 8))
    g = grade_attempt(a[[2]], np.array([7]), a, np.array([1, 2, 7, 3]))
    assert g["psnr"] == PSNR_CAP
    assert g["n_images"] == 1 and g["n_records"] == 4
    assert g["label_accuracy"] == 0.25
    assert g["display"]["true_labels"] == [7]
