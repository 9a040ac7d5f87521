"""Figures of a results.json, for the report, the CLI's ``privlab plot`` and notebooks.

Each function takes the results (as ``privlab.results.read_results`` returns them) and an
optional matplotlib ``ax``, draws on it (or on a new figure) and returns the Figure, or None
when the results hold nothing to draw. A variant has the same colour in every figure of a run::

    from privlab import figures
    fig = figures.roc(results)          # all membership attacks, log-log
    fig.savefig("roc.pdf")

The ROC is drawn on log-log axes as Carlini et al. (2022) recommend, so the low-FPR regime where
membership inference matters is visible; FPRs below 1/n_nonmembers cannot be measured and are
shaded. The trade-off plot marks the Pareto front: the variants no other variant beats on both
accuracy and leakage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from privlab import grading, plots

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LEAK_FAMILIES = ("membership", "reconstruction", "backdoor", "label_leakage")


def _variants(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    v = results.get("variants")
    return {str(k): x for k, x in v.items() if isinstance(x, dict)} if isinstance(v, dict) else {}


def _d(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _l(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _num(v: Any) -> float | None:
    return grading.number(v)


def membership_attacks(results: Mapping[str, Any]) -> list[str]:
    """Attack ids with a ROC curve in at least one variant, in order of appearance."""
    out: list[str] = []
    for v in _variants(results).values():
        for aid, a in _d(v.get("attacks")).items():
            if isinstance(_d(_d(a).get("artifacts")).get("roc"), dict):
                out.append(str(aid))
    return list(dict.fromkeys(out))


def _roc(entry: Any) -> tuple[list[float], list[float]] | None:
    roc = _d(_d(entry).get("artifacts")).get("roc") if isinstance(entry, dict) else None
    if not isinstance(roc, dict):
        return None
    fpr, tpr = roc.get("fpr"), roc.get("tpr")
    if not isinstance(fpr, list) or not isinstance(tpr, list) or not fpr:
        return None
    return fpr, tpr


def roc_floor(results: Mapping[str, Any], attack_ids: list[str]) -> tuple[float, int | None]:
    """Axis minimum 1/(2 n) for the largest n_nonmembers (the first FPR step is 1/n, zeros sit
    just below it), and the smallest n (whose 1/n is the coarsest resolution shown)."""
    ns = []
    for v in _variants(results).values():
        for aid in attack_ids:
            n = _num(_d(_d(_d(v.get("attacks")).get(aid)).get("metrics")).get("n_nonmembers"))
            if n and n > 0:
                ns.append(int(n))
    return (1 / (2 * max(ns)), min(ns)) if ns else (1e-3, None)


def roc(
    results: Mapping[str, Any], attack_id: str | None = None, *, ax: Axes | None = None
) -> Figure | None:
    """ROC on log-log axes: one attack across variants, or (no `attack_id`) every membership
    attack overlaid, colour by variant and line style by attack."""
    ids = [attack_id] if attack_id else membership_attacks(results)
    colours = plots.variant_colours(results)
    series: dict[str, tuple[list[float], list[float]]] = {}
    styles: dict[str, str] = {}
    line_colours: dict[str, str] = {}
    for name, v in _variants(results).items():
        for k, aid in enumerate(ids):
            entry = _d(v.get("attacks")).get(aid)
            curve = _roc(entry)
            if curve is None:
                continue
            auc = _num(_d(_d(entry).get("metrics")).get("auc"))
            label = name if attack_id else f"{name} / {aid}"
            label += f" (AUC {auc:.3f})" if auc is not None else ""
            series[label] = curve
            styles[label] = plots.LINESTYLES[k % len(plots.LINESTYLES)]
            line_colours[label] = colours.get(name, plots.PALETTE[0])
    if not series:
        return None
    lo, n_min = roc_floor(results, ids)
    if attack_id:
        entry = next(
            (
                e
                for v in _variants(results).values()
                if isinstance(e := _d(v.get("attacks")).get(attack_id), dict)
            ),
            {},
        )
        name = str(entry.get("name") or "")
        title = f"ROC (log-log): {attack_id}" + (f" ({name})" if name and name != attack_id else "")
    else:
        title = f"ROC (log-log): all {len(ids)} membership attack" + ("s" if len(ids) > 1 else "")
    fig = plots.draw(
        ax,
        series,
        title=title,
        x_label="false positive rate",
        y_label="true positive rate",
        x_log=True,
        y_log=True,
        x_range=(lo, 1.0),
        y_range=(lo, 1.0),
        diagonal=True,
        markers=False,
        colours=line_colours,
        linestyles=styles,
    )
    if n_min and 1 / n_min > lo:
        axes = fig.axes[0] if ax is None else ax
        axes.axvspan(lo, 1 / n_min, color="#eeeeee", zorder=0, linewidth=0)
    return fig


def _per_round(results: Mapping[str, Any], key: str) -> dict[str, tuple[list[float], list[float]]]:
    series = {}
    for name, v in _variants(results).items():
        rounds = _l(_d(v.get("utility")).get("per_round"))
        pts = [(_num(r.get("round")), _num(r.get(key))) for r in rounds if isinstance(r, dict)]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if pts:
            series[name] = ([x for x, _ in pts], [y for _, y in pts])
    return series


def accuracy(results: Mapping[str, Any], *, ax: Axes | None = None) -> Figure | None:
    """Test accuracy after each round, one line per variant."""
    series = _per_round(results, "accuracy")
    if not series:
        return None
    return plots.draw(
        ax, series, title="Test accuracy per round", x_label="round", y_label="test accuracy",
        colours=plots.variant_colours(results),
    )  # fmt: skip


def epsilon(results: Mapping[str, Any], *, ax: Axes | None = None) -> Figure | None:
    """Epsilon spent after each round (the accountant's ledger), one line per DP variant."""
    series = _per_round(results, "epsilon")
    if not series:
        return None
    return plots.draw(
        ax, series, title="Epsilon spent per round", x_label="round", y_label="epsilon",
        colours=plots.variant_colours(results),
    )  # fmt: skip


def leakage_points(results: Mapping[str, Any]) -> tuple[str, dict[str, tuple[float, float]]]:
    """(what is graded, variant -> (accuracy, leakage)) for the first graded attack family that
    most variants report: the numbers the trade-off plot shows."""
    overrides = grading.overrides_of(results)
    by_attack: dict[str, dict[str, tuple[float, float]]] = {}
    what: dict[str, str] = {}
    for name, v in _variants(results).items():
        acc = _num(_d(v.get("utility")).get("final_accuracy"))
        if acc is None or v.get("status") == "diverged":
            continue
        for aid, a in _d(v.get("attacks")).items():
            a = a if isinstance(a, dict) else {}
            g = grading.grade(str(a.get("family") or ""), _d(a.get("metrics")), overrides)
            if g.value is None:
                continue
            by_attack.setdefault(str(aid), {})[name] = (acc, g.value)
            unit = grading.UNITS[g.family].strip()
            what[str(aid)] = f"{aid}: {grading.WHAT[g.family]}" + (f" ({unit})" if unit else "")
    if not by_attack:
        return "", {}
    best = max(by_attack, key=lambda k: len(by_attack[k]))
    return what[best], by_attack[best]


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names of the points no other point dominates (accuracy at least as high and leakage at
    least as low, one of them strictly), sorted by accuracy."""
    front = []
    for name, (acc, leak) in points.items():
        dominated = any(
            a >= acc and lk <= leak and (a > acc or lk < leak)
            for other, (a, lk) in points.items()
            if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


def tradeoff(results: Mapping[str, Any], *, ax: Axes | None = None) -> Figure | None:
    """Leakage against accuracy, one point per variant, with the Pareto front drawn through the
    undominated variants (for sweeps and for any run with two or more variants)."""
    what, points = leakage_points(results)
    if len(points) < 2:
        return None
    colours = plots.variant_colours(results)
    series = {name: ([acc], [leak]) for name, (acc, leak) in points.items()}
    fig = plots.draw(
        ax, series, kind="scatter", title="Privacy-utility trade-off",
        x_label="final test accuracy", y_label=plots.short(what), colours=colours,
        marker_map=plots.variant_markers(results),
    )  # fmt: skip
    front = pareto_front(points)
    axes = fig.axes[0] if ax is None else ax
    if len(front) >= 2:
        xs = [points[n][0] for n in front]
        ys = [points[n][1] for n in front]
        axes.step(xs, ys, where="post", color="#555555", linewidth=1.2, linestyle="--", zorder=1)
    return fig


def _bars(
    ax: Axes | None, results: Mapping[str, Any], key: str, title: str, x_label: str
) -> Figure | None:
    table = {
        name: {str(k): f for k, x in d.items() if (f := _num(x)) is not None}
        for name, v in _variants(results).items()
        if isinstance(d := _d(v.get("utility")).get(key), dict) and d
    }
    table = {k: d for k, d in table.items() if d}
    if not table:
        return None
    cats = list(dict.fromkeys(c for d in table.values() for c in d))
    cats.sort(key=lambda c: (0, int(c), "") if c.isdigit() else (1, 0, c))
    owns = ax is None
    colours = plots.variant_colours(results)
    height = max(plots.HEIGHT_IN, 0.9 + 0.16 * len(cats) * len(table))
    with plots.rc():
        ax = plots.new_axes(ax, height=min(height, 12.0))
        width = 0.8 / len(table)
        for i, (name, d) in enumerate(table.items()):
            ys = [k - 0.4 + width * (i + 0.5) for k in range(len(cats))]
            vals = [d.get(c, math.nan) for c in cats]
            ax.barh(ys, vals, height=width * 0.9, color=plots.colour_for(name, i, colours),
                    label=plots.short(name))  # fmt: skip
        ax.set_yticks(range(len(cats)), [plots.short(c) for c in cats])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("test accuracy")
        ax.set_ylabel(x_label)
        ax.set_title(title)
        ax.grid(True, axis="x")
        ax.grid(False, axis="y")
        plots.legend_below(ax, owns)
        return ax.figure


def per_client(results: Mapping[str, Any], *, ax: Axes | None = None) -> Figure | None:
    """Accuracy of the final model on each client's data (``utility.per_client_accuracy``)."""
    return _bars(ax, results, "per_client_accuracy", "Accuracy per client", "client")


def per_group(results: Mapping[str, Any], *, ax: Axes | None = None) -> Figure | None:
    """Accuracy on each group of the data (``utility.per_group_accuracy``)."""
    return _bars(ax, results, "per_group_accuracy", "Accuracy per group", "group")


KINDS: dict[str, Callable[..., Figure | None]] = {
    "roc": roc,
    "accuracy": accuracy,
    "epsilon": epsilon,
    "tradeoff": tradeoff,
    "per-client": per_client,
    "per-group": per_group,
}
"""What ``privlab plot --kind`` can draw."""
