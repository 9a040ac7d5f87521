"""privlab's command line (typer).

Exit codes: 0 ok; 1 an expectation or baseline was breached; 2 usage or scenario error (one
line, no traceback); 3 internal error (traceback only with PRIVLAB_DEBUG=1).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from privlab.cli_console import progress_printer, summary_table
from privlab.errors import ExpectationBreach, PrivlabError, ScenarioError

# click's base exception (vendored by newer typer releases, imported by older ones).
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
MAX_THREADS = 4 * (os.cpu_count() or 1)
"""Torch threads beyond a few per core only oversubscribe (and OpenMP may fail to allocate)."""


class OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, a missing argument) as the same one line on stderr as
    every other error, exit 2, instead of click's multi-line box."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _ClickException as exc:
            message = " ".join(exc.format_message().split())
            ctx = getattr(exc, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            if message:  # empty when click has just printed the help (no arguments given)
                typer.echo(f"error: {message}{where}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Privacy attack-and-defense evaluation for federated, split, swarm and central learning.",
)
out_console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _print_version(value: bool) -> None:
    if value:
        from privlab import __version__

        typer.echo(f"privlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Privacy attack-and-defense evaluation for federated, split, swarm and central learning."""


def guarded(fn: F) -> F:
    """Map privlab's errors to exit codes with one line on stderr; never a traceback at 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except ExpectationBreach as exc:
            typer.echo(f"breached: {exc}", err=True)
            raise typer.Exit(1) from None
        except PrivlabError as exc:
            typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("PRIVLAB_DEBUG"):
                raise
            first_line = (str(exc).splitlines() or [""])[0]
            typer.echo(
                f"internal error: {type(exc).__name__}: {first_line} "
                "(set PRIVLAB_DEBUG=1 for the traceback)",
                err=True,
            )
            raise typer.Exit(3) from None

    return wrapper  # type: ignore[return-value]


ScenarioArg = Annotated[
    str | None,
    typer.Argument(help="Bundled scenario name or path to a .toml file (default: 'default')."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a field: a.b=value (repeatable), e.g. topology.rounds=5."),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Override the scenario's seed.")]
ThreadsOpt = Annotated[
    int,
    typer.Option(
        "--threads",
        min=1,
        max=MAX_THREADS,
        envvar="PRIVLAB_THREADS",
        help="Torch CPU threads (1 to 4 per CPU). Small models train fastest on one.",
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Output folder (default: reports/<scenario name>)."),
]


def _output_dir(out: Path | None, name: str) -> Path:
    return out if out is not None else Path("reports") / name


def _invocation(command: str, scenario: str | None, set_: list[str] | None, **opts: Any) -> str:
    """The command line that reproduces a run, from the arguments it was given; without --out
    (where a run writes does not change its results, and results.json must not depend on it)."""
    import shlex

    parts = ["privlab", command] + ([scenario] if scenario else [])
    for item in set_ or []:
        parts += ["--set", item]
    for key, value in opts.items():
        if isinstance(value, list):
            for item in value:
                parts += [f"--{key}", str(item)]
        elif value is not None:
            parts += [f"--{key}", str(value)]
    return shlex.join(parts)


def _breaches(results: dict[str, Any]) -> list[str]:
    return [
        f"{e['variant']}: {e['metric']} = {e['actual']} (min {e['min']}, max {e['max']})"
        for e in results.get("expectations", [])
        if not e["passed"]
    ]


def _execute(
    scenario: Any, out: Path | None, quiet: bool, threads: int, invocation: str | None = None
) -> Any:
    from privlab.api import execute

    folder = _output_dir(out, scenario.name)
    update, progress, attack_update = (
        progress_printer(err_console) if not quiet else (None, None, None)
    )
    with progress if progress is not None else contextlib.nullcontext():
        results = execute(
            scenario,
            folder,
            threads=threads,
            progress=update,
            attack_progress=attack_update,
            invocation=invocation,
        )
    if not quiet:
        out_console.print(summary_table(results))
    out_console.print(
        f"wrote {folder / 'results.json'} and {folder / 'report.html'}", highlight=False
    )
    return results


@app.command()
@guarded
def run(
    scenario: ScenarioArg = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or table.")] = False,
    threads: ThreadsOpt = 1,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="Where variants run: local, or ray (privlab[ray])."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            max=256,
            help="Local worker processes for variants or reference models (default 1).",
        ),
    ] = None,
) -> None:
    """Run a scenario: train every variant, run its attacks, write results.json and report.html."""
    from privlab.scenario import load_scenario

    if backend is not None:  # validated with the scenario: one line naming `backend`
        set_ = [*(set_ or []), f"backend={json.dumps(backend)}"]
    if workers is not None:
        set_ = [*(set_ or []), f"workers={workers}"]
    command = _invocation("run", scenario, set_, seed=seed)
    results = _execute(load_scenario(scenario, set_, seed), out, quiet, threads, command)
    breaches = _breaches(results)
    if breaches:
        raise ExpectationBreach("; ".join(breaches))


@app.command()
@guarded
def sweep(
    scenario: ScenarioArg = None,
    param: Annotated[
        list[str],
        typer.Option(
            "--param", "-p", help="KEY=V1,V2,... (repeatable): one variant per combination."
        ),
    ] = [],  # noqa: B006
    set_: SetOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    threads: ThreadsOpt = 1,
) -> None:
    """Run a scenario over a grid of settings: each combination (per variant) is a variant."""
    from privlab.scenario import build_scenario, load_scenario
    from privlab.scenario_source import parse_override

    base = load_scenario(scenario, set_, seed)
    if not param:
        raise ScenarioError("--param: give at least one KEY=V1,V2,... to sweep over")
    axes = []
    for text in param:
        key, _, values = text.partition("=")
        if not values:
            raise ScenarioError(f"--param: expected KEY=V1,V2,..., got '{text}'")
        axes.append([(key.strip(), parse_override(f"{key}={v}")[1]) for v in values.split(",")])
    raw = base.model_dump(mode="json")
    variants = []
    grid_names: dict[str, list[str]] = {}  # original variant -> its grid points
    for combo in itertools.product(*axes):
        label = ",".join(f"{k.split('.')[-1]}={v}" for k, v in combo)
        for v in base.variant_list():
            name = label if not base.variants else f"{v.name}|{label}"
            grid_names.setdefault(v.name, []).append(name)
            variants.append(
                {
                    "name": name,
                    "defenses": [d.model_dump(mode="json") for d in v.defenses],
                    "set": {**v.set, **dict(combo)},
                }
            )
    raw["variants"] = variants
    raw["name"] = f"{base.name}-sweep"
    raw["expectations"] = sweep_expectations(raw["expectations"], grid_names)
    command = _invocation("sweep", scenario, set_, param=param, seed=seed)
    results = _execute(build_scenario(raw, base._base_dir), out, quiet, threads, command)
    breaches = _breaches(results)
    if breaches:
        raise ExpectationBreach("; ".join(breaches))


def sweep_expectations(
    expectations: list[dict[str, Any]], grid_names: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """Every grid point keeps the expectations of the variant it came from (one without a
    variant applies to every grid point, as it applied to every variant)."""
    out = []
    for e in expectations:
        if e.get("variant") is None:
            out.append(e)
        else:
            out += [{**e, "variant": name} for name in grid_names.get(e["variant"], [])]
    return out


@app.command("list")
@guarded
def list_() -> None:
    """List datasets, models, topologies, attacks, defenses and bundled scenarios."""
    from privlab import registry
    from privlab.scenario_source import bundled_scenarios

    for reg in (
        registry.datasets,
        registry.models,
        registry.topologies,
        registry.attacks,
        registry.defenses,
    ):
        table = Table(title=f"{reg.kind}s", title_justify="left", show_header=False, box=None)
        for entry in reg.entries():
            table.add_row(f"[bold]{entry.name}[/bold]", entry.summary)
        out_console.print(table)
    table = Table(title="scenarios", title_justify="left", show_header=False, box=None)
    for name, desc in bundled_scenarios().items():
        table.add_row(f"[bold]{name}[/bold]", desc)
    out_console.print(table)


@app.command()
@guarded
def show(scenario: ScenarioArg = None, set_: SetOpt = None, seed: SeedOpt = None) -> None:
    """Print the resolved scenario as JSON, with every component's params and defaults."""
    from privlab.components import resolved_components
    from privlab.runner import ScenarioRun
    from privlab.scenario import load_scenario

    s = load_scenario(scenario, set_, seed)
    resolved = s.model_dump(mode="json")
    # Preparing validates every component's params (unknown ones are refused) without training.
    resolved["resolved_components"] = resolved_components(ScenarioRun(s).variants)
    sys.stdout.write(json.dumps(resolved, indent=2) + "\n")


