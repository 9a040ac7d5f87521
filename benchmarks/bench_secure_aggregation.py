"""CKKS secure aggregation cost at 10 clients on the default model (digits, MLP [128]).

Runs the bundled default scenario's federated recipe twice in one process, plaintext FedAvg
and FedAvg under `secure_aggregation`, and prints round time and bytes per round as ratios
(targets: <= 15x bytes, <= 1.5x round time). A third line times TenSEAL alone (encrypt 10
vectors, sum, decrypt) on the same vector size, so privlab's own overhead is visible.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_secure_aggregation.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario


def main() -> None:
    torch.set_num_threads(1)  # as `privlab run` does by default
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    overrides = [
        f"topology.rounds={args.rounds}",
        "attacks=[]",
        "expectations=[]",
        "variants=[{name='plain'}, {name='he', defenses=[{name='secure_aggregation'}]}]",
    ]
    results = ScenarioRun(load_scenario("default", overrides)).run()
    plain, he = results["variants"]["plain"], results["variants"]["he"]
    # Round 0 carries the public context under HE (once); rounds 1.. are the steady state.
    p_bytes = statistics.fmean(plain["cost"]["bytes_per_round"][1:])
    h_bytes = statistics.fmean(he["cost"]["bytes_per_round"][1:])
    p_sec = statistics.median(plain["cost"]["seconds_per_round"])
    h_sec = statistics.median(he["cost"]["seconds_per_round"])
    cost = he["defenses"][0]["cost"]
    print(f"clients per round      {plain['utility']['per_round'][0]['participants']}")
    print(
        f"bytes / round          plain {p_bytes:,.0f}  HE {h_bytes:,.0f}  "
        f"ratio {h_bytes / p_bytes:.2f}x (target <= 15x; update only "
        f"{cost['bytes_ratio']:.2f}x, ciphertexts/client {cost['ciphertexts_per_client']})"
    )
    print(
        f"seconds / round        plain {p_sec:.3f}  HE {h_sec:.3f}  "
        f"ratio {h_sec / p_sec:.2f}x (target <= 1.5x)"
    )
    print(
        f"HE parts               encrypt {cost['encrypt_seconds']:.4f} s/client, "
        f"sum {cost['aggregate_seconds']:.4f} s/round, "
        f"decrypt {cost['decrypt_seconds']:.4f} s/round"
    )
    print(f"public context         {he['cost']['bytes_per_round'][0]:,} bytes in round 0")
    print(
        f"final accuracy         plain {plain['utility']['final_accuracy']:.4f}  "
        f"HE {he['utility']['final_accuracy']:.4f}"
    )

    import tenseal as ts

    size = cost["plaintext_bytes_per_client"] // 4 + 1
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40])
    ctx.global_scale = 2.0**40
    vec = np.random.default_rng(0).normal(0, 0.01, size)
    t0 = time.perf_counter()
    enc = [
        [ts.ckks_vector(ctx, vec[i : i + 4096]) for i in range(0, size, 4096)] for _ in range(10)
    ]
    total = enc[0]
    for other in enc[1:]:
        total = [a + b for a, b in zip(total, other, strict=True)]
    np.concatenate([t.decrypt() for t in total])
    alone = time.perf_counter() - t0
    ours = cost["encrypt_wall_seconds"] + cost["aggregate_seconds"] + cost["decrypt_seconds"]
    serial = 10 * cost["encrypt_seconds"] + cost["aggregate_seconds"] + cost["decrypt_seconds"]
    print(
        f"TenSEAL alone          {alone:.3f} s per round of 10 clients; privlab's HE path "
        f"{ours:.3f} s ({ours / alone:.2f}x, target <= 1.05x; clients encrypting in "
        f"{cost['encrypt_workers']} worker processes, incl. serialization over the wire); "
        f"the same work one client after another {serial:.3f} s ({serial / alone:.2f}x)"
    )
    crit = statistics.median(he["cost"]["critical_path"]["seconds_per_round"])
    print(
        f"critical path / round  {crit:.3f} s simulated (slowest client's train + encrypt, "
        f"then sum and decrypt) against {h_sec:.3f} s of simulation wall time"
    )


if __name__ == "__main__":
    main()
