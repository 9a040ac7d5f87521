"""One command, one table: privlab's engines against a plain PyTorch FedAvg loop, side by side.

    OMP_NUM_THREADS=1 python benchmarks/run_all.py [--clients 10 100 1000 10000] [--rounds 5]

Every ratio comes from runs interleaved in this process on the same data, partition, model and
recipe (the bundled default scenario's MLP [256], batch 16, 4 local epochs, lr 0.1, on
digits-shaped synthetic data: 64 features, 10 classes, 32 records per client of which 12 train,
so each local step is a full batch), so machine load hits all of them alike. Timed: the whole
FedAvg job (local training, the wire, aggregation, per-round test evaluation); data generation
and partitioning are prepared once, outside the timing. Peak memory (RSS) is measured in a fresh
subprocess per engine. Further sections: DP-SGD against non-private training (bench_dp_sgd.py),
CKKS secure aggregation against plaintext and TenSEAL alone (bench_secure_aggregation.py), and
Flower / pfl-research on the same job when their venvs exist
(frameworks.py; the venv commands are in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from privlab.models import build_model
from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario

RECORDS_PER_CLIENT = 32


def scenario_run(clients: int, rounds: int, engine: str) -> ScenarioRun:
    overrides = [
        f'engine="{engine}"',
        "attacks=[]",
        "expectations=[]",
        'variants=[{name="fedavg"}]',
        f"topology.rounds={rounds}",
        f"partition.num_clients={clients}",
        'data={name="synthetic", test_fraction=0.1, params={n_samples='
        f"{int(clients * RECORDS_PER_CLIENT / 0.9)}, n_features=64, n_informative=10, "
        "n_classes=10, class_sep=2.5}}",
    ]
    return ScenarioRun(load_scenario("default", overrides))


def plain_fedavg(run: ScenarioRun) -> float:
    """The reference: a lean hand-written FedAvg loop (one module and one torch.optim.SGD
    reused for every client, in-place accumulation of the weighted mean). Returns accuracy."""
    _, s, _, _, data, clients = run.variants[0]
    spec = s.topology
    torch.manual_seed(s.seed)
    model = build_model(s.model, data.input_shape, data.num_classes)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    x_test, y_test = torch.as_tensor(data.x_test), torch.as_tensor(data.y_test)
    shards = [(x[torch.as_tensor(c.train_idx)], y[torch.as_tensor(c.train_idx)]) for c in clients]
    local = copy.deepcopy(model)
    opt = torch.optim.SGD(local.parameters(), lr=spec.lr)
    gen = torch.Generator().manual_seed(s.seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    acc = 0.0
    for _ in range(spec.rounds):
        total = sum(len(cy) for _, cy in shards)
        new = {k: torch.zeros_like(v) for k, v in state.items()}
        for cx, cy in shards:
            local.load_state_dict(state)
            for _ in range(spec.local_epochs):
                order = torch.randperm(len(cy), generator=gen)
                for i in range(0, len(cy), spec.batch_size):
                    idx = order[i : i + spec.batch_size]
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(local(cx[idx]), cy[idx]).backward()
                    opt.step()
            with torch.no_grad():
                for k, v in local.state_dict().items():
                    new[k].add_(v - state[k], alpha=len(cy) / total)
        state = {k: state[k] + new[k] for k in state}
        model.load_state_dict(state)
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    return acc


def privlab_fedavg(run: ScenarioRun) -> float:
    results = run.run()
    return next(iter(results["variants"].values()))["utility"]["final_accuracy"]


def timed(fn, run: ScenarioRun) -> tuple[float, float]:
    t0 = time.perf_counter()
    acc = fn(run)
    return time.perf_counter() - t0, acc


def engine_rows(clients: list[int], rounds: int, repeats: int) -> list[str]:
    rows = [
        f"{'clients':>8} {'plain s':>9} {'seq s':>9} {'vec s':>9} "
        f"{'seq/plain':>10} {'plain/vec':>10}  accuracy plain/seq/vec"
    ]
    warm = scenario_run(10, 1, "auto")
    plain_fedavg(warm), privlab_fedavg(warm), privlab_fedavg(scenario_run(10, 1, "sequential"))
    for n in clients:
        runs = {
            "plain": (plain_fedavg, scenario_run(n, rounds, "sequential")),
            "seq": (privlab_fedavg, scenario_run(n, rounds, "sequential")),
            "vec": (privlab_fedavg, scenario_run(n, rounds, "auto")),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        acc: dict[str, float] = {}
        for _ in range(repeats if n <= 1000 else 1):  # interleaved: load hits all alike
            for name, (fn, run) in runs.items():
                seconds, acc[name] = timed(fn, run)
                times[name].append(seconds)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            f"{n:>8} {med['plain']:>9.3f} {med['seq']:>9.3f} {med['vec']:>9.3f} "
            f"{med['seq'] / med['plain']:>9.2f}x {med['plain'] / med['vec']:>9.1f}x  "
            f"{acc['plain']:.3f}/{acc['seq']:.3f}/{acc['vec']:.3f}"
        )
        print(rows[-1], flush=True)
    return rows


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_child(clients: int, rounds: int, engine: str) -> None:
    """Runs in a subprocess: prepare the data, reset the peak-RSS mark (Linux clear_refs 5),
    train, and print the peaks of the preparation and of the training, in MiB."""
    import gc

    torch.set_num_threads(1)
    run = scenario_run(clients, rounds, engine)
    gc.collect()
    prep_peak = _status_mib("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # the peak now restarts from current RSS
    privlab_fedavg(run)
    print(f"{_status_mib('VmHWM'):.0f} {prep_peak:.0f}")


def memory_rows(clients: int, rounds: int) -> list[str]:
    rows = []
    for engine in ("auto", "sequential"):
        cmd = [sys.executable, __file__, "--memory-child", str(clients), engine]
        out = subprocess.run(
            [*cmd, "--rounds", str(rounds)], capture_output=True, text=True, check=True
        ).stdout.split()
        name = "vectorised" if engine == "auto" else "sequential"
        rows.append(
            f"peak RSS while training {clients:,} clients, {name:<10}: {out[0]} MiB "
            f"(target < 1024 MiB; data generation before it peaked at {out[1]} MiB)"
        )
        print(rows[-1], flush=True)
    return rows


def _section(script: str, *args: str) -> list[str]:
    """Another benchmark's table, run in a fresh process (its own imports and warm-up) and
    printed here."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name(script)), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for line in out:
        print(line, flush=True)
    return out


