"""One gradient inversion at batch size 1 on the default model (digits, MLP [128]): seconds
to PSNR >= 30 dB, against a plain PyTorch DLG loop in the same process.

privlab's iDLG (labels from the bias gradient, L-BFGS on the L2 gradient distance through
`simulate`) and Inverting Gradients (cosine + TV, Adam) invert a FedSGD gradient of one digit;
the reference is the textbook DLG loop written directly against torch.autograd with the label
given. Target: one inversion to >= 30 dB in under 10 s.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_inversion.py [--index 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.nn import functional as F

from privlab.attacks.gradient_inversion import (
    Problem,
    Recipe,
    dlg,
    inverting_gradients,
    recover_labels,
    simulate,
)
from privlab.image_metrics import psnr
from privlab.models import build_model
from privlab.scenario import ModelSpec


def plain_dlg(model: torch.nn.Module, grads: list[torch.Tensor], label: int, iters: int) -> tuple:
    """Reference: DLG as a bare PyTorch loop (L-BFGS, L2 gradient distance, known label)."""
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = torch.tensor([label])
    opt = torch.optim.LBFGS(
        [x],
        max_iter=iters,
        history_size=100,
        tolerance_grad=1e-12,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )
    scale = sum((g**2).sum() for g in grads)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        dummy = torch.autograd.grad(
            F.cross_entropy(model(x), y), list(model.parameters()), create_graph=True
        )
        loss = sum(((a - b) ** 2).sum() for a, b in zip(dummy, grads, strict=True)) / scale
        loss.backward()
        return loss

    opt.step(closure)
    return x.detach().numpy()


def main() -> None:
    torch.set_num_threads(1)  # as `privlab run` does by default
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=100)
    args = ap.parse_args()
    digits = load_digits()
    x_true = (digits.images[[args.index]] / 16.0)[:, None].astype(np.float32)
    y_true = int(digits.target[args.index])
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="mlp", params={"hidden": [128]}), (1, 8, 8), 10)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    recipe = Recipe(lr=0.1, batch_size=16, local_epochs=1)
    truth = Problem(model, params, params, [1], recipe, (1, 8, 8), 10)
    target = {
        k: v.detach()
        for k, v in simulate(truth, torch.as_tensor(x_true), torch.tensor([y_true])).items()
    }
    problem = Problem(model, params, target, [1], recipe, (1, 8, 8), 10)

    dlg(problem, torch.Generator().manual_seed(1), 2, recover_labels(target, 1))  # warm-up
    t0 = time.perf_counter()
    labels = recover_labels(target, 1)
    images, _, _ = dlg(problem, torch.Generator().manual_seed(0), args.iterations, labels)
    t_idlg = time.perf_counter() - t0
    p_idlg = float(psnr(np.clip(images, 0, 1), x_true)[0])

    t0 = time.perf_counter()
    images, _, _ = inverting_gradients(
        problem, torch.Generator().manual_seed(0), 400, labels,
        tv_weight=1e-4, step_size=0.1, restarts=1, bounds=(0.0, 1.0),
    )  # fmt: skip
    t_ig = time.perf_counter() - t0
    p_ig = float(psnr(images, x_true)[0])

    t0 = time.perf_counter()
    ref = plain_dlg(model, [target[k] for k in params], y_true, args.iterations)
    t_ref = time.perf_counter() - t0
    p_ref = float(psnr(np.clip(ref, 0, 1), x_true)[0])

    print(f"label recovered        {int(labels[0]) == y_true} (true {y_true})")
    print(f"privlab iDLG           {t_idlg:.2f} s, PSNR {p_idlg:.1f} dB (target >= 30 dB, < 10 s)")
    print(f"privlab Inv. Gradients {t_ig:.2f} s, PSNR {p_ig:.1f} dB (400 Adam steps)")
    print(f"plain PyTorch DLG      {t_ref:.2f} s, PSNR {p_ref:.1f} dB")
    print(f"ratio privlab / plain  {t_idlg / t_ref:.2f}x")


if __name__ == "__main__":
    main()
