"""Time of each robust aggregation rule for 100 client updates of the default model, as a
ratio to the plain (weighted) mean of the same stack, measured in the same process.

The default model is the default scenario's MLP on digits (64 -> 128 -> 10, 9,610 parameters).
Each rule goes through its AggregationDefense wrapper (flatten, rule, unflatten), as in a run;
the reference is privlab's FedAvg `weighted_mean` over the same dict updates. Updates are
Gaussian around a common direction with 20 outliers, so selection rules do real work.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_aggregators.py [--clients 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from privlab import registry
from privlab.models import build_model
from privlab.scenario import ComponentSpec, ModelSpec
from privlab.topologies.federated import weighted_mean

RULES = {
    "median": {},
    "trimmed_mean": {"trim_fraction": 0.2},
    "krum": {"f": 20},
    "multi_krum": {"f": 20},
    "bulyan": {"f": 20},
    "geometric_median": {},
    "centered_clipping": {},
    "norm_bounding": {},
    "fltrust": {},
}


def updates_for(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    model = build_model(ModelSpec(name="mlp", params={"hidden": [128]}), (1, 8, 8), 10)
    template = {k: v.detach() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scale = 10.0 if i < n // 5 else 0.1
        out.append(
            {
                k: torch.as_tensor(0.01 + scale * rng.normal(size=v.shape), dtype=v.dtype)
                for k, v in template.items()
            }
        )
    return out


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)  # as `privlab run` does by default
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    updates = updates_for(args.clients)
    weights = [1.0] * len(updates)
    base = best_time(lambda: weighted_mean(updates, weights), args.repeat)
    params = sum(v.numel() for v in updates[0].values())
    print(f"{args.clients} clients x {params} parameters; plain mean {base * 1e3:.2f} ms")
    print(f"{'rule':<18}{'ms':>10}{'x mean':>10}")
    for name, p in RULES.items():
        defense = registry.defenses.get(name)(ComponentSpec(name=name, params=p), name)
        if name == "fltrust":
            defense.server_update = torch.cat(
                [updates[-1][k].reshape(-1).double() for k in sorted(updates[-1])]
            )
        t = best_time(lambda d=defense: d.aggregate(updates, weights), args.repeat)
        print(f"{name:<18}{t * 1e3:>10.2f}{t / base:>10.1f}")


if __name__ == "__main__":
    main()
