"""DP-SGD's fast path (book-keeping clipping) against Opacus, the reference implementation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.nn import functional as F

from privlab.defenses import dp_fast
from privlab.defenses.dp_sgd import DPSGD, DPSGDTrainer, FastDPSGDTrainer
from privlab.engine.sgd import sgd_update
from privlab.models import build_model
from privlab.scenario import ComponentSpec, ModelSpec
from privlab.training import TrainSettings, seeded_generator


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return build_model(ModelSpec(name="mlp", params={"hidden": [32, 16]}), (1, 8, 8), 10)


def _batch(n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g) * torch.linspace(0.1, 3, n)[:, None, None, None]
    return x, torch.randint(0, 10, (n,), generator=g)


def _opacus_per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    gsm = GradSampleModule(model)
    F.cross_entropy(gsm(x), y).backward()
    out = [p.grad_sample.clone() for p in model.parameters()]
    gsm._close()
    return out


def test_clipped_sum_equals_opacus_per_sample_clipping() -> None:
    """Before noise: per-sample norms and the clipped sum equal what Opacus' per-sample
    gradients (GradSampleModule, mean reduction: per-record gradients) give."""
    model, (x, y) = _mlp(), _batch()
    per_sample = _opacus_per_sample(model, x, y)
    norms_ref = torch.stack([g.flatten(1).norm(dim=1) for g in per_sample], 1).norm(dim=1)
    clip = float(norms_ref.median())  # half the records clipped, half not
    factor = (clip / (norms_ref + 1e-6)).clamp(max=1.0)
    summed_ref = [torch.einsum("i,i...", factor, g) for g in per_sample]
    summed, norms, _ = dp_fast.clipped_grad_sum(model, x, y, clip)
    assert torch.allclose(norms, norms_ref, rtol=1e-5, atol=1e-6)
    for ours, ref in zip(summed, summed_ref, strict=True):
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 5e-4)])
def test_fast_step_equals_opacus_step_for_the_same_noise_draw(
    momentum: float, weight_decay: float
) -> None:
    """Three full DP-SGD steps (one on an empty Poisson batch) from the same weights with the
    same generator state: Opacus' DPOptimizer and the fast path reach the same parameters."""
    x, y = _batch()
    batches = [slice(0, 10), slice(10, 10), slice(10, 24)]
    ref_model, fast_model = _mlp(), _mlp()
    opt = DPOptimizer(
        torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=momentum,
                        weight_decay=weight_decay),
        noise_multiplier=1.3, max_grad_norm=0.5, expected_batch_size=8,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    gsm = GradSampleModule(ref_model)
    gen = torch.Generator().manual_seed(7)
    fast_params = dp_fast.dp_parameters(fast_model)
    bufs: list[torch.Tensor | None] = [None] * len(fast_params)
    for b in batches:
        opt.zero_grad(set_to_none=True)
        logits = gsm(x[b])
        if len(y[b]) == 0:
            F.cross_entropy(logits, y[b], reduction="sum").backward()
        else:
            F.cross_entropy(logits, y[b]).backward()
        opt.step()
        grads, _ = dp_fast.dp_gradient(
            fast_model, x[b], y[b], max_grad_norm=0.5, noise_multiplier=1.3,
            expected_batch_size=8, generator=gen,
        )  # fmt: skip
        sgd_update(fast_params, grads, bufs, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for p_ref, p_fast in zip(ref_model.parameters(), fast_model.parameters(), strict=True):
        assert torch.allclose(p_ref, p_fast, rtol=1e-5, atol=1e-6)
    # the noise really was drawn (the step is not the noiseless one)
    assert not torch.allclose(next(_mlp().parameters()), next(fast_model.parameters()))


def _opacus_steps(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    gen: torch.Generator,
    *,
    noise: float,
    clip: float,
    ebs: int,
    momentum: float,
    weight_decay: float,
) -> None:
    """The reference: Opacus' GradSampleModule + DPOptimizer steps, in place on `model`."""
    opt = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay),
        noise_multiplier=noise, max_grad_norm=clip, expected_batch_size=ebs, generator=gen,
    )  # fmt: skip
    gsm = GradSampleModule(model)
    for xb, yb in batches:
        opt.zero_grad(set_to_none=True)
        logits = gsm(xb)
        reduction = "sum" if len(yb) == 0 else "mean"
        F.cross_entropy(logits, yb, reduction=reduction).backward()
        opt.step()
    gsm._close()


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.Sigmoid])
@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 5e-4)])
def test_written_out_stacked_steps_equal_opacus_per_model(
    act: type, momentum: float, weight_decay: float
) -> None:
    """privlab.stacked_dp.private_step for 3 stacked models, each with its own generator and
    its own Poisson-sized batches (padded with zero weight, one batch empty), against
    Opacus' DPOptimizer run on each model alone with a generator in the same state."""
    from privlab.engine.vectorised import linear_stack
    from privlab.stacked_dp import private_step

    def make(seed: int) -> nn.Sequential:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), act(), nn.Linear(12, 10))

    x, y = _batch(30)
    sizes = [[9, 4, 0], [5, 11, 7], [1, 6, 3]]  # model i's batch at step t
    ebs, clip, noise = [6, 7, 3], 0.7, [1.3, 0.0, 0.6]
    arch = linear_stack(make(0))
    assert arch is not None
    models = [make(i) for i in range(3)]
    stacked = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models])
               for k in arch.keys}  # fmt: skip
    noise_buf = {k: torch.empty_like(v) for k, v in stacked.items()}
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    bufs: list[torch.Tensor | None] = [None] * len(stacked)
    for t in range(3):
        width = max(1, max(s[t] for s in sizes))
        idx = torch.zeros(3, width, dtype=torch.long)
        weight = torch.zeros(3, width)
        for i, s in enumerate(sizes):
            idx[i, : s[t]] = torch.arange(s[t]) + 3 * i + t
            weight[i, : s[t]] = 1.0
        grads, _ = private_step(
            arch.ops, stacked, noise_buf, x[idx], y[idx], weight, max_grad_norm=clip,
            stds=[n * clip for n in noise], generators=gens,
            expected_batch_size=ebs,
        )  # fmt: skip
        sgd_update(list(stacked.values()), list(grads.values()), bufs, lr=0.1,
                   momentum=momentum, weight_decay=weight_decay)  # fmt: skip
    for i in range(3):
        ref = make(i)
        batches = [(x[torch.arange(s) + 3 * i + t], y[torch.arange(s) + 3 * i + t])
                   for t, s in enumerate(sizes[i])]  # fmt: skip
        gen = torch.Generator().manual_seed(10 + i)
        _opacus_steps(ref, batches, gen, noise=noise[i], clip=clip, ebs=ebs[i],
                      momentum=momentum, weight_decay=weight_decay)  # fmt: skip
        for k, p in ref.named_parameters():
            assert torch.allclose(stacked[k][i], p, rtol=1e-5, atol=1e-6), (i, k)
    assert not torch.allclose(stacked["1.weight"][0], make(0)[1].weight)


