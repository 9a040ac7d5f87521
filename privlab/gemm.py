"""Dense fp32 products with a shared weight, through oneDNN where PyTorch was built with it.

PyTorch sends its CPU matrix products to MKL, and MKL's sgemm dispatches by CPU vendor: on the
AMD EPYC machines this project runs on, MKL_VERBOSE reports its generic path ("Intel(R)
Architecture processors", not the AVX-512 one), 95 GFLOP/s on one core for a 1024^3 product.
oneDNN, which PyTorch also ships and which dispatches by instruction set, reaches 204 GFLOP/s on
the same core, and 2.0-2.5x on the evaluation and record-space products of the default model
(e.g. [1884, 64] x [64, 256]: 0.30 ms against 0.65 ms). Both compute the plain IEEE fp32
product (oneDNN's reduced-precision modes are off unless torch.backends.mkldnn asks for them);
their sums may round differently in the last bit. tests/test_gemm.py checks `linear` against
F.linear and a float64 product.

MKL's batched products (torch.bmm), which have no oneDNN counterpart in eager PyTorch, also
change speed with MKL's path: computing a narrow layer's per-client product as W h^T was 2.4x
faster than h W^T on an earlier (Intel) machine, and 20% slower on the AMD EPYC here. So
`MKL_INTEL_KERNELS` (the CPU vendor that selects MKL's path) picks that layout.

`torch.ops.mkldnn._linear_pointwise` has no autograd formula, so `linear` uses it only where
no gradient is recorded, and falls back to F.linear elsewhere and for other dtypes.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from privlab.cpu import cpuinfo


def _onednn_linear():
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without the op
        return None


_ONEDNN = _onednn_linear()
MKL_INTEL_KERNELS = "Intel" in str(cpuinfo("vendor_id"))  # "GenuineIntel"; MKL's fast path needs it


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False
) -> torch.Tensor:
    """x W^T + b (then ReLU, fused, when `relu`), a new tensor; W is [out, in] as in nn.Linear."""
    if _ONEDNN is not None and _onednn_applies(x, weight, bias):
        return _ONEDNN(x, weight, bias, "relu" if relu else "none", [], "")
    out = F.linear(x, weight, bias)
    return out.relu_() if relu else out


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
