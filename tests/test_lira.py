"""LiRA (Carlini et al. 2022): the statistic, the reference models, the server-side target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from privlab.attacks.base import FinalView, MembershipChallenge, PopulationData
from privlab.attacks.lira import (
    LiRAAttack,
    LiRAParams,
    LiRAServerAttack,
    lira_scores,
    logit_confidence,
    min_reference_models,
)
from privlab.cli import app
from privlab.errors import ScenarioError
from privlab.metrics import membership_metrics
from privlab.reference_models import ReferenceJob, subset_masks, train_reference_models
from privlab.scenario import ComponentSpec, load_scenario
from privlab.training import TrainSettings
from privlab.wire import SERVER, Message, client


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reference models go to a per-test cache, never the working directory's."""
    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path / "cache"))


def test_logit_confidence_is_log_odds_of_the_true_label() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=20)
    y = rng.integers(0, 5, size=20)
    py = p[np.arange(20), y]
    assert np.allclose(logit_confidence(np.log(p), y), np.log(py / (1 - py)))
    stacked = np.log(np.stack([p, p]))  # (M, N, C) works too
    assert logit_confidence(stacked, y).shape == (2, 20)


def _synthetic(seed: int, models: int = 16, n: int = 2000):
    """Records with very different difficulty: a global threshold is weak at low FPR, a
    per-record calibration (LiRA) is strong -- the paper's central observation."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 4, size=n)
    member = rng.random(n) < 0.5
    target = difficulty + 1.5 * member + rng.normal(0, 0.5, size=n)
    in_mask = np.zeros((models, n), dtype=bool)
    in_mask[: models // 2] = True
    for j in range(n):
        rng.shuffle(in_mask[:, j])
    ref = difficulty + 1.5 * in_mask + rng.normal(0, 0.5, size=(models, n))
    return target, ref, in_mask, member


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_online_beats_offline_beats_global_threshold_at_low_fpr(seed: int) -> None:
    target, ref, in_mask, member = _synthetic(seed)

    def tpr(scores: np.ndarray) -> float:
        return float(membership_metrics(scores, member)[0]["tpr_at_1pct_fpr"])

    online = tpr(lira_scores(target, ref, in_mask, online=True, fixed_variance=False))
    offline = tpr(lira_scores(target, ref, in_mask, online=False, fixed_variance=False))
    threshold = tpr(target)
    assert online > offline > threshold
    fixed = tpr(lira_scores(target, ref, in_mask, online=True, fixed_variance=True))
    assert fixed > threshold


def test_minimum_reference_models() -> None:
    assert min_reference_models("online", "per_example") == 4
    assert min_reference_models("online", "fixed") == 2
    assert min_reference_models("offline", "per_example") == 2
    assert min_reference_models("offline", "fixed") == 1
    spec = ComponentSpec(
        name="lira",
        params={"mode": "online", "variance": "per_example", "num_reference_models": 3},
    )
    with pytest.raises(ScenarioError, match=r"attacks\.0\.params\.num_reference_models"):
        LiRAAttack(spec, "attacks.0")


@pytest.mark.parametrize(
    ("variance", "models", "resolved"),
    [("auto", 4, "fixed"), ("auto", 63, "fixed"), ("auto", 64, "per_example"),
     ("per_example", 16, "per_example"), ("fixed", 128, "fixed")],
)  # fmt: skip
def test_variance_defaults_to_fixed_below_64_models(variance, models, resolved) -> None:
    """Carlini et al. 2022 recommend per-example variances only from about 64 models."""
    spec = ComponentSpec(name="lira", params={"variance": variance, "num_reference_models": models})
    assert LiRAAttack(spec, "attacks.0").variance == resolved
    assert LiRAParams().variance == "auto"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_with_few_models_the_fixed_variance_is_the_stronger_estimate(seed: int) -> None:
    """The reason for the default: with 4 models (2 IN, 2 OUT per record) per-example stds
    are estimated from two values each and the test degrades (the paper's Fig. 8 trend)."""
    target, ref, in_mask, member = _synthetic(seed, models=4)

    def tpr(fixed: bool) -> float:
        s = lira_scores(target, ref, in_mask, online=True, fixed_variance=fixed)
        return float(membership_metrics(s, member)[0]["tpr_at_1pct_fpr"])

    assert tpr(True) > tpr(False)


def test_too_few_reference_models_exits_2_with_one_line() -> None:
    result = CliRunner().invoke(
        app, ["run", "mia_lira", "--set", "attacks.1.params.num_reference_models=1"]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "num_reference_models" in lines[0]


def test_subset_masks_balance_each_record_in_half_the_models() -> None:
    masks = subset_masks(101, 8, 50, np.random.default_rng(0))
    assert (masks.sum(axis=1) == 50).all()
    counts = masks.sum(axis=0)
    assert counts.max() <= 4  # complementary pairs: at most one IN per pair
    assert (counts[counts > 0] >= 1).all()


@pytest.mark.parametrize(("pool", "models", "size"), [(100, 2, 30), (850, 16, 350), (9, 5, 4)])
def test_subset_masks_keep_every_record_in_a_fixed_share_of_models(pool, models, size) -> None:
    """The target's training-set size need not be half the pool: each model still holds
    exactly `size` records and per-record IN counts differ by at most one."""
    masks = subset_masks(pool, models, size, np.random.default_rng(1))
    assert (masks.sum(axis=1) == size).all()
    counts = masks.sum(axis=0)
    assert counts.max() - counts.min() <= 1
    assert np.isclose(counts.mean(), models * size / pool)


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _flat_mlp() -> torch.nn.Module:
    """The same MLP as a Linear stack, which the vectorised lane trainer runs."""
    return torch.nn.Sequential(torch.nn.Flatten(), *_mlp())


TRAINERS = [("stacked", _mlp), ("sequential", _mlp), ("vectorised", _flat_mlp)]


def _job(x: np.ndarray, y: np.ndarray, masks: np.ndarray, **kw) -> ReferenceJob:
    defaults = dict(
        settings=TrainSettings(batch_size=1000, lr=0.3, local_epochs=2, momentum=0.5,
                               weight_decay=0.01),
        rounds=3,
        num_clients=1,
        server_lr=1.0,
        model_key="mlp",
        seed=5,
    )  # fmt: skip
    defaults.update(kw)
    return ReferenceJob(x=x, y=y, masks=masks, **defaults)


@pytest.mark.parametrize(("trainer", "factory"), TRAINERS)
def test_stacked_training_equals_a_plain_torch_loop(trainer, factory) -> None:
    """Full-batch training removes batch order, so each stacked model must equal the same
    model trained alone with torch.optim.SGD (fresh optimiser each round)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    masks = subset_masks(40, 3, 20, rng)
    job = _job(x, y, masks, trainer=trainer)
    models, cached = train_reference_models(job, factory, use_cache=False)
    assert not cached
    from privlab.reference_training import init_models

    inits = init_models(factory, range(3), job.seed, None)
    for i, model in enumerate(inits):
        xs, ys = torch.as_tensor(x[masks[i]]), torch.as_tensor(y[masks[i]])
        for _ in range(job.rounds):
            opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5, weight_decay=0.01)
            for _ in range(2):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xs), ys).backward()
                opt.step()
        with torch.no_grad():
            expected = model(torch.as_tensor(x)).double()
        assert torch.allclose(models.logits(x)[i], expected, atol=1e-5)


@pytest.mark.parametrize(("trainer", "factory"), TRAINERS)
def test_fedavg_emulation_averages_client_lanes(trainer, factory) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=24)
    masks = np.zeros((1, 24), dtype=bool)
    masks[0, :12] = True
    job = _job(x, y, masks, num_clients=2, rounds=2, trainer=trainer,
               settings=TrainSettings(batch_size=100, lr=0.2, local_epochs=1))  # fmt: skip
    models, _ = train_reference_models(job, factory, use_cache=False)
    from privlab.reference_training import init_models, lane_members

    (model,) = init_models(factory, [0], job.seed, None)
    lanes = lane_members(masks[0], 2, job.seed, 0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        locals_ = []
        for lane in lanes:
            m = factory()
            m.load_state_dict(state)
            opt = torch.optim.SGD(m.parameters(), lr=0.2)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(
                m(torch.as_tensor(x[lane])), torch.as_tensor(y[lane])
            ).backward()
            opt.step()
            locals_.append(m.state_dict())
        state = {k: (locals_[0][k] + locals_[1][k]) / 2 for k in state}
    model.load_state_dict(state)
    with torch.no_grad():
        expected = model(torch.as_tensor(x)).double()
    assert torch.allclose(models.logits(x)[0], expected, atol=1e-5)


def test_cache_hits_only_for_identical_jobs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=20)
    masks = subset_masks(20, 2, 10, rng)
    job = _job(x, y, masks, rounds=1)
    first, hit1 = train_reference_models(job, _mlp)
    again, hit2 = train_reference_models(job, _mlp)
    assert (hit1, hit2) == (False, True)
    assert torch.equal(first.logits(x), again.logits(x))
    x2 = x.copy()
    x2[0, 0] += 1e-3  # changed data: a new key, never the stale models
    _, hit3 = train_reference_models(_job(x2, y, masks, rounds=1), _mlp)
    _, hit4 = train_reference_models(_job(x, y, masks, rounds=1, seed=6), _mlp)
    _, hit5 = train_reference_models(
        _job(x, y, masks, rounds=1, init_state=_mlp().state_dict()), _mlp
    )
    assert not (hit3 or hit4 or hit5)
    assert len(list(tmp_path.glob("ref-*.pt"))) == 4


def _server_view() -> FinalView:
    scenario = load_scenario("mia_lira")
    return FinalView(
        query=lambda x: np.full((len(x), 10), 0.1),
        challenge=MembershipChallenge(np.zeros((4, 1, 40), np.float32), np.zeros(4, np.int64)),
        recipe=scenario,
        model_factory=lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10)),
        population=PopulationData(np.zeros((4, 1, 40), np.float32), np.zeros(4, np.int64)),
    )


def test_server_attack_without_plaintext_reports_it_and_does_not_crash() -> None:
    attack = LiRAServerAttack(ComponentSpec(name="lira_server", params={"client": 1}), "a.0")
    assert attack.target_parties() == [1]
    assert attack.threat_model().adversary == "server"
    state = {"1.weight": torch.zeros(10, 40), "1.bias": torch.zeros(10)}
    for r in (1, 2):
        attack.observe(Message(r, SERVER, client(1), "global_model", state, 0))
        attack.observe(Message(r, client(1), SERVER, "update", b"ciphertext", 10))
    result = attack.finalize(_server_view())
    assert result.metrics["plaintext_updates_seen"] == 0
    assert result.metrics["protected_updates_seen"] == 2
    assert "no plaintext update" in result.artifacts["note"]


def test_server_attack_rebuilds_the_local_model_from_global_plus_update() -> None:
    attack = LiRAServerAttack(ComponentSpec(name="lira_server", params={"client": 0}), "a.0")
    g = {"1.weight": torch.randn(10, 40), "1.bias": torch.randn(10)}
    u = {"1.weight": torch.randn(10, 40), "1.bias": torch.randn(10)}
    attack.observe(Message(3, SERVER, client(0), "global_model", g, 0))
    attack.observe(Message(3, client(2), SERVER, "update", u, 0))  # another client: ignored
    assert attack._update is None
    attack.observe(Message(3, client(0), SERVER, "update", u, 0))
    target = attack._local_target(_server_view(), 0)
    assert target is not None and target.rounds == 1 and target.init_state is not None
    assert all(torch.equal(target.init_state[k], g[k]) for k in g)
    x = np.random.default_rng(0).normal(size=(3, 1, 40)).astype(np.float32)
    logits = x.reshape(3, 40) @ (g["1.weight"] + u["1.weight"]).numpy().T
    logits = logits + (g["1.bias"] + u["1.bias"]).numpy()
    expected = torch.log_softmax(torch.as_tensor(logits).double(), dim=1).numpy()
    assert np.allclose(target.logprobs(x), expected, atol=1e-4)


@pytest.mark.slow
def test_lira_paper_ordering_on_the_overfit_scenario(tmp_path: Path, monkeypatch) -> None:
    """LiRA online > offline > loss threshold at TPR@1% FPR (Carlini et al. 2022, Fig. 1/4)."""
    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["run", "mia_lira", "--out", str(tmp_path)])
    assert result.exit_code in (0, 1), result.output
    attacks = json.loads((tmp_path / "results.json").read_text())["variants"]["baseline"]["attacks"]
    tpr = {k: v["metrics"]["tpr_at_1pct_fpr"] for k, v in attacks.items()}
    assert tpr["lira_online"] > tpr["lira_offline"] > tpr["loss"]
    assert attacks["loss"]["metrics"]["auc"] > 0.7  # the setting really overfits (0.74 at seed 0)
    server = attacks["server_lira_client0"]["metrics"]
    assert server["n_members"] < 400 and server["n_nonmembers"] >= 1000  # client 0's records


def test_server_attack_under_secure_aggregation_sees_only_ciphertexts(tmp_path: Path) -> None:
    overrides = [
        "partition.num_clients=3",
        "topology.rounds=2",
        "topology.local_epochs=1",
        "model.params={hidden=[8]}",
        "data.name=digits",
        "data.params={}",
        'attacks=[{name="lira_server", id="srv", params={num_reference_models=4, cache=false}},'
        ' {name="rmia_server", id="rmia_srv", params={num_reference_models=2, cache=false}}]',
        'variants=[{name="plain"}, {name="secagg", defenses=[{name="secure_aggregation"}]}]',
        "expectations=[]",
    ]
    args = ["run", "mia_lira", "--out", str(tmp_path)]
    for o in overrides:
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    variants = json.loads((tmp_path / "results.json").read_text())["variants"]
    plain = variants["plain"]["attacks"]["srv"]
    hidden = variants["secagg"]["attacks"]["srv"]
    assert "auc" in plain["metrics"]
    assert "auc" not in hidden["metrics"]
    assert hidden["metrics"]["plaintext_updates_seen"] == 0
    assert hidden["metrics"]["protected_updates_seen"] == 2
    assert "no plaintext update" in hidden["artifacts"]["note"]
    rmia_plain = variants["plain"]["attacks"]["rmia_srv"]["metrics"]
    rmia_hidden = variants["secagg"]["attacks"]["rmia_srv"]["metrics"]
    assert rmia_plain["n_nonmembers"] == plain["metrics"]["n_nonmembers"]  # client 0 only
    assert "auc" not in rmia_hidden and rmia_hidden["plaintext_updates_seen"] == 0
    html = (tmp_path / "report.html").read_text()
    assert "Membership attacks without a target" in html


def test_records_without_in_models_use_the_average_gap() -> None:
    """With a small target training set many records have no IN model; their IN mean is the
    OUT mean plus the mean IN - OUT gap measured on records with both (closed form here)."""
    out = np.array([[0.0, 1.0, 2.0], [0.2, 1.2, 2.2], [0.0, 1.0, 2.0], [0.2, 1.2, 2.2]])
    ref = out.copy()
    in_mask = np.zeros((4, 3), dtype=bool)
    in_mask[[0, 1], 0] = True  # record 0: two IN models, 1 above the OUT ones
    ref[[0, 1], 0] += 1.0
    target = np.array([1.1, 2.1, 0.0])
    scores = lira_scores(target, ref, in_mask, online=True, fixed_variance=True)
    mu_out = np.array([0.1, 1.1, 2.1])
    mu_in = np.array([1.1, 2.1, 3.1])  # record 0 measured, records 1 and 2: OUT + gap of 1.0
    resid = np.r_[ref[in_mask] - 1.1]
    sd_in = np.sqrt((resid**2).sum() / 1)
    out_mask = ~in_mask
    res_out = np.concatenate([ref[out_mask[:, j], j] - mu_out[j] for j in range(3)])
    sd_out = np.sqrt((res_out**2).sum() / (1 + 3 + 3))
    from scipy import stats as st

    expected = st.norm.logpdf(target, mu_in, sd_in) - st.norm.logpdf(target, mu_out, sd_out)
    assert np.allclose(scores, expected)
    assert scores[1] > 0 > scores[2]
