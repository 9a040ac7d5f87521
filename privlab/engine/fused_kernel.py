"""A compiled kernel for the vectorised engine's commonest chunk: full-batch plain SGD of a
one-hidden-layer ReLU MLP in record space (fused_sgd.c; the arithmetic is stacked_sgd's).

Eager PyTorch runs each operation of a step over a whole chunk of clients, so every step
streams the chunk's [clients, records, hidden] blocks through memory, and the small batched
products go to MKL's batched GEMM (its generic path on AMD CPUs). The kernel takes one client
at a time through all its steps while its few tens of kB stay in cache.

It is compiled once per machine with the system's C compiler (`cc -O3 -march=native`, about a
second) into the user cache ($XDG_CACHE_HOME/privlab/kernels, keyed by the source, the
compiler and the CPU), and loaded with ctypes. Without a compiler, or with
PRIVLAB_COMPILED_KERNEL=0, the eager path runs instead; both are tested against the sequential
engine (tests/test_engine.py) and against each other (tests/test_fused_kernel.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

from privlab.cpu import cpuinfo

SOURCE = Path(__file__).with_name("fused_sgd.c")
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC"]
ENV = "PRIVLAB_COMPILED_KERNEL"

_F = ctypes.c_float
_P = ctypes.c_void_p
_I = ctypes.c_int


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "privlab" / "kernels"


@cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get(ENV, "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    parts = [SOURCE.read_text(), cc, " ".join(FLAGS), repr(cpuinfo("model name", "flags"))]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    path = _cache_dir() / f"fused_sgd-{key}.so"
    if not path.exists() and not _compile(cc, path):
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:  # unloadable (another machine's build in a shared home): eager path
        return None
    fn = lib.privlab_fused_full_batch_sgd
    fn.restype = _I
    fn.argtypes = [_I, _I, _I, _I, _I, _F, *[_P] * 12]
    return lib


def _compile(cc: str, path: Path) -> bool:
    """Compile into a temporary file and rename it into place, so that processes compiling
    at once (variants fanned out over cores) never load a half-written library."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        done = subprocess.run(
            [cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, timeout=300
        )
        if done.returncode != 0:
            os.unlink(tmp)
            return False
        os.replace(tmp, path)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def available() -> bool:
    return _library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def full_batch_sgd(
    *,
    pre: torch.Tensor,
    gram: torch.Tensor,
    coef: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    steps: int,
    lr: float,
    w2_out: torch.Tensor | None = None,
    b2_out: torch.Tensor | None = None,
    client_coef: torch.Tensor | None = None,
    w2_sum: torch.Tensor | None = None,
    b2_sum: torch.Tensor | None = None,
) -> None:
    """Run the kernel (see fused_sgd.c for the shapes); every tensor contiguous on the CPU,
    float32 (labels int64). Writes `pre` (scratch), `coef` (C) and the outputs."""
    lib = _library()
    assert lib is not None, "the compiled kernel is not available"
    m, n1, o = coef.shape
    k = w2.shape[0]
    tensors = [pre, gram, coef, w2, b2, labels, weight, w2_out, b2_out, client_coef, w2_sum, b2_sum]
    for t in tensors:
        assert t is None or (t.is_contiguous() and t.device.type == "cpu")
    status = lib.privlab_fused_full_batch_sgd(m, n1, o, k, steps, lr, *map(_ptr, tensors))
    if status != 0:
        raise MemoryError("the fused SGD kernel could not allocate its scratch memory")
