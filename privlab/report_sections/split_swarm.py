"""Report sections for split and swarm learning runs.

Split: per variant, each cut-layer attack's headline number (label-leakage AUC, inversion MSE
or PSNR) next to accuracy, with the change against the first variant (the undefended one), so
a reader sees how much each defense lowers leakage and what accuracy it costs.
Swarm: accuracy of every variant (swarm, central baseline, local-only) side by side, and what
the ledger saw (entries, verification, refused commits, paused rounds).
"""

from __future__ import annotations

from html import escape
from typing import Any

from privlab import plots
from privlab.png import PREFIX as PNG_PREFIX
from privlab.report import Section, as_number

SPLIT_FAMILIES = {"label_leakage": "auc", "input_reconstruction": "mse"}


def _fmt(v: Any, digits: int = 3) -> str:
    f = as_number(v)
    return "—" if f is None else f"{f:.{digits}f}"


def _delta(v: Any, ref: Any) -> str:
    a, b = as_number(v), as_number(ref)
    return "" if a is None or b is None else f" ({a - b:+.3f})"


def _table(head: list[str], rows: list[list[str]]) -> str:
    """Stacks on narrow screens (cells labelled); with more than six columns, tiles at any
    width (the report template's table.stack and table.tiles)."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(f'<td data-label="{escape(h)}">{c}</td>' for h, c in zip(head, r, strict=False))
        + "</tr>"
        for r in rows
    )
    kind = "stack tiles" if len(head) > 6 else "stack"
    return f'<table class="{kind}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _variants(results: dict[str, Any]) -> dict[str, Any]:
    v = results.get("variants")
    return v if isinstance(v, dict) else {}


def _topology(results: dict[str, Any]) -> str:
    scenario = results.get("scenario") or {}
    return str((scenario.get("topology") or {}).get("name") or "")


def _image_svg(image: Any, size: int = 96) -> str:
    """A PNG data URI (privlab.png) as an <img>; or a (C, H, W) or (H, W) image in [0, 1] as
    given by older results.json files, as an inline SVG of grey squares."""
    if isinstance(image, str):
        if not image.startswith(PNG_PREFIX):
            return ""
        return (
            f'<img src="{escape(image)}" width="{size}" height="{size}" alt="" '
            'style="image-rendering:pixelated">'
        )
    grid = (
        image[0] if isinstance(image, list) and image and isinstance(image[0][0], list) else image
    )
    if not isinstance(grid, list) or not grid or not isinstance(grid[0], list):
        return ""
    h, w = len(grid), len(grid[0])
    cell = size / max(h, w)
    rects = []
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            f = as_number(v)
            g = 0 if f is None else round(255 * min(max(f, 0.0), 1.0))
            rects.append(
                f'<rect x="{j * cell:.2f}" y="{i * cell:.2f}" width="{cell:.2f}" '
                f'height="{cell:.2f}" fill="rgb({g},{g},{g})"/>'
            )
    return (
        f'<svg width="{size}" height="{size}" viewBox="0 0 {size} {size}" role="img">'
        + "".join(rects)
        + "</svg>"
    )


def reconstruction_gallery(results: dict[str, Any]) -> str:
    """True inputs above their reconstructions, per variant and image-reconstruction attack."""
    out = []
    for name, v in _variants(results).items():
        for aid, a in (v.get("attacks") or {}).items():
            examples = ((a or {}).get("artifacts") or {}).get("examples")
            if not isinstance(examples, dict):
                continue
            true = "".join(_image_svg(x) for x in examples.get("true") or [])
            rec = "".join(_image_svg(x) for x in examples.get("reconstructed") or [])
            if true and rec:
                out.append(
                    f"<p><strong>{escape(name)} · {escape(aid)}</strong> "
                    f"(top: true inputs, bottom: reconstructions)</p><div>{true}</div>"
                    f"<div>{rec}</div>"
                )
    return "".join(out)


def split_section(results: dict[str, Any]) -> Section | None:
    variants = _variants(results)
    columns: list[tuple[str, str]] = []
    for v in variants.values():
        for aid, a in (v.get("attacks") or {}).items():
            metric = SPLIT_FAMILIES.get(str(a.get("family")))
            if metric == "auc" and "auc" not in (a.get("metrics") or {}):
                metric = "accuracy"  # multi-class label inference: accuracy, not a leak AUC
            if metric and (aid, metric) not in columns:
                columns.append((aid, metric))
                if metric == "mse" and "psnr" in (a.get("metrics") or {}):
                    columns.append((aid, "psnr"))
    if not columns:
        return None
    names = list(variants)
    ref = variants[names[0]]

    def metric(v: dict[str, Any], aid: str, key: str) -> Any:
        return ((v.get("attacks") or {}).get(aid) or {}).get("metrics", {}).get(key)

    rows = []
    series: dict[str, tuple[list[float], list[float]]] = {}
    for name in names:
        v = variants[name]
        acc = (v.get("utility") or {}).get("final_accuracy")
        ref_acc = (ref.get("utility") or {}).get("final_accuracy")
        row = [escape(name), _fmt(acc) + (_delta(acc, ref_acc) if name != names[0] else "")]
        for aid, key in columns:
            val, base = metric(v, aid, key), metric(ref, aid, key)
            cell = _fmt(val) + (_delta(val, base) if name != names[0] else "")
            prior = metric(v, aid, f"{key}_baseline")
            if as_number(prior) is not None:  # the know-nothing score beside the attack's
                cell += f' <span class="small">(baseline {_fmt(prior)})</span>'
            row.append(cell)
            if (a := as_number(acc)) is not None and (m := as_number(val)) is not None:
                xs, ys = series.setdefault(f"{aid} {key}", ([], []))
                xs.append(a)
                ys.append(m)
        rows.append(row)
    head = ["variant", "accuracy"] + [f"{aid} {key}" for aid, key in columns]
    html = _table(head, rows)
    auc_series = {k: s for k, s in series.items() if k.endswith(" auc")}
    if auc_series:
        html += plots.scatter_plot(
            auc_series,
            title="Label leakage against accuracy",
            x_label="test accuracy",
            y_label="leak AUC (minority class)",
            point_labels={
                k: [
                    n
                    for n in names
                    if as_number(metric(variants[n], k.split()[0], "auc")) is not None
                ]
                for k in auc_series
            },
        )
    html += reconstruction_gallery(results)
    return Section(
        "Split learning: leakage at the cut layer",
        html,
        caption=(
            f"Changes in brackets are against '{escape(names[0])}'. Leak AUC: how well the "
            "attack ranks the minority class first (0.5 = chance). MSE: inversion error on "
            "the true inputs (lower = more leakage). Baselines: AUC of chance, and the score "
            "of the population mean record as the reconstruction."
        ),
        order=60,
    )


def swarm_section(results: dict[str, Any]) -> Section | None:
    variants = _variants(results)
    if not any(isinstance(v.get("topology"), dict) for v in variants.values()):
        return None
    rows = []
    for name, v in variants.items():
        topo = v.get("topology") if isinstance(v.get("topology"), dict) else {}
        ledger = topo.get("ledger") or {}
        kind = "local-only" if topo.get("local_only") else ("swarm" if topo else "baseline")
        rows.append(
            [
                escape(name),
                escape(kind),
                _fmt((v.get("utility") or {}).get("final_accuracy")),
                str(ledger.get("entries", "—")),
                escape(str(ledger.get("message", "—"))),
                str(ledger.get("rejected_commits", "—")),
                str(topo.get("paused_rounds", "—")),
                str(topo.get("refused_merges", "—")),
            ]
        )
    head = [
        "variant",
        "training",
        "accuracy",
        "ledger entries",
        "verification",
        "refused commits",
        "paused rounds",
        "refused merges",
    ]
    return Section(
        "Swarm learning: accuracy and the ledger",
        _table(head, rows) + _comparison(variants),
        caption=(
            "Local-only accuracy is the mean over peers of each peer's own model on the global "
            "test set; a central variant pools all data on one server. A round whose leader "
            "refused to merge (the ledger failed verification) counts 0 participants."
        ),
        order=61,
    )


def _comparison(variants: dict[str, Any]) -> str:
    """One sentence: the swarm against the central baseline and against local-only training."""
    acc: dict[str, tuple[str, float]] = {}
    for name, v in variants.items():
        topo = v.get("topology") if isinstance(v.get("topology"), dict) else None
        kind = "baseline" if topo is None else ("local" if topo.get("local_only") else "swarm")
        a = as_number((v.get("utility") or {}).get("final_accuracy"))
        if a is not None and kind not in acc:
            acc[kind] = (name, a)
    if "swarm" not in acc:
        return ""
    name, a = acc["swarm"]
    parts = [f"Swarm ('{escape(name)}') accuracy {a:.3f}"]
    if "baseline" in acc:
        bn, b = acc["baseline"]
        parts.append(f"{a - b:+.3f} against the central baseline '{escape(bn)}' ({b:.3f})")
    if "local" in acc:
        ln, b = acc["local"]
        parts.append(f"{a - b:+.3f} against local-only training '{escape(ln)}' ({b:.3f})")
        alone = (variants[ln].get("topology") or {}).get("per_peer_accuracy") or {}
        scored = [(as_number(x), k) for k, x in alone.items() if as_number(x) is not None]
        if scored:
            top, peer = max(scored)
            parts.append(f"{a - top:+.3f} against the best peer alone (peer{peer}, {top:.3f})")
    return "<p>" + "; ".join(parts) + ".</p>"


def sections(results: dict[str, Any]) -> list[Section]:
    out = []
    if _topology(results) == "split" and (s := split_section(results)):
        out.append(s)
    if _topology(results) == "swarm" and (s := swarm_section(results)):
        out.append(s)
    return out
