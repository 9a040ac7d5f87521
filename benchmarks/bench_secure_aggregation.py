"""CKKS secure aggregation: privlab's HE path against TenSEAL alone, and its cost in a run.

Part 1, the HE path (`--repeats`, interleaved in this process, order rotated each repeat):
one round of the bundled `secure_aggregation` scenario's shape (10 clients, MLP [128] on
digits: 9,610 parameters + the weight slot = 3 ciphertexts per client at N = 8192, primes
[60, 40], scale 2^40; 30 ciphertexts a round). privlab's path is `protect_many` (flatten and
weight each client's update dict, the headroom check, encrypt, frame), `combine` (the server's
sum) and `reveal` (decrypt, unflatten, the error book-keeping). TenSEAL alone gets the flat
weighted vectors ready-made and only encrypts, sums and decrypts (benchmarks/tenseal_alone.py).
Declared pairs, same ciphertexts and parameters:
- serial: privlab with `workers = 1` (in-process) against TenSEAL alone in this process;
- parallel: privlab with `workers = 2` (its encryption workers) against TenSEAL alone
  encrypting in 2 forked worker processes (which must serialize to hand ciphertexts back).
Wall time and CPU time of every process (this one plus the workers, whose CPU is read from
their replies) per round; each pair's ratio is taken per repeat, and the median of those
ratios is reported with its range.

Part 2, one scenario run (plaintext and CKKS variants, `--rounds`): bytes per round, round
time, the simulated critical path per round (`cost.critical_path`) against wall time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_secure_aggregation.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import tenseal_alone
import torch

from privlab.defenses.ckks_packing import flatten
from privlab.defenses.secure_aggregation import SecureAggregation
from privlab.models import build_model
from privlab.runner import ScenarioRun
from privlab.scenario import ComponentSpec, load_scenario

CLIENTS = 10


def _updates() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], list[float]]:
    s = load_scenario("secure_aggregation", [])
    template = build_model(s.model, (64,), 10).state_dict()
    g = torch.Generator().manual_seed(0)
    updates = [
        {k: torch.randn(v.shape, generator=g) * 0.01 for k, v in template.items()}
        for _ in range(CLIENTS)
    ]
    return template, updates, [float(72 + k % 2) for k in range(CLIENTS)]


def _defense(workers: int, template: dict[str, torch.Tensor]) -> SecureAggregation:
    spec = ComponentSpec(name="secure_aggregation", params={"workers": workers})
    d = SecureAggregation(spec, "defenses.0")
    d.setup(CLIENTS, template)
    return d


def _measure(fn: Callable[[], object], worker_cpu: Callable[[], float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and the workers) of one call."""
    c0, w0, t0 = time.process_time(), worker_cpu(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    return wall, time.process_time() - c0 + worker_cpu() - w0


def he_path(repeats: int) -> None:
    template, updates, weights = _updates()
    items = [(k, u, w) for k, (u, w) in enumerate(zip(updates, weights, strict=True))]
    vectors = [flatten(u, w) for u, w in zip(updates, weights, strict=True)]
    serial_d, parallel_d = _defense(1, template), _defense(2, template)
    public, secret, slots = serial_d.server.context, serial_d.key_holder._context, serial_d.slots
    ref_pool = tenseal_alone.Parallel(public, 2)
    want = sum(flatten(u, w)[:-1] for u, w in zip(updates, weights, strict=True)) / sum(weights)

    def privlab(d: SecureAggregation) -> Callable[[], object]:
        return lambda: d.reveal(d.combine(d.protect_many(items)))

    def pool_cpu() -> float:
        return sum(parallel_d._pool.cpu_seconds) if parallel_d._pool is not None else 0.0

    runs = {
        "privlab serial": (privlab(serial_d), lambda: 0.0),
        "TenSEAL serial": (
            lambda: tenseal_alone.serial(public, secret, vectors, slots),
            lambda: 0.0,
        ),
        "privlab 2 workers": (privlab(parallel_d), pool_cpu),
        "TenSEAL 2 workers": (
            lambda: ref_pool.round(secret, vectors, slots),
            lambda: sum(ref_pool.cpu.values()),
        ),
    }
    for fn, _ in runs.values():  # warm-up: worker start-up is not a round's cost
        fn()
    got = tenseal_alone.serial(public, secret, vectors, slots)
    assert float(np.abs(got - want).max()) < 1e-6, "TenSEAL alone must compute the mean"
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % 4 :] + names[: r % 4]:
            w, c = _measure(*runs[name])
            wall[name].append(w)
            cpu[name].append(c)
    for d in (serial_d, parallel_d):
        d.close()
    ref_pool.close()
    print(
        f"HE path, one round of {CLIENTS} clients x 3 ciphertexts (N=8192, [60, 40], 2^40); "
        f"{repeats} interleaved repeats, medians (per-repeat ratio range)"
    )
    for name in names:
        print(
            f"  {name:<18} wall {statistics.median(wall[name]) * 1e3:7.1f} ms   "
            f"CPU (all processes) {statistics.median(cpu[name]) * 1e3:7.1f} ms"
        )
    for ours, ref in (
        ("privlab serial", "TenSEAL serial"),
        ("privlab 2 workers", "TenSEAL 2 workers"),
    ):
        for label, data in (("wall", wall), ("CPU", cpu)):
            ratios = [a / b for a, b in zip(data[ours], data[ref], strict=True)]
            print(
                f"  {ours} / {ref}, {label:<4}: {statistics.median(ratios):.3f}x "
                f"({min(ratios):.2f}-{max(ratios):.2f}; target <= 1.05x)"
            )
    for label, data in (("wall", wall), ("CPU", cpu)):
        ratios = [
            a / b for a, b in zip(data["privlab 2 workers"], data["TenSEAL serial"], strict=True)
        ]
        print(
            f"  privlab 2 workers / TenSEAL serial, {label:<4}: {statistics.median(ratios):.3f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f}; crossing processes costs serializing)"
        )


