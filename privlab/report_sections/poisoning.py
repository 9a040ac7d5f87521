"""Report section for poisoning: which aggregator survives which attack, at which fraction of
malicious clients, at what cost in clean accuracy (and the secure-aggregation trade-off)."""

from __future__ import annotations

from html import escape
from typing import Any

from privlab import plots
from privlab.report import Section, fmt_fixed, fmt_sig

TARGETED = (
    ("backdoor_success", "backdoor success"),
    ("targeted_misclassification", "targeted misclassification"),
)

TRADE_OFF = (
    "Secure aggregation and robust aggregation collide: under secure aggregation the server "
    "sees only ciphertexts and the sum, so it cannot rank, trim or reject single updates, and "
    "privlab refuses a scenario that asks for both. What can move to the clients is norm "
    "clipping before encryption (<code>update_clipping</code>); but a malicious client controls "
    "its device and skips it, so only the honest clients are bounded: it limits accidental "
    "outliers, not a boosted (model-replacement) update. Choose between hiding single updates "
    "from the server and letting the server inspect them."
)


def _aggregator(variant: dict[str, Any]) -> str:
    names = [d.get("name", "?") for d in variant.get("defenses") or [] if isinstance(d, dict)]
    agg = [
        d.get("name", "?")
        for d in variant.get("defenses") or []
        if isinstance(d, dict) and d.get("placement") in ("aggregation", "transport")
    ]
    label = agg[0] if agg else "mean (FedAvg)"
    others = [n for n in names if n not in agg]
    return label + "".join(f" + {n}" for n in others)


def _poisoning(variant: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    for entry in (variant.get("attacks") or {}).values():
        if isinstance(entry, dict) and entry.get("family") == "poisoning":
            return str(entry.get("name", "?")), entry.get("metrics") or {}
    return None


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, v in (results.get("variants") or {}).items():
        if not isinstance(v, dict) or (found := _poisoning(v)) is None:
            continue
        attack, metrics = found
        robust = v.get("robustness") or {}
        rows.append(
            {
                "variant": str(name),
                "aggregator": _aggregator(v),
                "attack": attack,
                "fraction": metrics.get("malicious_fraction"),
                "accuracy": (v.get("utility") or {}).get("final_accuracy"),
                **{k: metrics.get(k) for k, _ in TARGETED},
                "precision": robust.get("detection_precision"),
                "recall": robust.get("detection_recall"),
            }
        )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    shown = [(k, label) for k, label in TARGETED if any(r[k] is not None for r in rows)]
    detect = any(r["precision"] is not None or r["recall"] is not None for r in rows)
    head = ["variant", "aggregator", "attack", "malicious", "clean accuracy"]
    head += [label for _, label in shown]
    if detect:
        head += ["detection precision", "detection recall"]
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for r in rows:
        cells = [
            escape(r["variant"]),
            escape(r["aggregator"]),
            escape(r["attack"]),
            fmt_sig(r["fraction"], 2),
            fmt_fixed(r["accuracy"], 3),
        ]
        cells += [fmt_fixed(r[k], 3) for k, _ in shown]
        if detect:
            cells += [fmt_fixed(r["precision"], 3), fmt_fixed(r["recall"], 3)]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _sweep(rows: list[dict[str, Any]], key: str, label: str) -> str:
    """One line per aggregator or base variant (and attack): the metric against the malicious
    fraction."""
    attacks = {r["attack"] for r in rows}
    series: dict[str, dict[float, float]] = {}
    for r in rows:
        if r["fraction"] is None or r[key] is None:
            continue
        # Sweep variants are named "<base variant>|<param>=<value>": one line per base variant.
        base = r["variant"].split("|")[0] if "|" in r["variant"] else r["aggregator"]
        name = base if len(attacks) == 1 else f"{base} / {r['attack']}"
        series.setdefault(name, {})[float(r["fraction"])] = float(r[key])
    series = {k: v for k, v in series.items() if len(v) >= 2}
    if not series:
        return ""
    data = {k: (sorted(v), [v[x] for x in sorted(v)]) for k, v in series.items()}
    return plots.line_plot(
        data,
        title=f"{label} against the malicious fraction",
        x_label="fraction of malicious clients",
        y_label=label,
        y_range=(0.0, 1.0),
        markers=True,
    )


def sections(results: dict[str, Any]) -> list[Section]:
    rows = _rows(results)
    if not rows:
        return []
    out = [
        Section(
            "Poisoning: robustness by aggregator",
            _table(rows),
            "Clean accuracy on the held-out test set; backdoor success is the share of "
            "triggered test inputs of other classes classified as the target; detection "
            "precision and recall grade the clients a selecting aggregator rejected against the "
            "clients the attack controlled, pooled over client-rounds (computed by the referee).",
            order=40,
        )
    ]
    figures = [_sweep(rows, "accuracy", "clean accuracy")]
    figures += [_sweep(rows, k, label) for k, label in TARGETED]
    figures = [f for f in figures if f]
    if figures:
        out.append(
            Section(
                "Poisoning: sweep over the malicious fraction",
                "".join(figures),
                "One line per aggregator; each point is one variant of this run.",
                order=41,
            )
        )
    out.append(Section("Poisoning: secure vs robust aggregation", f"<p>{TRADE_OFF}</p>", order=42))
    return out
