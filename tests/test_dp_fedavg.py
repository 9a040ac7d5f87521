"""Client-level DP-FedAvg: server-side clipping and noise, adaptive clipping, the ledger."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant
from typer.testing import CliRunner

from privlab.cli import app
from privlab.defenses.dp_fedavg import DPFedAvg, adaptive_update_noise, clip_update
from privlab.errors import ScenarioError
from privlab.scenario import ComponentSpec, load_scenario
from privlab.training import seeded_generator


def _defense(**params) -> DPFedAvg:
    return DPFedAvg(ComponentSpec(name="dp_fedavg", params=params), "defenses.0")


def _ready(clients: int = 10, fraction: float = 0.5, rounds: int = 20, **params) -> DPFedAvg:
    d = _defense(**params)
    scenario = load_scenario(
        "default",
        [f"partition.num_clients={clients}", f"topology.client_fraction={fraction}",
         f"topology.rounds={rounds}"],
    )  # fmt: skip
    d.check_setting(scenario, (1, 8, 8), 10)
    return d


def _update(scale: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 4), scale), "b": torch.full((4,), scale)}


def test_clip_update_bounds_the_whole_update_norm() -> None:
    clipped, norm = clip_update(_update(1.0), 2.0)
    assert norm == pytest.approx(4.0)
    total = math.sqrt(sum(float(t.pow(2).sum()) for t in clipped.values()))
    assert total == pytest.approx(2.0)
    same, _ = clip_update(_update(0.1), 2.0)
    assert torch.equal(same["w"], _update(0.1)["w"])


def test_aggregate_is_clipped_sum_plus_noise_over_expected_clients() -> None:
    d = _ready(noise_multiplier=0.7, clip_norm=1.0)
    assert d.expected_clients == 5 and d.sample_rate == pytest.approx(0.5)
    ups = [_update(1.0), _update(0.01), _update(-1.0)]
    out = d.aggregate(ups, [10.0, 20.0, 30.0])
    gen = seeded_generator(0, 53)  # the defense's own generator, seeded from the scenario
    for key in ("w", "b"):
        noise = torch.randn(ups[0][key].shape, generator=gen) * 0.7
        expected = (sum(clip_update(u, 1.0)[0][key] for u in ups) + noise) / 5
        assert torch.allclose(out[key], expected, atol=1e-6)


def test_noise_has_the_stated_scale() -> None:
    d = _ready(noise_multiplier=2.0, clip_norm=0.5)
    zero = {"w": torch.zeros(20000)}
    out = d.aggregate([zero], [1.0])["w"] * d.expected_clients
    assert float(out.std()) == pytest.approx(2.0 * 0.5, rel=0.03)


def test_epsilon_per_round_equals_opacus_over_the_same_history() -> None:
    d = _ready(noise_multiplier=1.1, accountant="rdp", delta=1e-5)
    assert d.privacy()["epsilon"] == 0.0
    for r in range(1, 6):
        d.start_round(r, {})
        d.aggregate([_update(1.0)], [1.0])
        ref = RDPAccountant()
        ref.history = [(1.1, 0.5, r)]
        assert d.privacy()["epsilon"] == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert d.privacy()["level"] == "client" and d.privacy()["rounds_accounted"] == 5


def test_target_epsilon_is_met() -> None:
    d = _ready(target_epsilon=2.0, rounds=20, accountant="gdp")
    for r in range(1, 21):
        d.start_round(r, {})
        d.aggregate([_update(1.0)], [1.0])
    assert 1.9 <= d.privacy()["epsilon"] <= 2.0
    assert d.privacy()["approximate"] is True


def test_unreachable_target_epsilon_is_refused_before_training() -> None:
    with pytest.raises(ScenarioError, match=r"defenses\.0\.params\.target_epsilon"):
        _ready(target_epsilon=0.01, rounds=20)  # below RDP's floor at this delta


def test_budget_stop_freezes_the_model_and_warn_goes_on() -> None:
    d = _ready(noise_multiplier=2.0, budget_epsilon=3.0, on_budget="stop")
    outs = []
    for r in range(1, 21):
        d.start_round(r, {})
        outs.append(d.aggregate([_update(1.0)], [1.0]))
    p = d.privacy()
    assert p["epsilon"] <= 3.0 and p["budget_exceeded"] and "stopped_at_round" in p
    stop = p["stopped_at_round"]
    assert all(float(o["w"].abs().sum()) == 0 for o in outs[stop - 1 :])
    assert float(outs[stop - 2]["w"].abs().sum()) > 0
    w = _ready(noise_multiplier=2.0, budget_epsilon=3.0, on_budget="warn")
    for r in range(1, 21):
        w.start_round(r, {})
        w.aggregate([_update(1.0)], [1.0])
    assert w.privacy()["epsilon"] > 3.0 and w.privacy()["budget_exceeded"]


def test_adaptive_clipping_tracks_the_target_quantile() -> None:
    """Andrew et al. 2021: with every norm above C the clip grows geometrically, and with
    every norm below it shrinks, towards the target quantile of the update norms."""
    grow = _ready(noise_multiplier=0.5, clipping="adaptive", clip_norm=0.1, count_noise=1.0,
                  clip_lr=0.5)  # fmt: skip
    for r in range(1, 21):
        grow.start_round(r, {})
        grow.aggregate([_update(1.0)] * 5, [1.0] * 5)
    assert 2.0 < grow.clip < 8.0  # the norms are 4
    shrink = _ready(noise_multiplier=0.5, clipping="adaptive", clip_norm=10.0, count_noise=1.0,
                    clip_lr=0.5)  # fmt: skip
    for r in range(1, 21):
        shrink.start_round(r, {})
        shrink.aggregate([_update(0.01)] * 5, [1.0] * 5)
    assert shrink.clip < 0.5  # the norms are 0.04
    # the update noise is raised so that the two releases cost what one with z costs
    z_delta = adaptive_update_noise(1.0, 2.0)
    assert z_delta**-2 + (2 * 2.0) ** -2 == pytest.approx(1.0)
    with pytest.raises(ScenarioError, match=r"defenses\.0\.params\.count_noise"):
        _ready(noise_multiplier=4.0, clipping="adaptive", count_noise=1.0)


def test_dp_fedavg_needs_the_federated_topology() -> None:
    d = _defense(noise_multiplier=1.0)
    scenario = load_scenario("default", ["topology.name=central"])
    with pytest.raises(ScenarioError, match="federated"):
        d.check_setting(scenario, (1, 8, 8), 10)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ("{noise_multiplier=-1.0}", "noise_multiplier"),
        ("{noise_multiplier=1.0, delta=1.0}", "delta"),
        ("{noise_multiplier=1.0, delta=1.5}", "delta"),
        ("{target_epsilon=0.01}", "target_epsilon"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(params: str, field: str) -> None:
    variants = f'variants=[{{name="v", defenses=[{{name="dp_fedavg", params={params}}}]}}]'
    result = CliRunner().invoke(
        app, ["run", "dp_fedavg", "--set", variants, "--set", "expectations=[]"]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0], lines


def test_ledger_in_round_records_of_a_federated_run(tmp_path: Path) -> None:
    args = ["run", "dp_fedavg", "--out", str(tmp_path)]
    for o in [
        "partition.num_clients=10",
        "topology.rounds=4",
        "topology.local_epochs=1",
        "attacks=[]",
        'variants=[{name="dp", defenses=[{name="dp_fedavg", params={noise_multiplier=1.0, '
        'clipping="adaptive", count_noise=1.0}}]}]',
        "expectations=[]",
    ]:
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    variant = json.loads((tmp_path / "results.json").read_text())["variants"]["dp"]
    eps = [r["epsilon"] for r in variant["utility"]["per_round"]]
    assert len(eps) == 4 and all(b > a > 0 for a, b in itertools.pairwise(eps))
    assert variant["privacy"]["epsilon"] == pytest.approx(eps[-1], abs=1e-6)
    assert variant["privacy"]["level"] == "client"
    html = (tmp_path / "report.html").read_text()
    assert "Epsilon ledger" in html


# ----- adaptive clipping: the joint release is accounted as what is released (issue 9)


def _opacus_rdp(noise: float, rate: float, steps: int, delta: float) -> float:
    ref = RDPAccountant()
    ref.history = [(noise, rate, steps)]
    return float(ref.get_epsilon(delta))


def test_uncentred_count_was_under_accounted_by_about_1_8x() -> None:
    """The defect, reproduced with Opacus alone: q = 0.1, 100 rounds, z = 1, sigma_b = 1.
    The split z_delta assumes count sensitivity 1/2; a plain count (sensitivity 1) with that
    split is a Gaussian mechanism with multiplier (z_delta^-2 + sigma_b^-2)^-1/2."""
    z, sigma_b = 1.0, 1.0
    z_delta = (z**-2 - (2 * sigma_b) ** -2) ** -0.5  # closed form, Andrew et al. Thm 1
    plain = (z_delta**-2 + sigma_b**-2) ** -0.5
    reported, actual = _opacus_rdp(z, 0.1, 100, 1e-5), _opacus_rdp(plain, 0.1, 100, 1e-5)
    assert 1.7 < actual / reported < 1.9  # 7.90 accounted vs 13.91 released
    assert adaptive_update_noise(z, sigma_b) == pytest.approx(z_delta, rel=1e-12)


def test_released_count_is_centred_with_sensitivity_one_half() -> None:
    """Adding one client (under the clip or over it) moves the released count by exactly 1/2
    for the same noise draw: the sensitivity the noise split assumes."""
    ups = [_update(0.01), _update(0.02), _update(5.0)]
    released = {}
    for extra in (None, 0.01, 5.0):
        d = _ready(noise_multiplier=1.0, clipping="adaptive", count_noise=1.0, clip_norm=1.0)
        d.aggregate(ups + ([_update(extra)] if extra is not None else []), [1.0] * 4)
        released[extra] = d.last_count_release
    # the update noise draws come first, so the count noise differs with the update size only
    # through the generator's position, which is the same here (same tensor shapes)
    assert released[0.01] - released[None] == pytest.approx(0.5, abs=1e-9)
    assert released[5.0] - released[None] == pytest.approx(-0.5, abs=1e-9)


def test_adaptive_epsilon_equals_opacus_for_the_measured_joint_mechanism() -> None:
    """Measure both noise scales from the defense's own releases, build the effective
    multiplier of the stacked Gaussian by the closed form (sensitivities C and 1/2), and check
    the defense's epsilon against Opacus' RDP for that multiplier: q = 0.1, 100 rounds."""
    z, sigma_b, rounds = 1.0, 1.0, 100
    d = _ready(clients=200, fraction=0.1, rounds=rounds, noise_multiplier=z,
               clipping="adaptive", count_noise=sigma_b, clip_norm=1.0, delta=1e-5)  # fmt: skip
    counts, coords = [], []
    zero = {"w": torch.zeros(2000)}
    for r in range(1, rounds + 1):
        d.start_round(r, {})
        d.clip = 1.0  # keep C fixed so the update noise has one scale
        out = d.aggregate([zero] * d.expected_clients, [1.0] * d.expected_clients)
        coords.append(out["w"] * d.expected_clients)
        counts.append(d.last_count_release - d.expected_clients / 2)  # all under the clip
    update_sd = float(torch.cat(coords).std())
    count_sd = float(torch.tensor(counts).std())
    assert count_sd == pytest.approx(sigma_b, rel=0.2)
    measured = (update_sd**-2 + (count_sd / 0.5) ** -2) ** -0.5
    assert measured == pytest.approx(z, rel=0.1)
    spent = d.privacy()
    assert spent["effective_noise_multiplier"] == pytest.approx(z, rel=1e-12)
    assert spent["epsilon"] == pytest.approx(_opacus_rdp(z, 0.1, rounds, 1e-5), rel=1e-9)
    # and the mechanism with the measured multiplier costs what was reported (within noise)
    assert _opacus_rdp(measured, 0.1, rounds, 1e-5) == pytest.approx(spent["epsilon"], rel=0.2)
