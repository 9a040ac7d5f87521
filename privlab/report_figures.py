"""The report's core figures as inline SVG, each with a caption computed from the same data the
figure shows (never fixed text that could contradict it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from privlab import figures, grading, plots
from privlab.figures import _d

_STYLE_WORDS = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}


@dataclass(frozen=True)
class Figure:
    key: str
    svg: str
    caption: str


def _variants(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return figures._variants(results)


def _fpr_text(f: float) -> str:
    return f"{f:.1%}".replace(".0%", "%")


def accuracy_caption(results: dict[str, Any]) -> str:
    series = figures._per_round(results, "accuracy")
    finals = {n: ys[-1] for n, (_, ys) in series.items()}
    rounds = max(int(xs[-1]) for xs, _ in series.values())
    lo, hi = min(finals, key=finals.get), max(finals, key=finals.get)
    text = f"Test accuracy after each of {rounds} rounds, {len(series)} variant(s)"
    if lo != hi:
        text += f"; final accuracy from {finals[lo]:.3f} ({lo}) to {finals[hi]:.3f} ({hi})"
    else:
        text += f"; final accuracy {finals[hi]:.3f}"
    diverged = [n for n, v in _variants(results).items() if v.get("status") == "diverged"]
    if diverged:
        text += f"; diverged: {', '.join(diverged)}"
    return text + "."


def roc_caption(results: dict[str, Any], ids: list[str], overlay: bool) -> str:
    best: tuple[float, str, str] | None = None
    for name, v in _variants(results).items():
        for aid in ids:
            auc = grading.number(_d(_d(_d(v.get("attacks")).get(aid)).get("metrics")).get("auc"))
            if auc is not None and (best is None or abs(auc - 0.5) > abs(best[0] - 0.5)):
                best = (auc, name, aid)
    _, n_min = figures.roc_floor(results, ids)
    if overlay:
        styles = ", ".join(
            f"{aid} {_STYLE_WORDS[plots.LINESTYLES[k % len(plots.LINESTYLES)]]}"
            for k, aid in enumerate(ids)
        )
        text = f"{len(ids)} membership attacks overlaid: colour = variant, line = attack ({styles})"
    else:
        text = f"ROC of {ids[0]} per variant"
    text += "; log-log axes so the low-FPR regime shows; dashed grey: chance"
    if best is not None:
        where = best[1] if not overlay else f"{best[1]} / {best[2]}"
        text += f"; AUC farthest from chance: {best[0]:.3f} ({where})"
    if n_min:
        text += (
            f". Shaded: FPR below 1/{n_min} = {1 / n_min:.2g}, which {n_min} non-members cannot "
            "resolve; zeros are drawn at the axis minimum"
        )
    return text + "."


def epsilon_caption(results: dict[str, Any]) -> str:
    series = figures._per_round(results, "epsilon")
    finals = {n: ys[-1] for n, (_, ys) in series.items()}
    acct = sorted(
        {
            str(_d(v.get("privacy")).get("accountant"))
            for n, v in _variants(results).items()
            if n in series and _d(v.get("privacy")).get("accountant")
        }
    )
    parts = ", ".join(f"{n} {e:.2f}" for n, e in finals.items())
    return (
        f"Epsilon spent after each round (accountant: {', '.join(acct) or 'unknown'}); "
        f"final ε: {parts}."
    )


def tradeoff_caption(results: dict[str, Any]) -> str:
    what, points = figures.leakage_points(results)
    front = figures.pareto_front(points)
    return (
        f"{what} against final test accuracy, one point per variant ({len(points)}); lower and "
        f"further right is better. Pareto front (dashed): {', '.join(front)}."
    )


def bars_caption(results: dict[str, Any], key: str, what: str) -> str:
    gaps = []
    for name, v in _variants(results).items():
        d = _d(v.get("utility")).get(key)
        vals = {str(k): f for k, x in _d(d).items() if (f := grading.number(x)) is not None}
        if len(vals) >= 2:
            lo, hi = min(vals, key=vals.get), max(vals, key=vals.get)
            gaps.append((vals[hi] - vals[lo], name, lo, vals[lo], hi, vals[hi]))
    if not gaps:
        return f"Accuracy of the final model per {what}."
    gap, name, lo, lv, hi, hv = max(gaps)
    return (
        f"Accuracy of the final model per {what}; the largest gap is {gap:.3f} in {name} "
        f"({what} {lo}: {lv:.3f}, {what} {hi}: {hv:.3f})."
    )


def core_figures(results: dict[str, Any]) -> list[Figure]:
    """Overlaid and per-attack ROC, accuracy and epsilon per round, trade-off, per-client and
    per-group accuracy: whichever the results hold data for."""
    out: list[Figure] = []
    ids = figures.membership_attacks(results)
    if len(ids) >= 2 and (fig := figures.roc(results)) is not None:
        out.append(Figure("roc", plots.to_svg(fig, "ROC of all membership attacks"),
                          roc_caption(results, ids, overlay=True)))  # fmt: skip
    for aid in ids:
        if (fig := figures.roc(results, aid)) is not None:
            out.append(Figure(f"roc-{aid}", plots.to_svg(fig, f"ROC of {aid}"),
                              roc_caption(results, [aid], overlay=False)))  # fmt: skip
    if (fig := figures.accuracy(results)) is not None:
        out.append(Figure("accuracy", plots.to_svg(fig, "accuracy per round"),
                          accuracy_caption(results)))  # fmt: skip
    if (fig := figures.epsilon(results)) is not None:
        out.append(Figure("epsilon", plots.to_svg(fig, "epsilon per round"),
                          epsilon_caption(results)))  # fmt: skip
    if (fig := figures.tradeoff(results)) is not None:
        out.append(Figure("tradeoff", plots.to_svg(fig, "privacy-utility trade-off"),
                          tradeoff_caption(results)))  # fmt: skip
    for key, what, fn in (
        ("per_client_accuracy", "client", figures.per_client),
        ("per_group_accuracy", "group", figures.per_group),
    ):
        if (fig := fn(results)) is not None:
            out.append(Figure(key, plots.to_svg(fig, f"accuracy per {what}"),
                              bars_caption(results, key, what)))  # fmt: skip
    return out
