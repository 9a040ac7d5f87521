"""Clients as Ray tasks (`client_tasks = true`) against the same job with clients in-process.

The three runs are the same scenario, seed and single variant in this process: "local" is
`backend = "local"` (the inner engine in the driver); "1 task" and "2 tasks" are
`backend = "ray"` with `client_tasks = 1` and `client_tasks = true` on a local Ray of 2 CPUs
(with one variant, the variant itself runs in the driver, so only where the clients train
differs). 1 task / local is the tasks' overhead alone; local / 2 tasks the speed-up, whose
ceiling is the parallel capacity printed before and after (this machine is shared with other
jobs, and two busy vCPUs may not give two CPUs' worth). Ray is started and
its workers warmed up (imports, a first job) outside the timing; repeats are interleaved and
the medians compared; results.json must agree (cost.engine and timing aside) or the benchmark
stops. Jobs:
- default-N: the engine table's job (benchmarks/run_all.py: MLP [256], 32 records per client,
  batch 16, 4 local epochs, vectorised) at N clients, 5 rounds: milliseconds of work per round;
- cnn-E: digits with a CNN (channels [16, 32]), 8 clients of ~180 records, sequential engine,
  E local epochs, 3 rounds: seconds of local training per round.

    OMP_NUM_THREADS=1 python benchmarks/bench_ray_clients.py [--repeats 5] [--jobs ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from run_all import RECORDS_PER_CLIENT

from privlab.results import strip_timing
from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario

BASE = ["attacks=[]", "expectations=[]", 'variants=[{name="fedavg"}]']


def job_overrides(job: str) -> list[str]:
    kind, n = job.split("-")
    if kind == "default":
        clients = int(n)
        return [
            *BASE,
            "topology.rounds=5",
            f"partition.num_clients={clients}",
            'data={name="synthetic", test_fraction=0.1, params={n_samples='
            f"{int(clients * RECORDS_PER_CLIENT / 0.9)}, n_features=64, n_informative=10, "
            "n_classes=10, class_sep=2.5}}",
        ]
    return [
        *BASE,
        'engine="sequential"',
        'model={name="cnn", params={channels=[16, 32]}}',
        "partition.num_clients=8",
        "partition.holdout_fraction=0.1",
        "topology.rounds=3",
        f"topology.local_epochs={int(n)}",
    ]


def burn(iterations: int, size: int) -> float:
    """A Ray task of fixed work: matrix products of `size` x `size` (200: compute-bound;
    16: small ops, as a CNN client's steps); returns its wall time."""
    torch.set_num_threads(1)
    t0, a = time.perf_counter(), torch.randn(size, size)
    for _ in range(iterations):
        a = a @ a
        a = a / a.norm()
    return time.perf_counter() - t0


def parallel_capacity(ray, size: int) -> float:
    """How many CPUs two concurrent Ray tasks get now (2.0 on two idle cores; this machine is
    shared, and its two vCPUs may share a physical core): one task's time over two's, x 2."""
    task = ray.remote(num_cpus=1)(burn)
    iterations = 3000 if size >= 100 else 60000
    ray.get([task.remote(10, size), task.remote(10, size)])  # both workers up
    t0 = time.perf_counter()
    ray.get(task.remote(iterations, size))
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray.get([task.remote(iterations, size), task.remote(iterations, size)])
    return 2 * one / (time.perf_counter() - t0)


def capacity(ray) -> str:
    big, small = parallel_capacity(ray, 200), parallel_capacity(ray, 16)
    return f"{big:.2f} CPUs (200x200 matmuls), {small:.2f} CPUs (16x16 matmuls)"


def timed(run: ScenarioRun) -> tuple[float, dict]:
    t0 = time.perf_counter()
    results = run.run()
    return time.perf_counter() - t0, results


def comparable(results: dict) -> dict:
    out = strip_timing(results)
    for v in out["variants"].values():
        v["cost"]["engine"].pop("client_tasks", None)
    return out


def main() -> None:
    torch.set_num_threads(1)  # as `privlab run` does by default
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jobs", nargs="+", default=["default-100", "default-1000", "cnn-1", "cnn-10"])
    args = ap.parse_args()
    from privlab.engine.ray_backend import start

    ray = start(None)
    warm = ScenarioRun(
        load_scenario("default", [*job_overrides("cnn-1"), 'backend="ray"', "client_tasks=true"])
    )
    timed(warm), timed(warm)  # workers import torch and privlab once, outside the timing
    print(f"parallel capacity before: {capacity(ray)}", flush=True)
    print(
        f"{'job':>14} {'local s':>8} {'1 task s':>9} {'2 tasks s':>10} "
        f"{'1 task/local':>13} {'local/2 tasks':>14}"
    )
    for job in args.jobs:
        ov = [*job_overrides(job), 'backend="ray"']
        runs = {
            "local": ScenarioRun(load_scenario("default", job_overrides(job))),
            "one": ScenarioRun(load_scenario("default", [*ov, "client_tasks=1"])),
            "two": ScenarioRun(load_scenario("default", [*ov, "client_tasks=true"])),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        got: dict[str, dict] = {}
        for name, run in runs.items():
            got[name] = timed(run)[1]  # warm-up: lazy imports, the tasks' first shards
        for i in range(args.repeats):  # interleaved, order rotated: load hits all alike
            order = list(runs)[i % 3 :] + list(runs)[: i % 3]
            for name in order:
                seconds, got[name] = timed(runs[name])
                times[name].append(seconds)
        for name in ("one", "two"):
            if comparable(got["local"]) != comparable(got[name]):
                raise SystemExit(f"{job}: results differ between local and Ray client tasks")
        med = {k: statistics.median(v) for k, v in times.items()}
        engine = next(iter(got["two"]["variants"].values()))["cost"]["engine"]
        per_round = engine["client_tasks"]["tasks_per_round"]
        print(
            f"{job:>14} {med['local']:>8.3f} {med['one']:>9.3f} {med['two']:>10.3f} "
            f"{med['one'] / med['local']:>12.2f}x {med['local'] / med['two']:>13.2f}x  "
            f"({engine['name']}, tasks per round {max(per_round)}, median of {args.repeats})",
            flush=True,
        )
    print(f"parallel capacity after: {capacity(ray)}")


if __name__ == "__main__":
    main()
