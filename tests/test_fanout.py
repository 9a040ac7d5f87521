"""Local fan-out (`workers = N`): the serial run's results.json (timing aside) for one seed,
whether variants go to worker processes or, with one variant, its reference models do."""

from __future__ import annotations

from pathlib import Path

import pytest

from privlab import fanout
from privlab.results import strip_timing
from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path / "cache"))


def _both(name: str, overrides: list[str]) -> tuple[dict, dict]:
    serial = ScenarioRun(load_scenario(name, overrides)).run()
    spread = ScenarioRun(load_scenario(name, [*overrides, "workers=2"])).run()
    assert spread["timing"]["workers"] == 2 and serial["timing"]["workers"] == 1
    return serial, spread


def test_variants_over_worker_processes_give_the_serial_results(
    monkeypatch, tiny_overrides: list[str]
) -> None:
    """Two variants, one per worker process."""
    sent = []
    real = fanout.Processes.map
    monkeypatch.setattr(
        fanout.Processes, "map", lambda self, fn, args: sent.append(fn) or real(self, fn, args)
    )
    two = 'variants=[{name="plain"}, {name="slower", set={"topology.lr"=0.02}}]'
    serial, spread = _both("default", [*tiny_overrides, two])
    assert sent == [fanout.variant_task] and len(spread["variants"]) > 1
    assert strip_timing(spread) == strip_timing(serial)


def test_reference_models_over_worker_processes_give_the_serial_results(monkeypatch) -> None:
    """One variant: LiRA's 16 reference models are two groups, one per worker process."""
    sent = []
    real = fanout.Processes.map
    monkeypatch.setattr(
        fanout.Processes,
        "map",
        lambda self, fn, args: sent.append(len(args)) or real(self, fn, args),
    )
    overrides = [
        "topology.rounds=2",
        "data.params.num_samples=800",
        'attacks=[{name="lira", id="lira", params={num_reference_models=16, cache=false}}]',
        "expectations=[]",
    ]
    serial, spread = _both("mia_lira", overrides)
    assert sent == [2]
    assert strip_timing(spread) == strip_timing(serial)
    assert spread["variants"]["baseline"]["attacks"]["lira"]["metrics"]["auc"] > 0


def test_cli_workers_option_reaches_the_run(tmp_path: Path, tiny_overrides: list[str]) -> None:
    import json

    from typer.testing import CliRunner

    from privlab.cli import app

    one = [*tiny_overrides, "variants=[]"]  # one variant, no reference models: no processes
    args = [a for item in one for a in ("--set", item)]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", *args, "--workers", "2", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["timing"]["workers"] == 2
    assert "workers" not in results["scenario"]  # where it ran never changes results.json
