"""The Ray backend gives the local backend's results.json (timing aside) for the same seed.

Skipped cleanly when Ray is not installed (`pip install 'privlab[ray]'`)."""

from __future__ import annotations

import pytest

from privlab.results import strip_timing
from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario

ray = pytest.importorskip("ray")

# Ray's own helper processes outlive a test's garbage collection (some versions warn then).
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _both(name: str, overrides: list[str]) -> tuple[dict, dict]:
    local = ScenarioRun(load_scenario(name, overrides)).run()
    remote = ScenarioRun(load_scenario(name, [*overrides, 'backend="ray"'])).run()
    return local, remote


def test_ray_backend_gives_identical_results(local_ray) -> None:
    local, remote = _both("poisoning_data", ["topology.rounds=3"])
    assert remote["timing"]["backend"] == "ray" and local["timing"]["backend"] == "local"
    assert strip_timing(remote) == strip_timing(local)
    assert len(remote["variants"]) > 1  # several variants, each a Ray task


@pytest.mark.slow
def test_bundled_scenario_runs_unchanged_on_ray(local_ray) -> None:
    local, remote = _both("poisoning_data", [])
    assert strip_timing(remote) == strip_timing(local)


def test_reference_models_run_as_ray_tasks_with_identical_results(
    local_ray, tmp_path, monkeypatch
) -> None:
    """One variant: LiRA's 16 reference models go out as two Ray tasks (groups of 8)."""
    from privlab import reference_models
    from privlab.engine.ray_backend import RayTasks

    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path))
    sent = []
    real = RayTasks.map
    monkeypatch.setattr(
        RayTasks, "map", lambda self, fn, args: sent.append((fn, len(args))) or real(self, fn, args)
    )
    overrides = [
        "topology.rounds=2",
        "data.params.num_samples=800",
        'attacks=[{name="lira", id="lira", params={num_reference_models=16, cache=false}}]',
        "expectations=[]",
    ]
    local, remote = _both("mia_lira", overrides)
    assert sent == [(reference_models.train_group, 2)]
    assert strip_timing(remote) == strip_timing(local)
