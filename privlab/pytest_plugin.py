"""privlab's pytest plugin (entry point `pytest11`): privacy regression tests in a test suite.

Two ways in:

- the `privlab_run` fixture runs a scenario (or loads a results.json) once per session and
  returns its results::

      def test_dp_hides_membership(privlab_run):
          results = privlab_run("my_scenario.toml", overrides=["topology.rounds=5"])
          assert results["variants"]["dp"]["attacks"]["mia"]["metrics"]["auc"] < 0.6

- `pytest --privlab-scenarios scenarios/` collects every scenario `*.toml` under the given paths
  and turns each of its expectations (per variant) into a test item; a scenario runs once, when
  its first item runs. `--privlab-set KEY=VALUE` overrides fields of every collected scenario.

The plugin is inert unless used: it imports nothing heavy at start-up.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_SCENARIO_KEYS = {"data", "topology", "attacks", "variants", "expectations", "model"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("privlab")
    group.addoption(
        "--privlab-scenarios",
        action="store_true",
        default=False,
        help="collect privlab scenario *.toml files; each expectation becomes a test item",
    )
    group.addoption(
        "--privlab-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of every collected privlab scenario (repeatable)",
    )


def run_scenario(
    scenario: str | Path, overrides: list[str] | None = None, seed: int | None = None
) -> dict[str, Any]:
    """Run a scenario (bundled name or .toml path) in-process and return its results."""
    from privlab.runner import ScenarioRun
    from privlab.scenario import load_scenario

    return ScenarioRun(load_scenario(str(scenario), overrides, seed)).run()


class PrivlabRunner:
    """The `privlab_run` fixture: call it with a scenario (or a results.json path)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, dict[str, Any]] = {}

    def __call__(
        self,
        scenario: str | Path,
        overrides: list[str] | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        key = (str(scenario), tuple(overrides or ()), seed)
        if key not in self._cache:
            path = Path(scenario)
            if path.suffix == ".json":
                from privlab.results import read_results

                self._cache[key] = read_results(path)
            else:
                self._cache[key] = run_scenario(scenario, overrides, seed)
        return self._cache[key]

    @staticmethod
    def breaches(results: dict[str, Any]) -> list[str]:
        """The failed expectations of a results set (empty: all held)."""
        from privlab.gate import expectation_checks

        return [c.message for c in expectation_checks(results) if not c.passed]


@pytest.fixture(scope="session")
def privlab_run() -> PrivlabRunner:
    return PrivlabRunner()


def _looks_like_scenario(path: Path) -> bool:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return bool(_SCENARIO_KEYS & set(raw)) and "tool" not in raw and "project" not in raw


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if not parent.config.getoption("privlab_scenarios"):
        return None
    if file_path.suffix != ".toml" or not _looks_like_scenario(file_path):
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


class ExpectationFailed(AssertionError):
    """An expectation of a collected scenario was breached (its message is the report)."""


class ScenarioFile(pytest.File):
    """A scenario file: one item per (variant, expectation); the run is shared by its items."""

    _results: dict[str, Any] | None = None

    def overrides(self) -> list[str]:
        return list(self.config.getoption("privlab_set") or [])

    def collect(self) -> Iterator[pytest.Item]:
        from privlab.errors import PrivlabError
        from privlab.scenario import load_scenario

        try:
            scenario = load_scenario(str(self.path), self.overrides())
        except PrivlabError as exc:
            raise self.CollectError(f"{self.path}: {exc}") from None
        names = [v.name for v in scenario.variant_list()]
        for i, e in enumerate(scenario.expectations):
            for variant in [e.variant] if e.variant else names:
                yield ExpectationItem.from_parent(
                    self, name=f"{variant}:{e.metric}", index=i, variant=variant
                )

    def results(self) -> dict[str, Any]:
        if self._results is None:
            self._results = run_scenario(self.path, self.overrides())
        return self._results


class ExpectationItem(pytest.Item):
    def __init__(self, *, index: int, variant: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.variant = variant

    def runtest(self) -> None:
        from privlab.gate import expectation_checks

        parent = self.parent
        assert isinstance(parent, ScenarioFile)
        results = parent.results()
        spec = results["scenario"]["expectations"][self.index]
        for record, check in zip(results["expectations"], expectation_checks(results), strict=True):
            same = (record["metric"], record["min"], record["max"]) == (
                spec["metric"],
                spec["min"],
                spec["max"],
            )
            if same and record["variant"] == self.variant:
                if not check.passed:
                    raise ExpectationFailed(check.message)
                return
        raise ExpectationFailed(f"{self.variant}: {spec['metric']}: not evaluated by the run")

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | Any:
        if isinstance(excinfo.value, ExpectationFailed):
            return f"privlab expectation breached: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"privlab {self.path.name}::{self.name}"
