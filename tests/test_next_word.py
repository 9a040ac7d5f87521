"""Federated next-word prediction: the generator, canary exposure (Carlini et al. 2019) and the
embedding-row word leak (Melis et al. 2019), each checked against an independent computation,
and the issue's qualitative results on small runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from privlab.attacks.text_leakage import (
    exposure,
    inserted_pins,
    pin_log_perplexity,
    precision_recall_f1,
)
from privlab.data_next_word import (
    CANARY_PREFIX,
    VOCAB,
    WORD_ID,
    NextWordParams,
    canary_secret,
    load_next_word,
    user_streams,
)
from privlab.models_text import build_next_word
from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario


def test_exposure_matches_scipy_rank_definition() -> None:
    rng = np.random.default_rng(0)
    ppl = rng.normal(size=10_000).round(2)  # ties on purpose
    for secret in (0, 17, int(np.argmin(ppl)), int(np.argmax(ppl))):
        rank = rankdata(ppl, method="max")[secret]  # candidates at least as likely
        assert exposure(ppl, secret) == pytest.approx(math.log2(10_000) - math.log2(rank))
    assert exposure(ppl, int(np.argmin(ppl))) <= math.log2(10_000)


def test_pin_log_perplexity_equals_direct_chain_rule() -> None:
    torch.manual_seed(0)
    model = build_next_word({"embed_dim": 8, "hidden": 16}, (3,), len(VOCAB)).eval()

    def query(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(torch.as_tensor(x)), dim=1).double().numpy()

    scores = pin_log_perplexity(query, context=3)
    for pin in (0, 4821, 9999, 123):
        digits = [WORD_ID[c] for c in f"{pin:04d}"]
        stream = [WORD_ID[w] for w in CANARY_PREFIX] + digits
        direct = 0.0
        for i in range(4):
            window = np.array([stream[i : i + 3]], dtype=np.float32)
            direct -= math.log2(query(window)[0, digits[i]])
        assert scores[pin] == pytest.approx(direct, rel=1e-6)  # float32 batching


def test_generator_is_seeded_per_user_with_the_canary_inside() -> None:
    p = NextWordParams(num_users=20, canary_users=3, canary_repeats=5)
    a, b = user_streams(p, 0), user_streams(p, 0)
    assert a == b and user_streams(p, 1) != a
    pin = canary_secret(0)
    text = [" ".join(s) for s in a]
    needle = " ".join([*CANARY_PREFIX, *pin])
    assert [t.count(needle) for t in text[:4]] == [5, 5, 5, 0]
    data = load_next_word(
        {"num_users": 20, "canary_users": 3, "canary_repeats": 5}, test_fraction=0.2, seed=0
    )
    assert data.groups_train is not None and set(np.unique(data.groups_train)) == set(range(20))
    counts = inserted_pins(data.x_train, data.y_train, np.arange(len(data.y_train)))
    assert counts == {int("".join(pin)): 15}  # canaries are never held out of training


def test_precision_recall_f1_against_sklearn() -> None:
    from sklearn.metrics import f1_score, precision_score, recall_score

    truth, guess = np.array([1, 2, 3, 5, 8]), np.array([2, 3, 4, 8, 9, 10])
    y_true = np.isin(np.arange(12), truth)
    y_pred = np.isin(np.arange(12), guess)
    p, r, f = precision_recall_f1(guess, truth)
    assert (p, r, f) == pytest.approx(
        (precision_score(y_true, y_pred), recall_score(y_true, y_pred), f1_score(y_true, y_pred))
    )


SMALL = [
    "data.params={num_users=100, sentences_per_user=12, canary_users=1, canary_repeats=1}",
    "partition.num_clients=100",
    "topology.client_fraction=0.3",
    "topology.rounds=8",
]


def run(extra: list[str]) -> dict:
    return ScenarioRun(load_scenario("next_word_fl", SMALL + extra)).run()


def test_exposure_rises_with_insertions_and_falls_under_dp_fedavg() -> None:
    results = run(
        [
            'attacks=[{name="canary_exposure", id="canary"}]',
            'variants=[{name="r1"}, {name="r16", set={"data.params.canary_repeats"=16}}, '
            '{name="r16_dp", set={"data.params.canary_repeats"=16}, '
            'defenses=[{name="dp_fedavg", params={noise_multiplier=1.0, clip_norm=0.5}}]}]',
        ]
    )
    m = {name: v["attacks"]["canary"]["metrics"] for name, v in results["variants"].items()}
    assert m["r1"]["insertions"] < m["r16"]["insertions"]
    assert m["r16"]["exposure"] > m["r1"]["exposure"] + 1.0
    assert m["r16"]["exposure_gain"] > 5  # far above PINs never inserted
    assert m["r16_dp"]["exposure"] < m["r16"]["exposure"] - 5
    for v in m.values():
        lo, hi = v["exposure_baseline_ci"]
        assert 0.8 < lo <= v["exposure_baseline"] <= hi < 2.2  # 1/ln 2 = 1.44 for chance


@pytest.mark.slow
def test_word_leak_reads_one_update_and_learns_nothing_under_secure_aggregation() -> None:
    results = run(
        [
            'attacks=[{name="word_leak", id="words", params={client=3}}]',
            'variants=[{name="plain"}, {name="he", defenses=[{name="secure_aggregation"}]}]',
            "topology.rounds=4",
            "topology.client_fraction=0.5",
        ]
    )
    plain = results["variants"]["plain"]["attacks"]["words"]["metrics"]
    he = results["variants"]["he"]["attacks"]["words"]["metrics"]
    assert plain["recall"] >= 0.9 and plain["precision"] == 1.0 and plain["f1_gain"] > 0.1
    assert he["f1_gain"] < 0.05 and he["precision"] < 0.6  # the union of ~50 users' words
