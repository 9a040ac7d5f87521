"""The vectorised DP-SGD engine against per-client trainers.

References: the sequential engine with one FastDPSGDTrainer per client (the same algorithm one
client at a time, each with its own accountant) and with one Opacus DPSGDTrainer per client
(GradSampleModule + DPOptimizer: the reference implementation), for the same generators.
"""

from __future__ import annotations

import copy

import pytest
import torch
from engine_helpers import collect, make_shards

from privlab.defenses.dp_sgd import DPSGD, DPSGDTrainer, FastDPSGDTrainer
from privlab.engine.base import ClientShard
from privlab.engine.sequential import SequentialEngine
from privlab.engine.vectorised_dp import VectorisedDPEngine
from privlab.models import build_model
from privlab.runner import ScenarioRun
from privlab.scenario import ComponentSpec, ModelSpec, load_scenario
from privlab.training import TrainSettings

SIZES = [23, 9, 31, 9, 16]  # unequal: different steps per epoch, some epochs unaligned


def _shards(sizes: list[int], seed: int = 0) -> list[ClientShard]:
    return make_shards(sizes, seed, scale=2)


def _model(activation: str = "relu") -> torch.nn.Module:
    torch.manual_seed(3)
    spec = ModelSpec(name="mlp", params={"hidden": [16], "activation": activation})
    return build_model(spec, (1, 12), 5)


def _defense(**params: object) -> DPSGD:
    spec = ComponentSpec(name="dp_sgd", params={"accountant": "rdp", **params})
    return DPSGD(spec, "defenses.0")


def _sequential(defense: DPSGD, model, settings, shards, planned: int) -> SequentialEngine:
    def factory(s: ClientShard):
        return defense.make_trainer(
            copy.deepcopy(model), s.x, s.y, settings, s.generator, planned_epochs=planned
        )

    return SequentialEngine(shards, model, settings, factory)


RECIPES = [
    TrainSettings(batch_size=4, lr=0.1, local_epochs=1),
    TrainSettings(batch_size=5, lr=0.05, local_epochs=2, momentum=0.9, weight_decay=1e-3),
    TrainSettings(batch_size=3, lr=0.1, local_epochs=2, fedprox_mu=0.5, momentum=0.5),
    TrainSettings(batch_size=64, lr=0.2, local_epochs=2),  # q = 1: every record, every step
]


@pytest.mark.parametrize("settings", RECIPES)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_vectorised_dp_equals_sequential_fast_trainers(
    settings: TrainSettings, activation: str
) -> None:
    """Two rounds (the generators carry over), chunks of 2 (several chunks, a shrinking
    prefix), two clients left out of round 2: every client's weights equal its own
    FastDPSGDTrainer's to rounding, and each client's privacy record is the trainer's."""
    model = _model(activation)
    defense = _defense(target_epsilon=6.0, max_grad_norm=0.8)
    planned = 2 * settings.local_epochs
    vec = defense.make_engine(_shards(SIZES), model, settings, planned_epochs=planned)
    assert isinstance(vec, VectorisedDPEngine)
    vec.chunk_size = 2
    seq = _sequential(defense, model, settings, _shards(SIZES), planned)
    assert all(isinstance(seq.trainer(k), FastDPSGDTrainer) for k in range(len(SIZES)))
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for ids in (list(range(len(SIZES))), [4, 0, 2]):
        ours, ref = collect(vec, start, ids), collect(seq, start, ids)
        assert sorted(ours) == sorted(ids)
        for k in ids:
            for key, v in ref[k].items():
                assert torch.allclose(ours[k][key], v, rtol=1e-4, atol=1e-6), (k, key)
        assert any(not torch.allclose(ours[k][key], start[key]) for key in start)
        start = {key: v + 0.01 for key, v in ref[ids[0]].items()}
    for k in range(len(SIZES)):  # the same Opacus accountant history, step for step
        assert vec.clients[k].accountant.history == seq.trainer(k).accountant.history
    assert vec.privacy() == seq.privacy()
    spent = vec.privacy()
    assert spent["0"]["steps"] == 2 * settings.local_epochs * settings.steps_per_epoch(23)
    assert spent["3"]["steps"] == settings.local_epochs * settings.steps_per_epoch(9)
    assert spent["0"]["calibrated_steps"] == planned * settings.steps_per_epoch(23)