@app.command()
@guarded
def report(
    results: Annotated[Path, typer.Argument(help="A results.json written by privlab run.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="HTML path (default: beside it).")
    ] = None,
) -> None:
    """Re-render the HTML report from a results.json alone."""
    from privlab.report import write_report
    from privlab.results import read_results

    data = read_results(results)
    target = out or results.with_name("report.html")
    field = "--out" if out is not None else "report"
    if target.is_dir():
        raise ScenarioError(
            f"{field}: '{target}' is a directory; give a file path such as "
            f"'{target / 'report.html'}'"
        )
    try:
        write_report(data, target)
    except OSError as exc:
        raise ScenarioError(f"{field}: cannot write '{target}' ({exc.strerror or exc})") from None
    out_console.print(f"wrote {target}", highlight=False)


@app.command()
@guarded
def plot(
    results: Annotated[Path, typer.Argument(help="A results.json written by privlab run.")],
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            "-k",
            help="roc | accuracy | epsilon | tradeoff | per-client | per-group (the report's "
            "figures, drawn by the same functions).",
        ),
    ] = "roc",
    attack: Annotated[
        str | None, typer.Option("--attack", help="roc only: one attack id (default: all).")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Figure file: .pdf, .svg or .png.")
    ] = Path("figure.pdf"),
) -> None:
    """Draw one of the report's figures from a results.json into a PDF, SVG or PNG file."""
    from privlab import figures, plots
    from privlab.results import read_results

    if kind not in figures.KINDS:
        raise ScenarioError(f"--kind: unknown kind '{kind}'; allowed: {', '.join(figures.KINDS)}")
    if output.suffix.lower() not in {".pdf", ".svg", ".png"}:
        raise ScenarioError(f"--output: '{output}' must end in .pdf, .svg or .png")
    if attack is not None and kind != "roc":
        raise ScenarioError("--attack: only for --kind roc")
    data = read_results(results)
    if attack is not None and attack not in figures.membership_attacks(data):
        known = ", ".join(figures.membership_attacks(data)) or "none"
        raise ScenarioError(
            f"--attack: no ROC for '{attack}' in {results}; attacks with one: {known}"
        )
    fig = figures.roc(data, attack) if kind == "roc" else figures.KINDS[kind](data)
    if fig is None:
        raise ScenarioError(f"--kind {kind}: {results} holds no data for this figure")
    output.parent.mkdir(parents=True, exist_ok=True)
    plots.save(fig, output)
    out_console.print(f"wrote {output}", highlight=False)


from privlab import cli_gate  # noqa: E402  (its commands need guarded and the options above)

cli_gate.register(app)


def main() -> None:
    app()