def test_noise_is_drawn_as_opacus_draws_it() -> None:
    """With an all-zero clipped sum, the fast path's gradient is the noise alone: the same
    torch.normal draws, per parameter in order, as Opacus' _generate_noise."""
    from opacus.optimizers.optimizer import _generate_noise

    zeros = [torch.zeros(5, 3), torch.zeros(5)]
    ours = dp_fast.add_noise_and_scale(
        zeros, noise_multiplier=2.0, max_grad_norm=0.5, expected_batch_size=4,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(3)
    for o, z in zip(ours, zeros, strict=True):
        ref = _generate_noise(std=1.0, reference=z, generator=gen) / 4
        assert torch.equal(o, ref)


def test_stacked_noise_is_each_models_own_opacus_draw() -> None:
    """privlab.stacked_dp.draw_noise for 3 stacked models: row m holds exactly (bitwise) what
    Opacus' _generate_noise draws, parameter by parameter, from model m's generator alone;
    std 0 gives zeros and leaves that generator untouched."""
    from opacus.optimizers.optimizer import _generate_noise

    from privlab.stacked_dp import draw_noise

    shapes = [(7, 5), (7,), (3, 7), (3,)]  # sizes above and below torch's 16-value kernel
    out = {str(i): torch.empty(3, *s) for i, s in enumerate(shapes)}
    stds = [0.5, 0.0, 2.0]
    draw_noise(out, stds, [torch.Generator().manual_seed(20 + m) for m in range(3)])
    for m, std in enumerate(stds):
        gen = torch.Generator().manual_seed(20 + m)
        for i, s in enumerate(shapes):
            ref = _generate_noise(std=std, reference=torch.zeros(s), generator=gen)
            assert torch.equal(out[str(i)][m], ref), (m, i)
    untouched = torch.Generator().manual_seed(21)
    draw_noise({"w": torch.empty(1, 4)}, [0.0], [untouched])
    assert torch.equal(untouched.get_state(), torch.Generator().manual_seed(21).get_state())


def test_whole_trainer_matches_the_opacus_trainer() -> None:
    """Same seed, same Poisson batches, same noise: the two trainers end at the same weights,
    the same mean loss and the same privacy record except for the path that ran."""
    x, y = _batch(60, seed=4)
    settings = TrainSettings(batch_size=8, lr=0.05, local_epochs=2, momentum=0.5)
    out, losses = {}, {}
    for path in ("auto", "opacus"):
        spec = ComponentSpec(name="dp_sgd", params={"noise_multiplier": 0.8, "path": path})
        t = DPSGD(spec, "defenses.0").make_trainer(
            _mlp(), x, y, settings, seeded_generator(0, 1, 7), planned_epochs=2
        )
        losses[path] = t.train(t.state()).mean_loss
        out[path] = (t.state(), t.privacy())
        if path == "auto":
            assert t.arch is not None  # the written-out step (privlab.stacked_dp)
    assert out["auto"][1].pop("path") == "book-keeping"
    assert out["opacus"][1].pop("path") == "opacus"
    assert out["auto"][1] == out["opacus"][1]
    assert losses["auto"] == pytest.approx(losses["opacus"], rel=1e-5)
    for k, v in out["opacus"][0].items():
        assert torch.allclose(out["auto"][0][k], v, rtol=1e-4, atol=1e-5), k


def test_fast_path_applies_to_linear_stacks_only() -> None:
    assert dp_fast.supports(_mlp())
    assert dp_fast.supports(build_model(ModelSpec(name="logreg"), (1, 8, 8), 10))
    cnn = build_model(ModelSpec(name="cnn"), (1, 8, 8), 10)
    assert not dp_fast.supports(cnn)
    spec = ComponentSpec(name="dp_sgd", params={"noise_multiplier": 1.0})
    x, y = _batch(8)
    trainer = DPSGD(spec, "defenses.0").make_trainer(
        cnn, x, y, TrainSettings(batch_size=4, lr=0.1, local_epochs=1), seeded_generator(0),
        planned_epochs=1,
    )  # fmt: skip
    assert isinstance(trainer, DPSGDTrainer) and not isinstance(trainer, FastDPSGDTrainer)


def test_fast_path_does_not_import_torch_dynamo() -> None:
    """Issue 12: constructing a torch.optim optimiser imports torch._dynamo (over a second);
    a DP-SGD trainer on the fast path trains without it."""
    code = (
        "import sys, torch\n"
        "from privlab.defenses.dp_sgd import DPSGD\n"
        "from privlab.scenario import ComponentSpec\n"
        "from privlab.training import TrainSettings, seeded_generator\n"
        "m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(),\n"
        "                        torch.nn.Linear(8, 3))\n"
        "x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))\n"
        "spec = ComponentSpec(name='dp_sgd', params={'target_epsilon': 4.0, 'accountant': 'rdp'})\n"
        "t = DPSGD(spec, 'd').make_trainer(m, x, y, TrainSettings(8, 0.1, 1),\n"
        "                                  seeded_generator(0), planned_epochs=2)\n"
        "t.train(t.state()); t.privacy()\n"
        "print(t.privacy()['path'], 'torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["book-keeping", "False"]


@pytest.mark.parametrize(("scenario", "path"), [("split_label_leakage", "opacus"),
                                                ("default", "book-keeping")])  # fmt: skip
def test_runs_report_the_path_and_split_learning_trains_through_opacus(
    scenario: str, path: str
) -> None:
    """Split learning drives the bottom model with the server's gradients (not the trainer's
    own cross-entropy steps), so its DP-SGD goes through Opacus; FedAvg takes the fast path."""
    from privlab.runner import ScenarioRun
    from privlab.scenario import load_scenario

    s = load_scenario(
        scenario,
        ["attacks=[]", "expectations=[]", "topology.rounds=1", "partition.num_clients=2",
         'variants=[{name="dp", defenses=[{name="dp_sgd", params={noise_multiplier=1.0}}]}]'],
    )  # fmt: skip
    privacy = ScenarioRun(s).run()["variants"]["dp"]["privacy"]
    assert privacy["path"] == path and privacy["steps"] > 0
