"""DP-SGD in the stacked reference-model trainer, checked against Opacus' DPOptimizer."""

from __future__ import annotations

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch.func import stack_module_state

from privlab.reference_models import ReferenceJob, subset_masks, train_reference_models
from privlab.stacked_dp import (
    PrivateRecipe,
    per_sample_grads,
    poisson_batches,
    private_gradients,
)
from privlab.training import TrainSettings


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _models(n: int) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [_mlp() for _ in range(n)]


def test_one_step_equals_opacus_clipped_sum() -> None:
    """Noise off: each stacked model's gradient is Opacus' clipped, scaled per-sample sum."""
    rng = np.random.default_rng(0)
    models = _models(3)
    x = torch.as_tensor(rng.normal(0, 3, size=(3, 10, 6)), dtype=torch.float32)
    y = torch.as_tensor(rng.integers(0, 3, size=(3, 10)))
    weight = torch.ones(3, 10)
    weight[2, 7:] = 0  # model 2's batch holds 7 records, padded to 10
    params, buffers = stack_module_state(models)
    base = _mlp().to("meta")
    grads = per_sample_grads(base, params, buffers, x, y)
    ours = private_gradients(
        grads,
        weight,
        max_grad_norm=0.5,
        noise_multiplier=0.0,
        expected_batch_size=8,
        generator=None,
    )
    for i, model in enumerate(models):
        real = int(weight[i].sum())
        gsm = GradSampleModule(model)
        opt = DPOptimizer(
            torch.optim.SGD(gsm.parameters(), lr=0.1),
            noise_multiplier=0.0,
            max_grad_norm=0.5,
            expected_batch_size=8,
        )
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(gsm(x[i, :real]), y[i, :real])
        loss.backward()
        assert opt.pre_step()
        for name, p in model.named_parameters():
            assert torch.allclose(ours[name][i], p.grad, atol=1e-6), name
        gsm._close()


def test_one_step_noise_is_gaussian_with_sigma_c_over_batch() -> None:
    """All-padding batch: the gradient is pure noise N(0, (sigma C / B)^2), independent per
    coordinate and per model (checked on the moments and a KS test)."""
    from scipy import stats

    models = _models(4)
    params, _ = stack_module_state(models)
    grads = {k: torch.zeros(4, 5, *v.shape[1:]) for k, v in params.items()}
    out = private_gradients(
        grads,
        torch.zeros(4, 5),
        max_grad_norm=2.0,
        noise_multiplier=1.5,
        expected_batch_size=4,
        generator=torch.Generator().manual_seed(1),
    )
    flat = torch.cat([v.reshape(-1) for v in out.values()]).double().numpy()
    scale = 1.5 * 2.0 / 4
    assert abs(flat.mean()) < 4 * scale / np.sqrt(len(flat))
    assert np.isclose(flat.std(), scale, rtol=0.05)
    assert stats.kstest(flat / scale, "norm").pvalue > 1e-3
    a, b = out["0.weight"][0].reshape(-1), out["0.weight"][1].reshape(-1)
    assert abs(np.corrcoef(a.numpy(), b.numpy())[0, 1]) < 0.15


def test_poisson_batches_sample_each_record_with_rate_q() -> None:
    members = torch.arange(4 * 500).reshape(4, 500)
    gen = torch.Generator().manual_seed(2)
    counts = np.zeros((4, 500))
    for _ in range(200):
        idx, w = poisson_batches(members, 0.1, gen)
        for lane in range(4):
            chosen = idx[lane][w[lane] > 0]
            assert torch.all((chosen >= lane * 500) & (chosen < (lane + 1) * 500))
            assert len(set(chosen.tolist())) == len(chosen)
            counts[lane, (chosen - lane * 500).numpy()] += 1
    assert np.isclose(counts.mean() / 200, 0.1, rtol=0.05)


def test_dp_reference_models_train_and_noise_changes_them() -> None:
    """End to end: a DP job trains, is deterministic, and has its own cache key."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=60)
    masks = subset_masks(60, 2, 30, rng)
    common = dict(
        x=x,
        y=y,
        masks=masks,
        settings=TrainSettings(batch_size=10, lr=0.5, local_epochs=2),
        rounds=2,
        num_clients=1,
        server_lr=1.0,
        model_key="mlp",
        seed=1,
    )
    plain = ReferenceJob(**common)
    dp = ReferenceJob(**common, dp=PrivateRecipe(1.0, 1.0, 1 / 3))
    dp_more = ReferenceJob(**common, dp=PrivateRecipe(2.0, 1.0, 1 / 3))
    assert len({plain.key(), dp.key(), dp_more.key()}) == 3
    a, _ = train_reference_models(dp, _mlp, use_cache=False)
    b, _ = train_reference_models(dp, _mlp, use_cache=False)
    c, _ = train_reference_models(plain, _mlp, use_cache=False)
    assert torch.equal(a.logits(x), b.logits(x))
    assert not torch.allclose(a.logits(x), c.logits(x))
