"""`privlab check` and `privlab baseline update`: the CI gate's commands (see privlab.gate).

`check` reads a results.json, or runs a scenario first when given a scenario name or .toml, then
compares its expectations and (optionally) a committed baseline. It prints the checks as a table
(breaches first), exits 1 on a breach and also when nothing was compared, and can write JUnit XML
(`--junit`), a markdown job summary (`--summary`) or print JSON (`--json`).
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from privlab.errors import ExpectationBreach, ScenarioError


def _is_results_file(target: str) -> bool:
    path = Path(target)
    return path.suffix == ".json" or path.is_dir()


def _results_path(target: str) -> Path:
    path = Path(target)
    return path / "results.json" if path.is_dir() else path


def _check_table(outcome: Any) -> Table:
    table = Table(title="privlab check", show_lines=False)
    for col in ("result", "variant", "check", "metric", "actual", "bound"):
        table.add_column(col, overflow="fold")
    for c in sorted(outcome.checks, key=lambda c: c.passed):
        actual = "missing" if c.actual is None else f"{c.actual:.4g}"
        table.add_row(
            "pass" if c.passed else "[bold red]FAIL[/bold red]",
            c.variant,
            c.kind,
            c.metric,
            actual,
            c.expected,
        )
    return table


def _write(path: Path, text: str, option: str) -> None:
    from privlab.results import atomic_write_text

    if path.is_dir():
        raise ScenarioError(f"{option}: '{path}' is a directory; give a file path")
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise ScenarioError(f"{option}: cannot write '{path}' ({exc.strerror or exc})") from None


def register(app: typer.Typer) -> None:
    """Add the gate's commands to privlab's typer app. (No `from __future__ import annotations`
    in this module: typer reads the annotations, which name options defined in privlab.cli.)"""
    from privlab.cli import OutOpt, SeedOpt, SetOpt, ThreadsOpt, guarded, out_console

    @app.command()
    @guarded
    def check(
        target: Annotated[
            str,
            typer.Argument(
                help="A results.json (or its folder) to read, or a scenario name / .toml to run."
            ),
        ],
        baseline: Annotated[
            Path | None,
            typer.Option(
                "--baseline",
                help="A baseline file (privlab baseline update) or an earlier results.json.",
            ),
        ] = None,
        tolerance: Annotated[
            float | None,
            typer.Option("--tolerance", help="Override every baseline entry's tolerance (>= 0)."),
        ] = None,
        junit: Annotated[
            Path | None, typer.Option("--junit", help="Write JUnit XML to this file.")
        ] = None,
        summary: Annotated[
            Path | None,
            typer.Option("--summary", help="Write a markdown summary (e.g. $GITHUB_STEP_SUMMARY)."),
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the checks as JSON on stdout.")
        ] = False,
        set_: SetOpt = None,
        seed: SeedOpt = None,
        out: OutOpt = None,
        threads: ThreadsOpt = 1,
    ) -> None:
        """Check expectations and a baseline; exit 1 on a breach or when nothing was compared."""
        from privlab.gate import evaluate_gate, read_baseline
        from privlab.gate_output import junit_xml, markdown_summary
        from privlab.results import read_results

        if tolerance is not None and not 0 <= tolerance < float("inf"):
            raise ScenarioError(f"--tolerance: expected a finite number >= 0, got {tolerance}")
        default_tolerance = 0.02 if tolerance is None else tolerance
        base = read_baseline(baseline, default_tolerance) if baseline is not None else None
        if _is_results_file(target):
            if set_ or seed is not None:
                raise ScenarioError("--set/--seed: only apply when check runs a scenario")
            results = read_results(_results_path(target))
        else:
            from privlab.cli import _execute
            from privlab.scenario import load_scenario

            results = _execute(load_scenario(target, set_, seed), out, True, threads)
        outcome = evaluate_gate(results, base, tolerance)
        if junit is not None:
            _write(junit, junit_xml(results, outcome), "--junit")
        if summary is not None:
            _write(summary, markdown_summary(results, outcome), "--summary")
        if as_json:
            sys.stdout.write(json.dumps(outcome.to_json(), indent=2) + "\n")
        else:
            if outcome.checks:
                out_console.print(_check_table(outcome))
            for note in outcome.notes:
                out_console.print(f"note: {note}", highlight=False, markup=False)
        if not outcome.passed:
            failures = outcome.failures
            raise ExpectationBreach(
                f"{len(failures)} failure(s): {failures[0]}"
                + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
            )
        if not as_json:
            out_console.print(
                f"ok: {len(outcome.checks)} check(s) held", highlight=False, markup=False
            )

    baseline_app = typer.Typer(
        help="Manage a committed baseline (a ratchet).", no_args_is_help=True
    )
    app.add_typer(baseline_app, name="baseline")

    @baseline_app.command("update")
    @guarded
    def update(
        results: Annotated[str, typer.Argument(help="A results.json (or its folder).")],
        baseline: Annotated[
            Path, typer.Option("--baseline", help="The baseline file to create or ratchet.")
        ],
        metric: Annotated[
            list[str] | None,
            typer.Option(
                "--metric",
                help="Metric paths or patterns to record (repeatable), e.g. attacks.*.auc. "
                "Default: accuracy, epsilon and the attacks' headline metrics.",
            ),
        ] = None,
        tolerance: Annotated[
            float, typer.Option("--tolerance", help="Tolerance for new entries (>= 0).")
        ] = 0.02,
        direction: Annotated[
            str | None,
            typer.Option(
                "--direction",
                help="Direction for metrics privlab has none for: higher_is_worse, "
                "lower_is_worse or two_sided (default).",
            ),
        ] = None,
        accept_worse: Annotated[
            bool,
            typer.Option("--accept-worse", help="Also record values that got worse."),
        ] = False,
        prune: Annotated[
            bool, typer.Option("--prune", help="Drop entries the results no longer have.")
        ] = False,
    ) -> None:
        """Record the results' metrics in the baseline; worse values only with --accept-worse."""
        from privlab.gate import (
            DIRECTIONS,
            baseline_document,
            make_entries,
            ratchet,
            read_baseline,
        )
        from privlab.results import read_results

        if not 0 <= tolerance < float("inf"):
            raise ScenarioError(f"--tolerance: expected a finite number >= 0, got {tolerance}")
        if direction is not None and direction not in DIRECTIONS:
            raise ScenarioError(f"--direction: expected one of {', '.join(DIRECTIONS)}")
        data = read_results(_results_path(results))
        fresh = make_entries(data, metric, tolerance, direction)  # type: ignore[arg-type]
        name = data["scenario"]["name"]
        old: list = []
        if baseline.exists():
            scenario, old = read_baseline(baseline)
            if scenario is not None and scenario != name:
                raise ScenarioError(
                    f"--baseline: '{baseline}' is for scenario '{scenario}', not '{name}'"
                )
        merged, changes = ratchet(old, fresh, accept_worse)
        if prune:
            present = {(e.variant, e.metric) for e in fresh}
            dropped = [e for e in merged if (e.variant, e.metric) not in present]
            merged = [e for e in merged if (e.variant, e.metric) in present]
            changes = [c for c in changes if "not in the new results" not in c]
            changes += [f"removed {e.variant}: {e.metric}" for e in dropped]
        _write(baseline, json.dumps(baseline_document(name, merged), indent=2) + "\n", "--baseline")
        for line in changes or ["no change"]:
            out_console.print(line, highlight=False, markup=False)
        out_console.print(
            f"wrote {baseline} ({len(merged)} entries)", highlight=False, markup=False
        )
