"""privlab's pytest plugin, run in a pytest of its own: scenario files become test items, and
the `privlab_run` fixture runs a scenario once per session."""

from __future__ import annotations

import pytest

TINY = """
name = "tiny"
[data]
name = "digits"
[partition]
num_clients = 2
[model]
name = "mlp"
params = { hidden = [16] }
[topology]
rounds = 1
[[attacks]]
name = "loss_threshold"
id = "mia"
[[variants]]
name = "plain"
[[expectations]]
metric = "utility.final_accuracy"
min = 0.0
[[expectations]]
variant = "plain"
metric = "attacks.mia.auc"
min = 1.01
"""


def test_scenario_files_become_one_item_per_expectation(pytester: pytest.Pytester) -> None:
    (pytester.path / "scen").mkdir()
    (pytester.path / "scen" / "tiny.toml").write_text(TINY)
    (pytester.path / "scen" / "pyproject.toml").write_text("[tool.x]\n")  # not a scenario
    result = pytester.runpytest_subprocess("--privlab-scenarios", "scen", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*privlab expectation breached: plain: attacks.mia.auc = * breached (min 1.01)*"]
    )
    # Without the option the plugin collects nothing: it is inert unless asked.
    quiet = pytester.runpytest_subprocess("scen", "-p", "no:cacheprovider")
    assert quiet.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_a_broken_scenario_is_a_one_line_collection_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "bad.toml").write_text(TINY.replace('name = "digits"', 'name = "digitz"'))
    result = pytester.runpytest_subprocess(
        "--privlab-scenarios", "bad.toml", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*data.name*did you mean 'digits'*"])
    assert "Traceback" not in result.stdout.str()


def test_the_fixture_runs_a_scenario_once_and_lists_breaches(pytester: pytest.Pytester) -> None:
    (pytester.path / "tiny.toml").write_text(TINY)
    pytester.makepyfile(
        test_privacy="""
        def test_runs(privlab_run):
            results = privlab_run("tiny.toml")
            assert privlab_run("tiny.toml") is results  # cached for the session
            assert results["variants"]["plain"]["utility"]["final_accuracy"] > 0.1
            breaches = privlab_run.breaches(results)
            assert len(breaches) == 1 and "attacks.mia.auc" in breaches[0]
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
