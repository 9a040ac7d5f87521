"""The same FedAvg job in privlab, pfl-research's simulation and Flower's simulation.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/frameworks.py [--clients 10 100] [--repeats 3]

The job (fixed here, whatever the default scenario's recipe): digits-shaped synthetic data (64
features, 10 classes), 16 training records per client (IID), privlab's MLP [128] with the same
initial weights, SGD lr 0.1, batch 16, 2 local epochs, 5 rounds of FedAvg over all clients,
the sample-weighted mean, test accuracy after every round. privlab prepares data, partition
and initial weights and writes them to one file (fw_jobs/job.py); pfl and Flower read it in
their own venvs (benchmarks/README.md: `.venv-pfl`, `.venv-flwr`; other paths by --pfl-python
and --flower-python), so every framework trains on the same records from the same start.

Each framework's job runs in a fresh process of its own, one job per process, and is timed
inside that process with a monotonic clock: privlab from `ScenarioRun.run()` to its return
(data generated before), pfl from building its federated dataset to the return of
`FederatedAveraging.run`, Flower the `run_simulation` call (it starts Ray inside). Interpreter
start-up, imports and reading the data are outside every timing. Repeats alternate the
frameworks (the order rotates each repeat) so machine load hits all alike; reported: medians,
and the median with range of the per-repeat ratios framework / privlab.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
JOBS = HERE / "fw_jobs"
RECORDS_PER_CLIENT = 32  # half of them train (holdout 0.5): 16 training records per client
SCRIPTS = {"pfl": JOBS / "pfl_job.py", "flower": JOBS / "flower_job.py"}


def job_run(clients: int, rounds: int):  # type: ignore[no-untyped-def]
    from privlab.runner import ScenarioRun
    from privlab.scenario import load_scenario

    overrides = [
        'engine="auto"',
        "attacks=[]",
        "expectations=[]",
        'variants=[{name="fedavg"}]',
        f"topology.rounds={rounds}",
        "topology.local_epochs=2",
        "topology.batch_size=16",
        "topology.lr=0.1",
        "topology.client_fraction=1.0",
        "model.params={hidden=[128]}",
        f"partition.num_clients={clients}",
        'partition.scheme="iid"',
        "partition.holdout_fraction=0.5",
        'data={name="synthetic", test_fraction=0.1, params={n_samples='
        f"{int(clients * RECORDS_PER_CLIENT / 0.9)}, n_features=64, n_informative=10, "
        "n_classes=10, class_sep=2.5}}",
    ]
    return ScenarioRun(load_scenario("default", overrides))


def write_job(clients: int, rounds: int, path: Path) -> None:
    """privlab's data, partition and initial weights for the other frameworks."""
    import torch

    sys.path.insert(0, str(JOBS))
    import job as jobfile

    from privlab.models import build_model

    _, s, _, _, data, parts = job_run(clients, rounds).variants[0]
    torch.manual_seed(s.seed)
    model = build_model(s.model, data.input_shape, data.num_classes)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    shards = [(x[torch.as_tensor(c.train_idx)], y[torch.as_tensor(c.train_idx)]) for c in parts]
    spec = s.topology
    hidden = s.model.params["hidden"][0]
    job = jobfile.Job(
        shards,
        torch.as_tensor(data.x_test),
        torch.as_tensor(data.y_test),
        model.state_dict(),
        hidden,
        spec.rounds,
        spec.local_epochs,
        spec.batch_size,
        spec.lr,
    )
    jobfile.save(path, job)


def privlab_child(clients: int, rounds: int) -> None:
    """One privlab job in this (fresh) process, reported like the other frameworks'."""
    import time

    import torch

    torch.set_num_threads(1)  # as `privlab run` does by default
    run = job_run(clients, rounds)
    t0 = time.perf_counter()
    results = run.run()
    seconds = time.perf_counter() - t0
    acc = next(iter(results["variants"].values()))["utility"]["final_accuracy"]
    line = {"framework": "privlab", "clients": clients, "seconds": seconds, "accuracy": acc}
    print("RESULT " + json.dumps(line), flush=True)


def _run(cmd: list[str], timeout: float) -> dict | None:
    """One job in a fresh process of its own session; on time-out the whole session ends
    (Flower's Ray processes with it). None if it timed out."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=JOBS,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    tail = (stderr or stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"{cmd[1]} reported no result (exit {proc.returncode}): {tail}")


def framework_rows(
    rounds: int,
    clients: tuple[int, ...] = (10, 100),
    repeats: int = 3,
    pythons: dict[str, Path] | None = None,
    timeout: float = 1800.0,
) -> list[str]:
    pythons = pythons or {
        "pfl": ROOT / ".venv-pfl" / "bin" / "python",
        "flower": ROOT / ".venv-flwr" / "bin" / "python",
    }
    present = {k: p for k, p in pythons.items() if Path(p).exists()}
    rows = [f"FedAvg job, {rounds} rounds; one fresh process per job, median of {repeats}"]
    for name in pythons.keys() - present.keys():
        rows.append(f"  {name}: no venv at {pythons[name]} (see benchmarks/README.md)")
    print("\n".join(rows), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in clients:
            path = Path(tmp) / f"job{n}.npz"
            write_job(n, rounds, path)
            cmds = {"privlab": [sys.executable, str(Path(__file__).resolve()), "--child", str(n)]}
            cmds["privlab"] += ["--rounds", str(rounds)]
            for name, py in present.items():
                cmds[name] = [str(py), str(SCRIPTS[name]), str(path)]
            got: dict[str, list[dict]] = {k: [] for k in cmds}
            names = list(cmds)
            for r in range(repeats):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    result = _run(cmds[name], timeout)
                    if result is not None:
                        got[name].append(result)
            rows.append(_row(n, got))
            print(rows[-1], flush=True)
    return rows


def _row(n: int, got: dict[str, list[dict]]) -> str:
    ours = [g["seconds"] for g in got["privlab"]]
    parts = [f"{n:>6} clients: privlab {statistics.median(ours):.3f} s"]
    for name, results in got.items():
        if name == "privlab":
            continue
        if not results:
            parts.append(f"{name} did not finish within the time-out")
            continue
        theirs = [g["seconds"] for g in results]
        ratios = [a / b for a, b in zip(theirs, ours, strict=False)]
        parts.append(
            f"{name} {statistics.median(theirs):.2f} s = {statistics.median(ratios):.1f}x "
            f"({min(ratios):.1f}-{max(ratios):.1f})"
        )
    accs = "/".join(f"{got[k][-1]['accuracy']:.3f}" for k in got if got[k])
    return "; ".join(parts) + f"; accuracy {'/'.join(k for k in got if got[k])} {accs}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pfl-python", type=Path, default=ROOT / ".venv-pfl" / "bin" / "python")
    ap.add_argument("--flower-python", type=Path, default=ROOT / ".venv-flwr" / "bin" / "python")
    ap.add_argument("--only", nargs="*", choices=["pfl", "flower"], default=["pfl", "flower"])
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds a job may take")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        privlab_child(args.child, args.rounds)
        return
    pythons = {"pfl": args.pfl_python, "flower": args.flower_python}
    pythons = {k: v for k, v in pythons.items() if k in args.only}
    framework_rows(args.rounds, tuple(args.clients), args.repeats, pythons, args.timeout)


if __name__ == "__main__":
    main()
