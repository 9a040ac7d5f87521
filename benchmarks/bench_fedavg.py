"""FedAvg through privlab vs the same local SGD steps as a plain PyTorch loop.

Both run in this process on the same data, partition, model and recipe (the bundled default
scenario's undefended variant, attacks off): per round every client loads the global weights,
runs its shuffled mini-batch SGD epochs, the server takes the sample-weighted mean of the
updates and evaluates on the test set. The ratio privlab / plain is the engine's overhead.

    python benchmarks/bench_fedavg.py [--repeats 5] [--scenario default]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from run_all import plain_fedavg  # the one reference loop, shared with the benchmark table

from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario


def privlab_fedavg(run: ScenarioRun) -> float:
    results = run.run()
    return next(iter(results["variants"].values()))["utility"]["final_accuracy"]


def main() -> None:
    torch.set_num_threads(1)  # as `privlab run` does by default
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="default")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    scenario = load_scenario(args.scenario, ["attacks=[]", "expectations=[]"])
    scenario.variants = scenario.variants[:1]
    run = ScenarioRun(scenario)  # data and partition prepared once, outside the timing
    timings: dict[str, list[float]] = {"privlab": [], "plain": []}
    accuracy = {}
    plain_fedavg(run)  # warm-up: lazy imports and allocator growth are not engine overhead
    privlab_fedavg(run)
    for _ in range(args.repeats):  # interleaved so machine load hits both alike
        for name, fn in (("plain", plain_fedavg), ("privlab", privlab_fedavg)):
            t0 = time.perf_counter()
            accuracy[name] = fn(run)
            timings[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in timings.items()}
    s = scenario.topology
    print(
        f"scenario {scenario.name}: {scenario.partition.num_clients} clients, {s.rounds} rounds, "
        f"{s.local_epochs} local epochs, batch {s.batch_size}; median of {args.repeats}"
    )
    print(f"plain PyTorch FedAvg : {med['plain']:.3f} s  (final accuracy {accuracy['plain']:.3f})")
    print(
        f"privlab FedAvg       : {med['privlab']:.3f} s  (final accuracy {accuracy['privlab']:.3f})"
    )
    print(f"ratio privlab / plain: {med['privlab'] / med['plain']:.2f}x  (target <= 1.2x)")


if __name__ == "__main__":
    main()
