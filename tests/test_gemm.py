"""privlab.gemm.linear against independent products: float64 matmul and F.linear."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from privlab import gemm
from privlab.training import blockwise_logits


@pytest.mark.parametrize(
    "rows,inputs,outputs", [(1884, 64, 256), (1024, 256, 10), (7, 3, 5), (0, 64, 256)]
)
@pytest.mark.parametrize("relu", [False, True])
def test_linear_is_the_fp32_product(rows: int, inputs: int, outputs: int, relu: bool) -> None:
    g = torch.Generator().manual_seed(rows + inputs)
    x = torch.randn(rows, inputs, generator=g)
    w, b = torch.randn(outputs, inputs, generator=g), torch.randn(outputs, generator=g)
    exact = x.double() @ w.double().t() + b.double()
    if relu:
        exact = exact.clamp_min(0)
    out = gemm.linear(x, w, b, relu=relu)
    assert out.dtype == torch.float32 and out.shape == (rows, outputs)
    # fp32 accumulation over `inputs` terms of size ~1: a few ulps of sqrt(inputs)
    assert torch.allclose(out.double(), exact, rtol=0, atol=1e-5 * inputs**0.5)
    ref = F.linear(x, w, b)
    assert torch.allclose(out, ref.relu() if relu else ref, rtol=0, atol=1e-5 * inputs**0.5)


def test_linear_takes_strided_inputs_and_no_bias() -> None:
    """The record-space weighted sum passes a transposed view ([256, R] of an [R, 256])."""
    g = torch.Generator().manual_seed(1)
    c, x = torch.randn(500, 256, generator=g), torch.randn(500, 64, generator=g)
    out = gemm.linear(c.t(), x.t())
    assert torch.allclose(out.double(), c.double().t() @ x.double(), rtol=0, atol=1e-3)


def test_linear_falls_back_where_onednn_does_not_apply() -> None:
    """Under autograd (the op has no backward) and for float64 the result is F.linear's, with
    its gradient."""
    x = torch.randn(4, 3, requires_grad=True)
    w, b = torch.randn(2, 3), torch.randn(2)
    out = gemm.linear(x, w, b, relu=True)
    out.sum().backward()
    expected = ((x.detach() @ w.t() + b) > 0).float() @ w
    assert torch.allclose(x.grad, expected)
    xd, wd, bd = torch.randn(4, 3, dtype=torch.float64), w.double(), b.double()
    assert torch.equal(gemm.linear(xd, wd, bd), F.linear(xd, wd, bd))


def test_inference_matches_the_module_and_respects_hooks() -> None:
    """blockwise_logits' Sequential fast path (fused Linear + ReLU) equals model(x) to rounding;
    a hook on any layer sends that layer through its module call, so the hook still fires."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5), nn.Tanh())
    x = torch.randn(300, 2, 4)
    with torch.no_grad():
        ref = model(x)
    out = torch.cat(list(blockwise_logits(model, x)))
    assert torch.allclose(out, ref, rtol=0, atol=1e-5)
    seen = []
    model[2].register_forward_hook(lambda *_: seen.append("relu"))
    out = torch.cat(list(blockwise_logits(model, x)))
    assert seen == ["relu"] and torch.allclose(out, ref, rtol=0, atol=1e-5)