def scenario_costs(rounds: int) -> None:
    overrides = [
        f"topology.rounds={rounds}",
        "expectations=[]",
        "variants=[{name='plain'}, {name='he', defenses=[{name='secure_aggregation'}]}]",
    ]
    results = ScenarioRun(load_scenario("secure_aggregation", overrides)).run()
    plain, he = results["variants"]["plain"], results["variants"]["he"]
    # Round 0 carries the public context under HE (once); rounds 1.. are the steady state.
    p_bytes = statistics.fmean(plain["cost"]["bytes_per_round"][1:])
    h_bytes = statistics.fmean(he["cost"]["bytes_per_round"][1:])
    p_sec = statistics.median(plain["cost"]["seconds_per_round"])
    h_sec = statistics.median(he["cost"]["seconds_per_round"])
    cost = he["defenses"][0]["cost"]
    crit = statistics.median(he["cost"]["critical_path"]["seconds_per_round"])
    print(f"scenario secure_aggregation, {rounds} rounds, {cost['encrypt_workers']} workers")
    print(
        f"  bytes / round    plain {p_bytes:,.0f}  HE {h_bytes:,.0f}  "
        f"ratio {h_bytes / p_bytes:.2f}x "
        f"(target <= 15x; ciphertexts/client {cost['ciphertexts_per_client']})"
    )
    print(f"  seconds / round  plain {p_sec:.3f}  HE {h_sec:.3f}  ratio {h_sec / p_sec:.2f}x")
    print(
        f"  critical path    {crit:.3f} s per round simulated (slowest client's train + "
        f"encrypt, then sum and decrypt) against {h_sec:.3f} s of simulation wall time"
    )
    print(
        f"  accuracy         plain {plain['utility']['final_accuracy']:.4f}  "
        f"HE {he['utility']['final_accuracy']:.4f}"
    )


def main() -> None:
    torch.set_num_threads(1)  # as `privlab run` does by default
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-scenario", action="store_true")
    args = ap.parse_args()
    he_path(args.repeats)
    if not args.skip_scenario:
        scenario_costs(args.rounds)


if __name__ == "__main__":
    main()
