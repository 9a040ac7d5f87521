"""LiRA with 16 reference models on digits, timed beside training one model.

The reference run is the plain PyTorch loop (privlab's LocalTrainer: torch.optim.SGD over
shuffled mini-batches) training the target once with the same recipe. LiRA's time covers
training all 16 reference models (stacked, vmapped; cache disabled) and scoring. The ratio
says how many single trainings LiRA costs; training the 16 models one after another would cost
about 16 (plus scoring).

    .venv/bin/python benchmarks/bench_lira.py [--models 16] [--mode online] [--threads 1]

One torch thread by default: on a shared 2-core machine two threads oversubscribe the cores and
tiny-batch training slows down many times over (both timings, the single model most).
Each reference model trains on half of challenge + population (898 records here), a little more
than the target's 717, so the ratio slightly understates the speed-up per record.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from privlab.attacks.base import FinalView, PopulationData
from privlab.attacks.lira import LiRAAttack
from privlab.data import load_dataset
from privlab.metrics import membership_metrics
from privlab.models import build_model
from privlab.partition import partition
from privlab.runner import build_challenge, make_query
from privlab.scenario import ComponentSpec, load_scenario
from privlab.training import LocalTrainer, TrainSettings, seeded_generator

RECIPE = [
    "topology.name=central",
    "topology.rounds=30",
    "topology.local_epochs=1",
    "topology.batch_size=16",
    "topology.lr=0.1",
    "model.params={hidden=[128]}",
    "attacks=[]",
    "variants=[]",
    "expectations=[]",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--mode", choices=["online", "offline"], default="online")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    scenario = load_scenario("default", RECIPE)
    data = load_dataset(scenario.data, scenario.seed)
    clients = partition(data.y_train, scenario.partition, scenario.seed)
    members = np.concatenate([c.train_idx for c in clients])
    x, y = torch.as_tensor(data.x_train[members]), torch.as_tensor(data.y_train[members])
    settings = TrainSettings.from_topology(scenario.topology)

    def factory() -> torch.nn.Module:
        return build_model(scenario.model, data.input_shape, data.num_classes)

    torch.manual_seed(scenario.seed)
    trainer = LocalTrainer(factory(), x, y, settings, seeded_generator(scenario.seed, 0, 7))
    t0 = time.perf_counter()
    for _ in range(scenario.topology.rounds):
        trainer.train(trainer.state())
    t_one = time.perf_counter() - t0

    referee = build_challenge(data, clients, scenario.seed)
    view = FinalView(
        query=make_query(trainer.model),
        challenge=referee.challenge,
        recipe=scenario,
        model_factory=factory,
        population=PopulationData(data.x_test, data.y_test),
    )
    spec = ComponentSpec(
        name="lira",
        params={"mode": args.mode, "num_reference_models": args.models, "cache": False},
    )
    attack = LiRAAttack(spec, "attacks.0")
    t0 = time.perf_counter()
    scores = attack.finalize(view)
    t_lira = time.perf_counter() - t0
    metrics, _ = membership_metrics(scores.scores, referee.is_member)

    print(f"digits, central MLP, {len(y)} training records, {scenario.topology.rounds} epochs, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"train one model (plain PyTorch loop):      {t_one:7.2f} s")
    print(f"LiRA {args.mode}, {args.models} reference models:     {t_lira:7.2f} s")
    print(f"ratio LiRA / one model:                    {t_lira / t_one:7.2f}x "
          f"(sequential reference training would be ~{args.models}x)")  # fmt: skip
    print(f"LiRA AUC {metrics['auc']:.3f}, TPR@1%FPR {metrics['tpr_at_1pct_fpr']:.3f} "
          f"({metrics['n_nonmembers']} non-members)")  # fmt: skip
    print(f"under 30 s: {'yes' if t_lira < 30 else 'NO'}")


if __name__ == "__main__":
    main()
