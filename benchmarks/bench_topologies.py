"""Round time and bytes of split and swarm learning against federated learning.

Same data (digits), same model (MLP), same clients, rounds and local epochs for every topology;
also a plain PyTorch loop over the same records and epochs as a floor. Prints the median seconds
per round, bytes per round, and the ratios to federated and to the plain loop.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_topologies.py [--rounds 5] [--clients 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.nn import functional as F

from privlab.data import load_dataset
from privlab.models import build_model
from privlab.partition import partition
from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario


def overrides(rounds: int, clients: int) -> list[str]:
    return [
        "data.name=digits",
        f"partition.num_clients={clients}",
        "model.name=mlp",
        "model.params={hidden=[128, 64]}",
        f"topology.rounds={rounds}",
        "topology.local_epochs=1",
        "topology.batch_size=16",
        "topology.lr=0.1",
        "attacks=[]",
        'variants=[{name="v"}]',
        "expectations=[]",
    ]


def run_topology(name: str, params: str, rounds: int, clients: int) -> dict:
    extra = [f"topology.name={name}", f"topology.params={params}"]
    scenario = load_scenario("default", overrides(rounds, clients) + extra)
    v = next(iter(ScenarioRun(scenario).run()["variants"].values()))
    per_round = v["cost"]["seconds_per_round"]
    return {
        "seconds_per_round": statistics.median(per_round),
        "bytes_per_round": statistics.mean(v["cost"]["bytes_per_round"][1:]),
        "accuracy": v["utility"]["final_accuracy"],
    }


def plain_loop(rounds: int, clients: int) -> dict:
    """Reference: one SGD epoch per round over the same training records, no protocol at all."""
    scenario = load_scenario("default", overrides(rounds, clients))
    data = load_dataset(scenario.data, scenario.seed)
    parts = partition(data.y_train, scenario.partition, scenario.seed)
    idx = np.concatenate([c.train_idx for c in parts])
    x, y = torch.as_tensor(data.x_train[idx]), torch.as_tensor(data.y_train[idx])
    torch.manual_seed(0)
    model = build_model(scenario.model, data.input_shape, data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    times = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(rounds):
        t0 = time.perf_counter()
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 16):
            b = order[i : i + 16]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        acc = model(torch.as_tensor(data.x_test)).argmax(1) == torch.as_tensor(data.y_test)
    return {
        "seconds_per_round": statistics.median(times),
        "bytes_per_round": 0.0,
        "accuracy": float(acc.float().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = {
        "plain PyTorch loop": plain_loop(args.rounds, args.clients),
        "federated": run_topology("federated", "{}", args.rounds, args.clients),
        "split (vanilla)": run_topology("split", "{cut_layer=3}", args.rounds, args.clients),
        "split (u_shaped)": run_topology(
            "split", "{mode='u_shaped', cut_layer=3}", args.rounds, args.clients
        ),
        "swarm": run_topology("swarm", "{min_peers=2}", args.rounds, args.clients),
    }
    fed, plain = rows["federated"], rows["plain PyTorch loop"]
    print(f"digits, MLP [128, 64], {args.clients} clients, {args.rounds} rounds, 1 local epoch")
    header = (
        f"{'topology':<20}{'s/round':>10}{'x federated':>13}{'x plain':>9}"
        f"{'KiB/round':>12}{'x fed bytes':>13}{'accuracy':>10}"
    )
    print(header)
    for name, r in rows.items():
        fb = r["bytes_per_round"] / fed["bytes_per_round"] if fed["bytes_per_round"] else 0.0
        print(
            f"{name:<20}{r['seconds_per_round']:>10.4f}"
            f"{r['seconds_per_round'] / fed['seconds_per_round']:>13.2f}"
            f"{r['seconds_per_round'] / plain['seconds_per_round']:>9.2f}"
            f"{r['bytes_per_round'] / 1024:>12.1f}{fb:>13.2f}{r['accuracy']:>10.3f}"
        )


if __name__ == "__main__":
    main()