def test_vectorised_dp_equals_opacus_trainers_and_train_sums_is_their_mean() -> None:
    """Against the reference implementation: one Opacus DPSGDTrainer per client (the same
    Poisson masks and noise from the same generators); privacy records equal but for the
    path. `train_sums` gives the weighted mean of the same updates."""
    settings = TrainSettings(batch_size=6, lr=0.1, local_epochs=2, momentum=0.5)
    model = _model()
    planned = settings.local_epochs
    vec = _defense(noise_multiplier=0.9).make_engine(
        _shards(SIZES), model, settings, planned_epochs=planned
    )
    assert vec is not None
    ref = _sequential(_defense(noise_multiplier=0.9, path="opacus"), model, settings,
                      _shards(SIZES), planned)  # fmt: skip
    assert isinstance(ref.trainer(0), DPSGDTrainer)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ids = list(range(len(SIZES)))
    ours, theirs = collect(vec, start, ids), collect(ref, start, ids)
    for k in ids:
        for key, v in theirs[k].items():
            assert torch.allclose(ours[k][key], v, rtol=1e-4, atol=1e-5), (k, key)
    for k, record in ref.privacy().items():
        assert record is not None and record.pop("path") == "opacus"
        mine = dict(vec.privacy()[k] or {})
        assert mine.pop("path") == "book-keeping" and mine == record
    # train_sums on fresh engines (same generator states): the weighted sum of the updates
    coef = {k: (k + 1) / 15 for k in ids}
    vec2 = _defense(noise_multiplier=0.9).make_engine(
        _shards(SIZES), model, settings, planned_epochs=planned
    )
    assert vec2 is not None
    total = {key: torch.zeros_like(v) for key, v in start.items()}
    for _, sums in vec2.train_sums(start, ids, coef):
        for key, v in sums.items():
            total[key] += v
    for key, v in total.items():
        expected = sum(coef[k] * theirs[k][key] for k in ids)
        assert torch.allclose(v, expected, rtol=1e-4, atol=1e-5), key


def test_the_defense_offers_the_engine_only_where_the_fast_path_runs() -> None:
    settings = TrainSettings(batch_size=4, lr=0.1, local_epochs=1)
    shards = _shards([8, 8])
    assert _defense(noise_multiplier=1.0).make_engine(shards, _model(), settings,
                                                      planned_epochs=1) is not None  # fmt: skip
    opacus = _defense(noise_multiplier=1.0, path="opacus")
    assert opacus.make_engine(shards, _model(), settings, planned_epochs=1) is None
    cnn = build_model(ModelSpec(name="cnn"), (1, 8, 8), 10)
    assert _defense(noise_multiplier=1.0).make_engine(shards, cnn, settings,
                                                      planned_epochs=1) is None  # fmt: skip
    split = _defense(noise_multiplier=1.0)
    split.topology = "split"  # split learning steps the bottom model with the server's grads
    assert split.make_engine(shards, _model(), settings, planned_epochs=1) is None


def test_a_federated_dp_run_uses_it_and_engine_sequential_gives_the_same_results() -> None:
    """The runner's FedAvg picks the vectorised DP engine (named in cost); `engine =
    "sequential"` forces the per-client trainers, with the same results to rounding and the
    same privacy record; a second run of the same scenario repeats the first exactly."""
    out = {}
    for engine in ("auto", "sequential", "auto-again"):
        s = load_scenario(
            "default",
            ["attacks=[]", "expectations=[]", "topology.rounds=2", "partition.num_clients=3",
             f'engine="{engine.removesuffix("-again")}"',
             'variants=[{name="dp", defenses=[{name="dp_sgd", params={target_epsilon=8.0, '
             'accountant="rdp"}}]}]'],
        )  # fmt: skip
        out[engine] = ScenarioRun(s).run()["variants"]["dp"]
    assert out["auto"]["cost"]["engine"]["name"] == "vectorised-dp"
    assert out["sequential"]["cost"]["engine"]["name"] == "sequential"
    assert out["auto"]["privacy"] == out["sequential"]["privacy"]
    assert out["auto"]["privacy"]["path"] == "book-keeping"
    assert out["auto"]["utility"] == out["auto-again"]["utility"]
    auto, seq = out["auto"]["utility"], out["sequential"]["utility"]
    assert auto["train_loss"] == pytest.approx(seq["train_loss"], rel=1e-4)
    for a, b in zip(auto["per_round"], seq["per_round"], strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-3)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_packing_in_small_groups_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients whose epochs start together are packed in groups bounded by PACK_BUDGET; one
    client per group gives the same results as the sequential trainers."""
    import privlab.engine.vectorised_dp as vdp

    monkeypatch.setattr(vdp, "PACK_BUDGET", 1)
    test_vectorised_dp_equals_sequential_fast_trainers(RECIPES[1], "relu")


@pytest.mark.parametrize("sizes", [[5, 0, 1, 7], [0, 0]])
def test_clients_with_one_record_or_none(sizes: list[int]) -> None:
    """A client without records still takes its pure-noise steps (as Opacus does on an empty
    Poisson batch), one with a single record its own: as their sequential trainers."""
    settings = TrainSettings(batch_size=3, lr=0.1, local_epochs=2, momentum=0.5)
    defense, model = _defense(noise_multiplier=1.0), _model()
    vec = defense.make_engine(_shards(sizes), model, settings, planned_epochs=2)
    seq = _sequential(defense, model, settings, _shards(sizes), 2)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ids = list(range(len(sizes)))
    ours, ref = collect(vec, start, ids), collect(seq, start, ids)
    for k in ids:
        for key, v in ref[k].items():
            assert torch.allclose(ours[k][key], v, rtol=1e-4, atol=1e-6), (k, key)
        assert not torch.allclose(ours[k]["1.weight"], start["1.weight"])  # noise moved it
    assert vec is not None and vec.privacy() == seq.privacy()
