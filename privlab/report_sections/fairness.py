"""Report section: who is served worse (accuracy per group and per client, and the gaps).

Per variant: accuracy of each group with its 95% interval and its class-prior baseline, the
best-minus-worst gap with its bootstrap interval, and the change of each group's accuracy
against the first variant (the undefended one), so a reader sees which defense costs whom
(Bagdasaryan et al. 2019: DP-SGD costs the under-represented group most). Then the per-client
accuracy gap. Shown only when a run has groups or more than one client.
"""

from __future__ import annotations

from html import escape
from typing import Any

from privlab.report import Section, as_number


def _fmt(v: Any) -> str:
    f = as_number(v)
    return "—" if f is None else f"{f:.3f}"


def _ci(v: Any) -> str:
    if isinstance(v, list | tuple) and len(v) == 2:
        return f" [{_fmt(v[0])}, {_fmt(v[1])}]"
    return ""


def _delta(v: Any, ref: Any) -> str:
    a, b = as_number(v), as_number(ref)
    return "" if a is None or b is None else f" ({a - b:+.3f})"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def group_table(variants: dict[str, Any]) -> str:
    """One row per group and one column per variant: a data set may have many groups (40
    machines, 1,000 users), a run has few variants, so the table grows down, never wide."""
    utilities = {n: (v.get("utility") or {}) for n, v in variants.items()}
    groups = sorted({g for u in utilities.values() for g in (u.get("per_group_accuracy") or {})})
    if not groups:
        return ""
    first = next(iter(utilities.values()))
    ref = first.get("per_group_accuracy") or {}
    n = first.get("per_group_n") or {}
    base = first.get("per_group_accuracy_baseline") or {}
    rows = []
    for g in groups:
        cells = [escape(f"{g} (n={n.get(g, '?')}, prior {_fmt(base.get(g))})")]
        for u in utilities.values():
            acc, ci = u.get("per_group_accuracy") or {}, u.get("per_group_accuracy_ci") or {}
            change = _delta(acc.get(g), ref.get(g)) if u is not first else ""
            cells.append(f"{_fmt(acc.get(g))}{_ci(ci.get(g))}{change}")
        rows.append(cells)
    rows.append(
        ["gap (best - worst)"]
        + [
            f"{_fmt(u.get('group_accuracy_gap'))}{_ci(u.get('group_accuracy_gap_ci'))}"
            for u in utilities.values()
        ]
    )
    return _table(["group", *utilities], rows)


def client_table(variants: dict[str, Any]) -> str:
    rows = []
    for name, v in variants.items():
        u = v.get("utility") or {}
        per = u.get("per_client_accuracy") or {}
        if len(per) < 2:
            continue
        worst = min(per, key=lambda k: per[k])
        best = max(per, key=lambda k: per[k])
        rows.append(
            [
                escape(name),
                f"{_fmt(per[worst])} (client {escape(worst)})",
                f"{_fmt(per[best])} (client {escape(best)})",
                f"{_fmt(u.get('client_accuracy_gap'))}{_ci(u.get('client_accuracy_gap_ci'))}",
            ]
        )
    if not rows:
        return ""
    return _table(["variant", "worst client", "best client", "gap"], rows)


def sections(results: dict[str, Any]) -> list[Section]:
    variants = results.get("variants")
    if not isinstance(variants, dict) or not variants:
        return []
    out = []
    groups = group_table(variants)
    if groups:
        out.append(
            Section(
                "Fairness: accuracy per group",
                groups,
                "Test accuracy of each group with its Clopper-Pearson 95% interval and, after "
                "the first variant, the change against it; each row gives the group's size "
                "and its class-prior baseline. The gap's interval is a bootstrap over records.",
                order=60,
            )
        )
    clients = client_table(variants)
    if clients:
        out.append(
            Section(
                "Fairness: accuracy per client",
                clients,
                "Each client's held-out records (never trained on) scored by the released model.",
                order=61,
            )
        )
    return out
