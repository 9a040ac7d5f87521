"""Report sections for membership inference and differential privacy.

The epsilon ledger (epsilon spent after each round, per variant), the claimed epsilon beside the
audit's empirical lower bound, and what privacy cost in accuracy next to the strongest
membership attack's AUC. The ROC curves on log-log axes are drawn by the core report. Everything
is read from results.json.
"""

from __future__ import annotations

from html import escape
from typing import Any

from privlab.report import Section, as_dict, as_number


def _fmt(v: Any, digits: int = 3) -> str:
    n = as_number(v)
    return "—" if n is None else f"{n:.{digits}f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _claim(privacy: Any) -> str:
    p = as_dict(privacy)
    eps = as_number(p.get("epsilon"))
    if eps is None:
        return "none (no DP)"
    level = "client-level" if p.get("level") == "client" else "record-level"
    approx = " (approximate)" if p.get("approximate") else ""
    delta = as_number(p.get("delta"))
    return escape(
        f"ε = {eps:.3f}, δ = {delta:.0e} ({p.get('accountant', '?')}{approx}; {level})"
        if delta is not None
        else f"ε = {eps:.3f}{approx}"
    )


def ledger_section(variants: dict[str, Any]) -> Section | None:
    series = {}
    for name, v in variants.items():
        rounds = [as_dict(r) for r in as_dict(v.get("utility")).get("per_round") or []]
        pts = [(r.get("round"), as_number(r.get("epsilon"))) for r in rounds]
        pts = [(x, e) for x, e in pts if e is not None and as_number(x) is not None]
        if pts:
            series[name] = ([float(x) for x, _ in pts], [e for _, e in pts])
    if not series:
        return None
    rows = []
    for name, (xs, ys) in series.items():
        p = as_dict(variants[name].get("privacy"))
        budget = as_number(p.get("budget_epsilon"))
        status = "—"
        if budget is not None:
            status = f"budget {budget:g}: " + (
                f"stopped at round {p['stopped_at_round']}"
                if "stopped_at_round" in p
                else ("exceeded (warned)" if p.get("budget_exceeded") else "kept")
            )
        rows.append([escape(name), f"{int(xs[-1])}", _fmt(ys[-1]), _claim(p), escape(status)])
    table = _table(["variant", "rounds", "final ε", "claim", "budget"], rows)
    return Section(
        "Epsilon ledger",
        table,
        caption="Epsilon accounted after each round by the variant's accountant (Opacus); the "
        "figure 'Epsilon spent per round' above draws it.",
        order=40,
    )


def audit_section(variants: dict[str, Any]) -> Section | None:
    rows = []
    method = ""
    for name, v in variants.items():
        for attack_id, a in as_dict(v.get("attacks")).items():
            a = as_dict(a)
            if a.get("family") != "audit":
                continue
            m = as_dict(a.get("metrics"))
            method = str(as_dict(a.get("artifacts")).get("method") or method)
            claimed = as_number(as_dict(v.get("privacy")).get("epsilon"))
            lb = as_number(m.get("epsilon_lower_bound"))
            if claimed is None:
                verdict = "no claim: the bound measures the undefended leakage"
            elif lb is not None and lb > claimed:
                verdict = "<strong>lower bound exceeds the claim: the DP claim is violated</strong>"
            else:
                verdict = "consistent (bound ≤ claim)"
            rows.append(
                [
                    escape(name),
                    escape(attack_id),
                    _claim(v.get("privacy")),
                    _fmt(lb),
                    escape(
                        f"δ = {_fmt(m.get('delta'), 6)}, {int(m.get('n_canaries_in', 0))} in / "
                        f"{int(m.get('n_canaries_out', 0))} out, confidence "
                        f"{1 - (as_number(m.get('alpha')) or 0.05):.0%}"
                    ),
                    verdict if "<strong>" in verdict else escape(verdict),
                ]
            )
    if not rows:
        return None
    table = _table(
        ["variant", "audit", "claimed ε", "empirical lower bound", "canaries", "verdict"], rows
    )
    return Section(
        "Claimed vs audited epsilon",
        table,
        caption=f"Method: {method}. The bound holds with the stated confidence.",
        order=41,
    )


def _with_ci(metrics: dict[str, Any], key: str) -> str:
    """'0.594 [0.566, 0.622]': the value and its 95% interval when results carry one."""
    value = _fmt(metrics.get(key))
    ci = metrics.get(f"{key}_ci")
    if isinstance(ci, list) and len(ci) == 2:
        value += f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    if metrics.get(f"{key}_below_resolution") is True:
        value += " (below resolution)"
    return value


def cost_section(variants: dict[str, Any]) -> Section | None:
    base_name, base_acc = None, None
    for name, v in variants.items():
        if not v.get("defenses"):
            base_name, base_acc = name, as_number(as_dict(v.get("utility")).get("final_accuracy"))
            break
    rows = []
    for name, v in variants.items():
        acc = as_number(as_dict(v.get("utility")).get("final_accuracy"))
        best, best_id, best_m = None, "", {}
        for attack_id, a in as_dict(v.get("attacks")).items():
            a = as_dict(a)
            if a.get("family") != "membership":
                continue
            auc = as_number(as_dict(a.get("metrics")).get("auc"))
            if auc is not None and (best is None or abs(auc - 0.5) > abs(best - 0.5)):
                best, best_id, best_m = auc, attack_id, as_dict(a.get("metrics"))
        if best is None:
            continue
        cost = "—" if base_acc is None or acc is None else f"{base_acc - acc:+.3f}"
        rows.append(
            [
                escape(name),
                _fmt(acc),
                escape(cost),
                _claim(v.get("privacy")),
                escape(f"{_with_ci(best_m, 'auc')} ({best_id})"),
                _fmt(abs(best - 0.5)),
                escape(_with_ci(best_m, "tpr_at_1pct_fpr")),
                escape({True: "yes", False: "no"}.get(best_m.get("leak_detected"), "—")),
            ]
        )
    if not rows:
        return None
    against = f"'{base_name}'" if base_name else "an undefended variant (none in this run)"
    table = _table(
        [
            "variant",
            "accuracy",
            "accuracy cost",
            "claimed ε",
            "strongest membership attack (AUC, 95% CI)",
            "|AUC − 0.5|",
            "its TPR at 1% FPR (chance 0.01)",
            "leak detected (CI excludes chance)",
        ],
        rows,
    )
    return Section(
        "What privacy cost",
        table,
        caption=f"Accuracy cost is measured against {against}; the strongest attack is the "
        "membership attack whose AUC is farthest from chance.",
        order=42,
    )


def notes_section(variants: dict[str, Any]) -> Section | None:
    """What a membership attack could not do (e.g. a server that saw only ciphertexts)."""
    items = []
    for name, v in variants.items():
        for attack_id, a in as_dict(v.get("attacks")).items():
            a = as_dict(a)
            note = as_dict(a.get("artifacts")).get("note")
            if a.get("family") == "membership" and isinstance(note, str):
                items.append(f"<li><strong>{escape(name)} / {escape(attack_id)}</strong>: "
                             f"{escape(note)}</li>")  # fmt: skip
    if not items:
        return None
    return Section("Membership attacks without a target", f"<ul>{''.join(items)}</ul>", order=43)


def sections(results: dict[str, Any]) -> list[Section]:
    variants = as_dict(results.get("variants"))
    found = [
        ledger_section(variants),
        audit_section(variants),
        cost_section(variants),
        notes_section(variants),
    ]
    return [s for s in found if s is not None]
