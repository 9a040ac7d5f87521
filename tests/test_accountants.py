"""Accountants: privlab's epsilon equals Opacus' own for the same history."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant
from typer.testing import CliRunner

from privlab.cli import app
from privlab.defenses.dp_fedavg import DPFedAvg, accounted_epsilon, rdp_floor
from privlab.defenses.dp_sgd import epsilon_of
from privlab.scenario import ComponentSpec, load_scenario

DELTA = 1 / 48000
CASES = [
    ("rdp", RDPAccountant, 2.17),
    ("prv", PRVAccountant, 1.97),
    ("gdp", GaussianAccountant, 1.84),
]


def _opacus(cls: type, noise: float, rate: float, steps: int, delta: float) -> float:
    acc = cls()
    acc.history = [(noise, rate, steps)]
    return float(acc.get_epsilon(delta=delta))


@pytest.mark.parametrize(("name", "cls", "expected"), CASES)
def test_noise3_rate02_50steps(name: str, cls: type, expected: float) -> None:
    """The issue's reference history: noise 3.0, sample rate 0.2, 50 steps, delta 1/48000."""
    ref = _opacus(cls, 3.0, 0.2, 50, DELTA)
    assert accounted_epsilon(3.0, 0.2, 50, DELTA, name) == pytest.approx(ref, rel=1e-9)
    assert epsilon_of(((3.0, 0.2, 50),), DELTA, name) == pytest.approx(ref, rel=1e-9)
    assert ref == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize(("name", "cls", "expected"), CASES)
def test_dp_fedavg_ledger_over_50_rounds_equals_opacus(
    name: str, cls: type, expected: float
) -> None:
    """10 clients, 2 per round (rate 0.2), noise 3.0, 50 rounds: the defense's own ledger."""
    spec = ComponentSpec(
        name="dp_fedavg", params={"noise_multiplier": 3.0, "accountant": name, "delta": DELTA}
    )
    d = DPFedAvg(spec, "defenses.0")
    scenario = load_scenario(
        "default",
        ["partition.num_clients=10", "topology.client_fraction=0.2", "topology.rounds=50"],
    )
    d.check_setting(scenario, (1, 8, 8), 10)
    import torch

    for r in range(1, 51):
        d.start_round(r, {})
        d.aggregate([{"w": torch.ones(3)}], [1.0])
    spent = d.privacy()
    assert spent["sample_rate"] == pytest.approx(0.2) and spent["rounds_accounted"] == 50
    assert spent["epsilon"] == pytest.approx(_opacus(cls, 3.0, 0.2, 50, DELTA), rel=1e-9)
    assert spent["approximate"] is (name == "gdp")


@settings(max_examples=8, deadline=None)
@given(
    noise=st.floats(0.5, 5.0),
    rate=st.floats(0.01, 1.0),
    steps=st.integers(1, 500),
    delta=st.sampled_from([1e-3, 1e-5, 1e-7]),
)
def test_rdp_ledger_equals_opacus_for_any_history(
    noise: float, rate: float, steps: int, delta: float
) -> None:
    ours = accounted_epsilon(noise, rate, steps, delta, "rdp")
    assert ours == pytest.approx(_opacus(RDPAccountant, noise, rate, steps, delta), rel=1e-9)
    assert ours >= rdp_floor(delta) - 1e-9


def test_dp_sgd_unreachable_target_epsilon_exits_2() -> None:
    variants = (
        'variants=[{name="v", defenses=[{name="dp_sgd", '
        'params={target_epsilon=0.000001, accountant="gdp"}}]}]'
    )
    result = CliRunner().invoke(
        app, ["run", "default", "--set", variants, "--set", "expectations=[]",
              "--set", "topology.rounds=1"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "target_epsilon" in lines[0], lines


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ("{noise_multiplier=-0.5}", "noise_multiplier"),
        ("{noise_multiplier=1.0, delta=1.0}", "delta"),
    ],
)
def test_dp_sgd_bad_inputs_exit_2(params: str, field: str) -> None:
    variants = f'variants=[{{name="v", defenses=[{{name="dp_sgd", params={params}}}]}}]'
    result = CliRunner().invoke(
        app, ["run", "default", "--set", variants, "--set", "expectations=[]"]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0], lines


# ----- DP-SGD calibration on the steps the trainer really takes (issue 9), cached (issue 12)

# (batches per epoch k, epochs E, target): int(E / (1 / k)) < E * k in floating point, and
# Opacus' epochs-based calibration then overspends on the real E * k steps.
SHORT_CASES = [(93, 1, 8.0), (93, 2, 1.0), (77, 6, 1.0), (75, 3, 8.0)]


