"""The multi-run audit: combine one canary trial per independent run into a lower bound.

Each run of a scenario whose audit has `analysis = "multi_run"` records one trial: the score of
its canary and whether the canary was IN (a coin drawn from the run's seed). Runs of different
seeds are independent, so their trials are independent Bernoulli experiments and Clopper-Pearson
bounds on TPR and FPR across runs are valid (Jagielski et al. 2020; Nasr et al. 2021); the
bound is privlab.audit.epsilon_lower_bound over the trials.

    python -m privlab.audit_runs reports/audit-seed*/results.json --variant dp_sgd_eps1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from privlab.audit import METHODS, epsilon_lower_bound


def trials_of(
    results: Iterable[dict[str, Any]], variant: str, attack_id: str
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(scores, is_in, seeds) of the multi-run trials in several runs' results.json contents.
    Two runs with the same seed are one trial, not two: refused."""
    scores, is_in, seeds = [], [], []
    for res in results:
        attack = res["variants"][variant]["attacks"][attack_id]
        m = attack["metrics"]
        if m.get("analysis") != "multi_run":
            raise ValueError(f"{attack_id} in variant {variant} is not a multi_run audit")
        seed = int(res["scenario"]["seed"]) if "scenario" in res else int(res["seed"])
        if seed in seeds:
            raise ValueError(f"seed {seed} appears twice: runs must be independent")
        seeds.append(seed)
        scores.append(float(m["trial_score"]))
        is_in.append(bool(m["trial_in"]))
    return np.asarray(scores), np.asarray(is_in, dtype=bool), seeds


def multi_run_audit(
    scores: np.ndarray, is_in: np.ndarray, *, delta: float, alpha: float = 0.05
) -> dict[str, Any]:
    """The Clopper-Pearson lower bound over independent trials (one per run)."""
    scores, is_in = np.asarray(scores, dtype=np.float64), np.asarray(is_in, dtype=bool)
    if is_in.all() or not is_in.any():  # one side only: no evidence against any epsilon
        bound = {"epsilon_lower_bound": 0.0, "tpr": 0.0, "fpr": 0.0}
    else:
        bound = epsilon_lower_bound(scores[is_in], scores[~is_in], delta=delta, alpha=alpha)
    return {
        "analysis": "multi_run",
        "method": METHODS["multi_run"],
        "epsilon_lower_bound": bound["epsilon_lower_bound"],
        "runs": len(scores),
        "runs_in": int(is_in.sum()),
        "runs_out": int((~is_in).sum()),
        "tpr": bound["tpr"],
        "fpr": bound["fpr"],
        "delta": delta,
        "alpha": alpha,
    }


def combine_runs(
    paths: Iterable[Path | str], *, variant: str, attack_id: str = "audit"
) -> dict[str, Any]:
    """Read results.json files (one per seed) and bound epsilon across them."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    scores, is_in, seeds = trials_of(results, variant, attack_id)
    first = results[0]["variants"][variant]["attacks"][attack_id]["metrics"]
    out = multi_run_audit(scores, is_in, delta=float(first["delta"]), alpha=float(first["alpha"]))
    out["seeds"] = seeds
    out["claimed_epsilon"] = (results[0]["variants"][variant].get("privacy") or {}).get("epsilon")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m privlab.audit_runs", description=__doc__)
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--attack", default="audit")
    args = parser.parse_args(argv)
    try:
        out = combine_runs(args.results, variant=args.variant, attack_id=args.attack)
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
