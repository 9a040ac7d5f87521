"""LiRA with 16 reference models, timed beside training one model, per lane trainer.

The reference run is the plain PyTorch loop (privlab's LocalTrainer: torch.optim.SGD over
shuffled mini-batches) training the target once with the same recipe. LiRA's time covers
training all 16 reference models (cache disabled) and scoring, once per lane trainer
(privlab.reference_training: vectorised, stacked = vmapped, sequential = one LocalTrainer per
lane), interleaved over --repeats rounds; medians are reported side by side with their ratios.
The ratio to one model says how many single trainings LiRA costs.

    .venv/bin/python benchmarks/bench_lira.py [--recipe digits|mia_lira] [--models 16]
        [--mode online] [--threads 1] [--repeats 3] [--trainers vectorised,stacked,sequential]

`--recipe mia_lira` is scenarios/mia_lira.toml's FedAvg recipe (MNIST-1D, 4 clients, 20 rounds
of 5 local epochs): each reference model is a 4-lane FedAvg run on as many records as the
target's; its "one model" is one central LocalTrainer run of the same epochs on those records.
`--dp`: the shadows mirror a DP-SGD recipe (eps 8; the sequential trainer then runs the stacked
one, as DP-SGD needs per-sample gradients).

One torch thread by default: on a shared 2-core machine two threads oversubscribe the cores and
tiny-batch training slows down many times over (both timings, the single model most).
Each reference model trains on half of challenge + population (898 records here), a little more
than the target's 717, so the ratio slightly understates the speed-up per record.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch

from privlab.attacks import lira
from privlab.attacks.base import FinalView, PopulationData
from privlab.attacks.lira import LiRAAttack
from privlab.data import load_dataset
from privlab.metrics import membership_metrics
from privlab.models import build_model
from privlab.partition import partition
from privlab.reference_models import train_reference_models
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
DP = ComponentSpec(name="dp_sgd", params={"target_epsilon": 8.0, "max_grad_norm": 1.0})
RECIPES = {"digits": ("default", RECIPE), "mia_lira": ("mia_lira", RECIPE[-3:])}


def _forced(trainer: str):  # type: ignore[no-untyped-def]
    """train_reference_models with the lane trainer forced (the attack picks 'auto')."""

    def train(job, factory, use_cache=True):  # type: ignore[no-untyped-def]
        return train_reference_models(
            dataclasses.replace(job, trainer=trainer), factory, use_cache=use_cache
        )

    return train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--mode", choices=["online", "offline"], default="online")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="digits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trainers", default="vectorised,stacked,sequential")
    parser.add_argument(
        "--dp", action="store_true", help="shadows mirror a DP-SGD recipe (eps 8; timing only)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    scenario = load_scenario(*RECIPES[args.recipe])
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
    sizes = {c.client_id: len(c.train_idx) for c in clients}

    referee = build_challenge(data, clients, scenario.seed)
    view = FinalView(
        query=make_query(trainer.model),
        challenge=referee.challenge,
        recipe=scenario,
        model_factory=factory,
        population=PopulationData(data.x_test, data.y_test),
        side_information={"client_num_samples": sizes} if args.recipe != "digits" else {},
        defenses=(DP,) if args.dp else (),
    )
    spec = ComponentSpec(
        name="lira",
        params={"mode": args.mode, "num_reference_models": args.models, "cache": False},
    )
    attack = LiRAAttack(spec, "attacks.0")
    trainers = args.trainers.split(",")
    times: dict[str, list[float]] = {t: [] for t in trainers}
    aucs: dict[str, float] = {}
    for _ in range(args.repeats):  # interleaved: every trainer sees the same machine load
        for name in trainers:
            lira.train_reference_models = _forced(name)  # type: ignore[assignment]
            t0 = time.perf_counter()
            scores = attack.finalize(view)
            times[name].append(time.perf_counter() - t0)
            aucs[name] = membership_metrics(scores.scores, referee.is_member)[0]["auc"]
    lira.train_reference_models = train_reference_models  # type: ignore[assignment]

    epochs = scenario.topology.rounds * scenario.topology.local_epochs
    print(
        f"{args.recipe}{' with DP-SGD shadows' if args.dp else ''}, {scenario.topology.name} "
        f"MLP, {len(y)} training records, {epochs} "
        f"epochs, torch threads {torch.get_num_threads()}, {args.repeats} repeats (median)"
    )
    print(f"train one model (plain PyTorch loop):      {t_one:7.2f} s")
    med = {t: statistics.median(v) for t, v in times.items()}
    for name in trainers:
        ratios = "  ".join(f"{med[o] / med[name]:5.2f}x vs {o}" for o in trainers if o != name)
        print(
            f"LiRA {args.mode}, {args.models} models, {name:10s}: {med[name]:7.2f} s "
            f"= {med[name] / t_one:5.2f} single trainings; {ratios}; AUC {aucs[name]:.3f}"
        )


if __name__ == "__main__":
    main()