@pytest.mark.parametrize(("k", "epochs", "target"), SHORT_CASES)
def test_spent_epsilon_on_the_real_steps_never_exceeds_the_target(
    k: int, epochs: int, target: float, tmp_path, monkeypatch
) -> None:
    import torch
    from opacus.accountants.utils import get_noise_multiplier

    from privlab.defenses.dp_sgd import DPSGD
    from privlab.training import TrainSettings, seeded_generator

    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path))
    q = 1 / k
    assert int(epochs / q) == epochs * k - 1  # the case the issue names
    # the defect: noise searched for int(E / q) steps overspends on the E * k steps taken
    old = get_noise_multiplier(target_epsilon=target, target_delta=1e-5, sample_rate=q,
                               epochs=epochs, accountant="rdp", epsilon_tolerance=0.01)  # fmt: skip
    assert _opacus(RDPAccountant, old, q, epochs * k, 1e-5) > target
    # the trainer: k records, batch 1 -> k Poisson batches per epoch; count its steps
    spec = ComponentSpec(
        name="dp_sgd", params={"target_epsilon": target, "accountant": "rdp", "delta": 1e-5}
    )
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2))
    x, y = torch.randn(k, 2), torch.randint(0, 2, (k,))
    settings = TrainSettings(batch_size=1, lr=0.1, local_epochs=epochs)
    trainer = DPSGD(spec, "defenses.0").make_trainer(
        model, x, y, settings, seeded_generator(0), planned_epochs=epochs
    )
    trainer.train(trainer.state())
    spent = trainer.privacy()
    assert spent["steps"] == spent["calibrated_steps"] == epochs * k
    # independent recomputation: Opacus' accountant over the real history
    real = _opacus(RDPAccountant, spent["noise_multiplier"], q, spent["steps"], 1e-5)
    assert real == pytest.approx(spent["epsilon"], rel=1e-9)
    assert real <= target


def test_prv_calibration_on_real_steps_meets_the_target(tmp_path, monkeypatch) -> None:
    """The default accountant (PRV) for k = 93, one epoch, target 8."""
    from privlab.defenses.dp_calibration import calibrate_noise

    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path))
    noise = calibrate_noise(8.0, 1e-5, 1 / 93, 93, "prv")
    assert _opacus(PRVAccountant, noise, 1 / 93, 93, 1e-5) <= 8.0


def test_calibration_is_cached_on_disk_and_rebuilt_on_a_bad_checksum(tmp_path, monkeypatch) -> None:
    import json

    from privlab.defenses import dp_calibration as cal

    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path))
    cal.calibrate_noise.cache_clear()
    first = cal.calibrate_noise(2.0, 1e-5, 0.1, 50, "rdp")
    files = list((tmp_path / cal.CACHE_FOLDER).glob("*.json"))
    assert len(files) == 1
    entry = json.loads(files[0].read_text())
    assert entry["question"]["steps"] == 50 and entry["noise_multiplier_decimal"] == first

    calls = []

    def counting(*args):
        calls.append(args)
        return 123.0

    monkeypatch.setattr(cal, "search_noise", counting)
    cal.calibrate_noise.cache_clear()  # a new process: only the disk remains
    assert cal.calibrate_noise(2.0, 1e-5, 0.1, 50, "rdp") == first and not calls
    # a tampered entry fails its checksum and is recomputed (and rewritten)
    entry["noise_multiplier"] = (first * 0.5).hex()
    files[0].write_text(json.dumps(entry))
    cal.calibrate_noise.cache_clear()
    assert cal.calibrate_noise(2.0, 1e-5, 0.1, 50, "rdp") == 123.0 and len(calls) == 1
    assert json.loads(files[0].read_text())["noise_multiplier_decimal"] == 123.0
    # a garbled file too
    files[0].write_text("{not json")
    cal.calibrate_noise.cache_clear()
    assert cal.calibrate_noise(2.0, 1e-5, 0.1, 50, "rdp") == 123.0 and len(calls) == 2
    cal.calibrate_noise.cache_clear()


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_a_target_looser_than_the_least_noise_is_refused_not_searched_forever(
    tmp_path, monkeypatch, accountant: str
) -> None:
    """Opacus' bisection never ends for a target no finite epsilon reaches (1e300 hung `privlab
    run` with dp_sgd and dp_fedavg); a target above what MIN_NOISE spends is refused at once,
    one just below it is still calibrated and met (checked with Opacus' own accountant)."""
    from privlab.defenses import dp_calibration as cal

    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path))
    cal.calibrate_noise.cache_clear()
    q, steps = 0.2, 100
    accounts = {"rdp": RDPAccountant, "prv": PRVAccountant}[accountant]
    at_min = _opacus(RDPAccountant, cal.MIN_NOISE, q, steps, 1e-5)  # 3,860
    with pytest.raises(cal.TargetTooLoose, match="at most epsilon 3860"):
        cal.calibrate_noise(at_min * 1.01, 1e-5, q, steps, accountant)
    with pytest.raises(cal.TargetTooLoose):
        cal.calibrate_noise(1e300, 1e-5, q, steps, accountant)
    noise = cal.calibrate_noise(50.0, 1e-5, q, steps, accountant)
    assert noise > cal.MIN_NOISE and _opacus(accounts, noise, q, steps, 1e-5) <= 50.0
    cal.calibrate_noise.cache_clear()
