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


@pytest.fixture(scope="module")
def local_ray():
    from privlab.engine.ray_backend import start

    start(None)  # a local Ray with 2 CPUs, as CI runs it
    yield
    ray.shutdown()


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
