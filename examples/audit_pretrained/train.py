"""Train a model in plain PyTorch, outside privlab, and save what an auditor needs.

    python train.py                # model.pt: plain SGD
    python train.py --dp           # model_dp.pt: DP-SGD with Opacus (noise 2.0, clip 1.0)

Writes into --out (default: this folder): digits.npz (the data file: x, y), members.npy (the
row numbers of digits.npz the model trained on) and the state_dict. The recipe (SGD, lr 0.1,
batch 32, 80 epochs) is what audit.toml declares for the adversary's reference models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from nets import mlp
from sklearn.datasets import load_digits
from torch.nn import functional as F

EPOCHS, LR, BATCH, MEMBERS = 80, 0.1, 32, 200


def main(out: Path, dp: bool, seed: int = 0) -> tuple[Path, float | None]:
    """Train, save; returns the state_dict's path and Opacus' epsilon (None without DP)."""
    out.mkdir(parents=True, exist_ok=True)
    raw = load_digits()
    x = (raw.images / 16.0).reshape(len(raw.target), -1).astype(np.float32)
    y = raw.target.astype(np.int64)
    np.savez(out / "digits.npz", x=x, y=y)
    members = np.sort(np.random.default_rng(seed).choice(len(y), MEMBERS, replace=False))
    np.save(out / "members.npy", members)

    torch.set_num_threads(1)  # small models train fastest on one thread
    torch.manual_seed(seed)
    model = mlp((64,), 10)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    data = torch.utils.data.TensorDataset(
        torch.from_numpy(x[members]), torch.from_numpy(y[members])
    )
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True)
    if dp:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="prv")
        model, opt, loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=2.0, max_grad_norm=1.0
        )
    for _ in range(EPOCHS):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    epsilon = None
    if dp:
        epsilon = engine.get_epsilon(1e-5)
        print(f"epsilon {epsilon:.2f} at delta 1e-5")
        model = model._module  # the plain module inside Opacus' GradSampleModule
    path = out / ("model_dp.pt" if dp else "model.pt")
    torch.save(model.state_dict(), path)
    return path, epsilon


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dp", action="store_true", help="train with DP-SGD (Opacus)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    print(f"wrote {main(args.out, args.dp)[0]}")
