"""The reference-model lane trainers agree: vectorised and stacked equal the sequential path
(one LocalTrainer per lane in turn) to floating-point rounding, on shuffled mini-batches with
momentum, weight decay, FedProx, several lanes, client sampling, a server learning rate and a
client-side update transform; a model's result does not depend on its group or on where the
groups run."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from privlab import fanout
from privlab.reference_models import ReferenceJob, subset_masks, train_reference_models
from privlab.reference_training import Lanes, pick_trainer, train_group
from privlab.stacked_dp import PrivateRecipe
from privlab.training import TrainSettings


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )


def _scale(update: dict, generator: torch.Generator, factor: float) -> dict:
    """A client-side transform that uses its generator (noise) and the update itself."""
    return {
        k: factor * v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in update.items()
    }


def _job(**kw) -> ReferenceJob:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(90, 1, 6)).astype(np.float32)
    y = (x[:, 0, 0] > 0).astype(np.int64) + (x[:, 0, 1] > 1)
    common = dict(
        x=x,
        y=y,
        masks=subset_masks(90, 5, 44, rng),
        settings=TrainSettings(batch_size=5, lr=0.1, local_epochs=2, momentum=0.9,
                               weight_decay=1e-3, fedprox_mu=0.1),
        rounds=3,
        num_clients=4,
        server_lr=0.8,
        client_fraction=0.5,
        model_key="mlp",
        seed=3,
        update_transforms=(functools.partial(_scale, factor=0.9),),
    )  # fmt: skip
    common.update(kw)
    return ReferenceJob(**common)


@pytest.mark.parametrize("trainer", ["vectorised", "stacked"])
def test_batched_trainers_equal_the_sequential_path(trainer: str) -> None:
    """44 records over 4 lanes of 11: batches of 5 leave a short last batch in every epoch."""
    seq, _ = train_reference_models(_job(trainer="sequential"), _mlp, use_cache=False)
    fast, _ = train_reference_models(_job(trainer=trainer), _mlp, use_cache=False)
    assert Lanes(_job(trainer=trainer), _mlp, [0]).trainer == trainer
    for k in seq.params:
        assert torch.allclose(fast.params[k], seq.params[k], atol=1e-5), k
    plain, _ = train_reference_models(
        _job(trainer=trainer, update_transforms=()), _mlp, use_cache=False
    )
    assert not torch.allclose(plain.params["3.bias"], seq.params["3.bias"], atol=1e-3)


@pytest.mark.parametrize("plain", [False, True])
def test_central_recipe_without_sampling_matches_too(plain: bool) -> None:
    """`plain`: SGD without momentum or weight decay, the vectorised engine's fused step."""
    kw = dict(num_clients=1, server_lr=1.0, client_fraction=1.0, update_transforms=())
    if plain:
        kw["settings"] = TrainSettings(batch_size=6, lr=0.2, local_epochs=3)
    seq, _ = train_reference_models(_job(trainer="sequential", **kw), _mlp, use_cache=False)
    vec, _ = train_reference_models(_job(trainer="auto", **kw), _mlp, use_cache=False)
    for k in seq.params:
        assert torch.allclose(vec.params[k], seq.params[k], atol=1e-5), k


def test_a_model_does_not_depend_on_its_group() -> None:
    job = _job(trainer="vectorised")
    together = train_group(job, _mlp, [0, 1, 2, 3, 4])
    alone = train_group(job, _mlp, [3])
    for k in together:
        assert torch.allclose(together[k][3], alone[k][0], atol=1e-6), k


def test_auto_picks_vectorised_for_linear_stacks_and_never_drops_dp() -> None:
    conv = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    assert pick_trainer(_job(), _mlp()) == "vectorised"
    assert pick_trainer(_job(), conv) == "stacked"
    dp = PrivateRecipe(1.0, 1.0, 0.2)
    assert pick_trainer(_job(dp=dp), _mlp()) == "vectorised"
    assert pick_trainer(_job(trainer="sequential", dp=dp), _mlp()) == "stacked"  # plain steps


@pytest.mark.parametrize("act", [torch.nn.ReLU, torch.nn.Tanh, torch.nn.Sigmoid])
def test_ghost_clipping_equals_per_sample_autograd(act) -> None:
    """Norms and clipped sums written out for a Linear stack against torch.func's
    vmap(grad(...)) per-record gradients through private_gradients (clipping binding for
    some records, padding, and the same noise draws)."""
    from torch.func import stack_module_state

    from privlab.engine.vectorised import linear_stack
    from privlab.stacked_dp import linear_private_gradients, per_sample_grads, private_gradients

    def net() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(6, 9), act(), torch.nn.Linear(9, 7), act(),
            torch.nn.Linear(7, 3),
        )  # fmt: skip

    torch.manual_seed(0)
    models = [net() for _ in range(3)]
    params, _ = stack_module_state(models)
    x, y = 3 * torch.randn(3, 5, 1, 6), torch.randint(0, 3, (3, 5))
    weight = torch.ones(3, 5)
    weight[1, 3:] = 0
    grads = per_sample_grads(net().to("meta"), params, {}, x, y)
    norms = sum(g.reshape(3, 5, -1).pow(2).sum(-1) for g in grads.values()).sqrt()
    clip = float(norms.median())  # the clip binds for some records only
    for sigma in (0.0, 1.3):
        how = dict(max_grad_norm=clip, noise_multiplier=sigma, expected_batch_size=4)
        ref = private_gradients(grads, weight, generator=torch.Generator().manual_seed(1), **how)
        ours = linear_private_gradients(
            linear_stack(models[0]).ops, params, x, y, weight,
            generator=torch.Generator().manual_seed(1), **how,
        )  # fmt: skip
        assert list(ours) == list(ref)
        for k in ref:
            assert torch.allclose(ours[k], ref[k], atol=1e-6), (sigma, k)


def test_dp_vectorised_equals_dp_stacked() -> None:
    """Same Poisson batches and noise draws; only the per-sample gradients are computed
    differently (the stacked path's are checked against Opacus in test_reference_dp.py)."""
    kw = dict(dp=PrivateRecipe(0.8, 0.5, 0.3), update_transforms=())
    stacked, _ = train_reference_models(_job(trainer="stacked", **kw), _mlp, use_cache=False)
    vec, _ = train_reference_models(_job(trainer="auto", **kw), _mlp, use_cache=False)
    plain, _ = train_reference_models(
        _job(trainer="auto", update_transforms=()), _mlp, use_cache=False
    )
    for k in stacked.params:
        assert torch.allclose(vec.params[k], stacked.params[k], atol=1e-5), k
    assert not torch.allclose(vec.params["3.bias"], plain.params["3.bias"], atol=1e-3)


def test_worker_processes_give_the_serial_result() -> None:
    """12 models: two groups, one per worker process."""
    rng = np.random.default_rng(5)
    job = _job(masks=subset_masks(90, 12, 44, rng))
    serial, _ = train_reference_models(job, _mlp, use_cache=False)
    pool = fanout.Processes(2)
    try:
        with fanout.using(pool):
            spread, _ = train_reference_models(job, _mlp, use_cache=False)
        assert pool._pool is not None  # the groups really went to worker processes
    finally:
        pool.close()
    for k in serial.params:
        assert torch.equal(serial.params[k], spread.params[k]), k
