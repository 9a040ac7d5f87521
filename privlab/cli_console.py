"""What the CLI prints: training and attack progress (rich bars on a terminal, sparse plain
lines in CI logs) and the run's summary table (one row per variant and attack, so any number
of attacks fits 80 columns)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

Progress = Callable[[str, int, int, float], None]
AttackProgress = Callable[[str, str, int, int], None]


def progress_printer(console: Console) -> tuple[Progress, Any, AttackProgress]:
    """Training and attack progress: rich bars on a terminal; sparse plain lines otherwise (CI
    logs). Returns (round callback, the rich Progress or None, attack callback)."""
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        )
        tasks: dict[str, Any] = {}

        def update(variant: str, r: int, total: int, acc: float) -> None:
            if variant not in tasks:
                tasks[variant] = progress.add_task(f"{variant} rounds", total=total, info="")
            progress.update(tasks[variant], completed=r, info=f"acc {acc:.3f}")

        def attack_update(variant: str, attack: str, done: int, total: int) -> None:
            key = f"{variant}\0attacks"
            if key not in tasks:
                tasks[key] = progress.add_task(f"{variant} attacks", total=total, info="")
            progress.update(tasks[key], completed=done, info=attack or "done")

        return update, progress, attack_update

    def plain(variant: str, r: int, total: int, acc: float) -> None:
        if r == total or r == 1 or r % max(1, total // 4) == 0:
            console.print(
                f"[{variant}] round {r}/{total} accuracy {acc:.3f}", highlight=False, markup=False
            )

    def plain_attack(variant: str, attack: str, done: int, total: int) -> None:
        text = f"attack {done + 1}/{total} {attack}" if attack else f"attacks {done}/{total} done"
        console.print(f"[{variant}] {text}", highlight=False, markup=False)

    return plain, None, plain_attack


def summary_table(results: dict[str, Any]) -> Table:
    """One row per variant and attack (long format), so any number of attacks fits 80 columns:
    each attack's key metric (TPR at low FPR, PSNR and baseline, backdoor success, label-leak
    AUC) and its risk grade."""
    from rich import box

    from privlab import grading
    from privlab.report_verdict import headline

    overrides = grading.overrides_of(results)
    table = Table(
        title=f"privlab · {results['scenario']['name']}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("variant", overflow="fold", max_width=16)
    table.add_column("acc", justify="right", no_wrap=True)
    table.add_column("ε", justify="right", no_wrap=True)
    table.add_column("attack", overflow="fold", max_width=13)
    table.add_column("key metric", overflow="fold", min_width=26)
    table.add_column("grade", no_wrap=True, min_width=6)
    accountants = set()
    notes = {"—: not graded (no rule for the family, or no baseline)"}
    for name, v in results["variants"].items():
        priv = v.get("privacy")
        eps = "—"
        if priv and priv.get("epsilon") is not None:
            eps = f"{'≈' if priv.get('approximate') else ''}{priv['epsilon']:.2f}"
            accountants.add(f"{priv.get('accountant')}, δ={priv.get('delta'):g}")
        acc = _fmt(v["utility"].get("final_accuracy"))
        if v.get("status") == "diverged":
            acc = "div."
        attacks = list((v.get("attacks") or {}).items()) or [("—", {})]
        for i, (aid, a) in enumerate(attacks):
            g = grading.grade(str(a.get("family") or ""), a.get("metrics") or {}, overrides)
            label, value = headline(a, g) if a else ("", "—")
            if g.below_resolution:
                notes.add("†: below resolution (FPR < 1/n_nonmembers)")
            first = i == 0
            table.add_row(
                name if first else "",
                acc if first else "",
                eps if first else "",
                aid,
                f"{label} {value}".strip(),
                g.level if a and g.level != "not graded" else "—",
                end_section=i == len(attacks) - 1,
            )
    if accountants:
        notes.add(f"ε: {'; '.join(sorted(accountants))}")
    table.caption = "; ".join(sorted(notes))
    return table


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else "—"
