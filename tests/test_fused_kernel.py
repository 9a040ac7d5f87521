"""The compiled full-batch SGD kernel (privlab.engine.fused_kernel) against the eager path of
stacked_sgd.train_chunk, which tests/test_engine.py checks against the sequential engine."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import make_shards

from privlab.engine import fused_kernel, stacked_sgd
from privlab.engine.vectorised import VectorisedEngine
from privlab.models import ModelSpec, build_model
from privlab.training import TrainSettings

pytestmark = pytest.mark.skipif(not fused_kernel.available(), reason="no C compiler")


def _chunk_outputs(monkeypatch, sizes, hidden, classes, features, coef):
    """train_chunk's outputs on one chunk, through the kernel and through the eager path."""
    torch.manual_seed(4)
    model = build_model(ModelSpec(name="mlp", params={"hidden": [hidden]}), (1, features), classes)
    g = torch.Generator().manual_seed(9)
    shards = make_shards(sizes, 2)
    for sh in shards:  # this test's widths, not the helper's
        sh.x = torch.randn(len(sh.y), 1, features, generator=g)
        sh.y = torch.randint(0, classes, (len(sh.y),), generator=g)
    settings = TrainSettings(batch_size=max(sizes), lr=0.2, local_epochs=3)  # full batches
    start = {k: v.clone() for k, v in model.state_dict().items()}
    out = {}
    for name, on in (("kernel", True), ("eager", False)):
        monkeypatch.setattr(fused_kernel, "available", lambda on=on: on)
        vec = VectorisedEngine(shards, model, settings, chunk_size=len(sizes), record_space=True)
        ids = list(range(len(sizes)))
        w = {k: (k + 1) / 10 for k in ids} if coef else None
        chunks = vec.train_sums(start, ids, w) if coef else vec.train(start, ids)
        ((chunk, stacked),) = list(chunks)
        out[name] = (chunk, stacked)
    return out


@pytest.mark.parametrize(
    "sizes,hidden,classes,features",
    [
        ([12] * 9, 256, 10, 64),  # the default model's shapes
        ([5, 12, 3, 12, 7], 40, 3, 9),  # padding rows; hidden units not a multiple of 16
        ([17, 17, 2], 33, 7, 20),  # more rows than one vector; odd classes
    ],
)
@pytest.mark.parametrize("coef", [False, True])
def test_kernel_matches_the_eager_path(monkeypatch, sizes, hidden, classes, features, coef):
    calls = []
    real = fused_kernel.full_batch_sgd
    monkeypatch.setattr(fused_kernel, "full_batch_sgd", lambda **kw: calls.append(1) or real(**kw))
    out = _chunk_outputs(monkeypatch, sizes, hidden, classes, features, coef)
    assert calls == [1]  # the kernel ran once, for the chunk, and the eager path did not
    (chunk_k, got), (chunk_e, want) = out["kernel"], out["eager"]
    assert chunk_k == chunk_e
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_kernel_applies_only_to_its_case() -> None:
    """Linear-ReLU-Linear in float32, every client on every step; not tanh, not two hidden
    layers."""
    plan = stacked_sgd.ChunkPlan(
        None, torch.zeros(2, 3), torch.ones(2, 3, 1), torch.zeros(6, 4), torch.ones(6), [2, 2], 3
    )
    w0 = torch.zeros(5, 4)
    relu = (("linear", "0"), ("act", "relu"), ("linear", "2"))
    assert stacked_sgd._kernel_applies(relu, w0, plan)
    assert not stacked_sgd._kernel_applies((relu[0], ("act", "tanh"), relu[2]), w0, plan)
    assert not stacked_sgd._kernel_applies((*relu, ("act", "relu"), ("linear", "4")), w0, plan)
    assert not stacked_sgd._kernel_applies(relu, w0.double(), plan)
    short = stacked_sgd.ChunkPlan(plan.flat, plan.y, plan.weight, plan.x, plan.real, [2, 1], 3)
    assert not stacked_sgd._kernel_applies(relu, w0, short)


def test_without_a_compiler_the_eager_path_runs(monkeypatch, tmp_path) -> None:
    """A compiler that fails leaves the kernel unavailable (no exception); so does the
    environment switch."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    fused_kernel._library.cache_clear()
    try:
        assert not fused_kernel.available()
        assert not list(tmp_path.rglob("*.so"))
        monkeypatch.setenv("CC", "cc")
        monkeypatch.setenv(fused_kernel.ENV, "0")
        fused_kernel._library.cache_clear()
        assert not fused_kernel.available()
    finally:
        monkeypatch.undo()
        fused_kernel._library.cache_clear()
    assert fused_kernel.available()