def he_rows(rounds: int) -> list[str]:
    """CKKS secure aggregation against plaintext and against TenSEAL alone."""
    return _section("bench_secure_aggregation.py", "--rounds", str(rounds))


def dp_rows(repeats: int) -> list[str]:
    """DP-SGD (privlab's fast path, its Opacus path, vanilla Opacus) against non-private
    training: local training and the whole default FedAvg job."""
    return _section("bench_dp_sgd.py", "--repeats", str(repeats))


def main() -> None:
    torch.set_num_threads(1)  # as `privlab run` does by default
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000, 10000])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-child", nargs=2, metavar=("CLIENTS", "ENGINE"))
    ap.add_argument("--skip", nargs="*", default=[], choices=["memory", "dp", "he", "frameworks"])
    args = ap.parse_args()
    if args.memory_child:
        peak_rss_child(int(args.memory_child[0]), args.rounds, args.memory_child[1])
        return
    print(f"FedAvg, {args.rounds} rounds, default recipe; median of {args.repeats} (1 at 10,000)")
    engine_rows(args.clients, args.rounds, args.repeats)
    if "memory" not in args.skip:
        memory_rows(max(args.clients), args.rounds)
    if "dp" not in args.skip:
        dp_rows(args.repeats)
    if "he" not in args.skip:
        he_rows(args.rounds)
    if "frameworks" not in args.skip:
        from frameworks import framework_rows

        framework_rows(args.rounds)


if __name__ == "__main__":
    main()
