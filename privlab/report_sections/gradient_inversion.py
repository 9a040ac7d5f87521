"""Report sections for gradient inversion and secure aggregation.

Originals beside reconstructions (inline SVG pixels, no external files), reconstruction PSNR
against test accuracy across variants (the privacy-utility trade-off of pruning, noise and
encryption), what each attack could read (single updates or only the aggregate), and the cost
of CKKS secure aggregation per round. Everything is read from results.json.
"""

from __future__ import annotations

from html import escape
from typing import Any

from privlab import plots
from privlab.report import Section, as_dict, as_number

FAMILY = "gradient_inversion"
PIXEL = 6
SOURCE_TEXT = {  # what the attack read, for the tables
    "client_update": "a client's update",
    "decrypted_update": "a client's update, decrypted with the colluding client's key",
    "aggregate": "only the aggregate",
}


def image_svg(values: list[float], shape: list[int], lo: float, hi: float) -> str:
    """One grey-scale image as SVG rects (first channel of a (C, H, W) record)."""
    h, w = (shape[-2], shape[-1]) if len(shape) >= 2 else (1, len(values))
    span = (hi - lo) or 1.0
    rects = []
    for i in range(h):
        for j in range(w):
            v = values[i * w + j] if i * w + j < len(values) else 0.0
            g = round(255 * min(1.0, max(0.0, (v - lo) / span)))
            rects.append(
                f'<rect x="{j * PIXEL}" y="{i * PIXEL}" width="{PIXEL}" height="{PIXEL}" '
                f'fill="rgb({g},{g},{g})"/>'
            )
    return (
        f'<svg width="{w * PIXEL}" height="{h * PIXEL}" viewBox="0 0 {w * PIXEL} {h * PIXEL}" '
        f'role="img" style="display:inline-block;vertical-align:middle;margin:1px;'
        f'border:1px solid #ccc">{"".join(rects)}</svg>'
    )


def _attempt_html(attempt: dict[str, Any]) -> str:
    """A small figure: originals over their matched reconstructions, with a caption."""
    disp = as_dict(attempt.get("display"))
    if not disp:
        return ""
    shape = list(disp.get("shape") or [])
    lo, hi = (disp.get("range") or [0.0, 1.0])[:2]
    origs = disp.get("originals") or []
    recs = disp.get("reconstructions") or []
    psnrs = disp.get("psnr") or []
    row_o = "".join(image_svg(o, shape, lo, hi) for o in origs)
    row_r = "".join(
        f'<span title="PSNR {p} dB">{image_svg(r, shape, lo, hi)}</span>'
        for r, p in zip(recs, psnrs, strict=False)
    )
    source = str(attempt.get("source") or "")
    n = attempt.get("n_records")
    what = {"client_update": "update", "decrypted_update": "decrypted update"}.get(source, source)
    if source == "aggregate":
        what = f"aggregate of {len(attempt.get('clients') or [])} clients"
    else:
        what = f"client {', '.join(map(str, attempt.get('clients') or []))} {what}"
    psnr = as_number(attempt.get("psnr"))
    caption = f"round {attempt.get('round')}, {what}: "
    caption += f"{psnr:.1f} dB" if psnr is not None else "—"
    if isinstance(n, int) and n > len(origs):
        caption += f" (first {len(origs)} of {n} records)"
    return (
        '<figure style="display:inline-block;margin:4px 10px 4px 0;vertical-align:top">'
        f'<div style="white-space:nowrap">{row_o}</div>'
        f'<div style="white-space:nowrap">{row_r}</div>'
        f'<figcaption class="small" style="max-width:260px">{escape(caption)}</figcaption>'
        "</figure>"
    )


def _entries(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(variant, attack id, attack entry, variant) for every gradient-inversion result."""
    out = []
    for vname, v in as_dict(results.get("variants")).items():
        for aid, entry in as_dict(as_dict(v).get("attacks")).items():
            if as_dict(entry).get("family") == FAMILY:
                out.append((str(vname), str(aid), entry, v))
    return out


def gallery(results: dict[str, Any]) -> str:
    """One row per variant and attack: up to four attempts, originals over reconstructions."""
    rows = []
    for vname, aid, entry, _ in _entries(results):
        attempts = as_dict(entry.get("artifacts")).get("attempts") or []
        shown = [a for a in attempts if as_dict(a).get("display")][:4]
        notes = as_dict(entry.get("artifacts")).get("notes") or []
        figures = "".join(_attempt_html(a) for a in shown) or "no reconstruction"
        if notes:
            figures += f'<div class="small">{escape("; ".join(map(str, notes)))}</div>'
        rows.append(f"<tr><td>{escape(vname)}</td><td>{escape(aid)}</td><td>{figures}</td></tr>")
    if not rows:
        return ""
    return (
        "<table><thead><tr><th>variant</th><th>attack</th>"
        "<th>top: true records · bottom: reconstructions</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def tradeoff_svg(results: dict[str, Any]) -> str:
    """Mean PSNR against final test accuracy, one series per attack, one point per variant."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    labels: dict[str, list[str]] = {}
    for vname, aid, entry, v in _entries(results):
        acc = as_number(as_dict(as_dict(v).get("utility")).get("final_accuracy"))
        psnr = as_number(as_dict(entry.get("metrics")).get("psnr"))
        if acc is None or psnr is None:
            continue
        xs, ys = series.setdefault(aid, ([], []))
        xs.append(acc)
        ys.append(psnr)
        labels.setdefault(aid, []).append(vname)
    if not series or sum(len(x) for x, _ in series.values()) < 2:
        return ""
    return plots.scatter_plot(
        series,
        title="Reconstruction PSNR against test accuracy (one point per variant)",
        x_label="final test accuracy",
        y_label="mean PSNR of reconstructions (dB, capped at 100)",
        point_labels=labels,
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _undefended_psnr(results: dict[str, Any]) -> dict[str, float]:
    """Attack id -> PSNR in the first variant without defenses (the reference point)."""
    out: dict[str, float] = {}
    for _, aid, entry, v in _entries(results):
        psnr = as_number(as_dict(entry.get("metrics")).get("psnr"))
        if not as_dict(v).get("defenses") and psnr is not None:
            out.setdefault(aid, psnr)
    return out


def visibility_table(results: dict[str, Any]) -> str:
    rows = []
    base = _undefended_psnr(results)
    for vname, aid, entry, v in _entries(results):
        m = as_dict(entry.get("metrics"))
        share = as_number(m.get("aggregate_share"))
        attempts = as_dict(entry.get("artifacts")).get("attempts") or []
        sources = sorted({str(as_dict(a).get("source")) for a in attempts})
        psnr, ssim = as_number(m.get("psnr")), as_number(m.get("ssim"))
        prior = as_number(m.get("psnr_baseline"))
        lab = as_number(m.get("label_accuracy"))
        acc = as_number(as_dict(as_dict(v).get("utility")).get("final_accuracy"))
        rows.append(
            [
                vname,
                aid,
                ", ".join(SOURCE_TEXT.get(s, s) for s in sources) or "nothing",
                "—" if share is None else f"{share:.0%}",
                "—" if psnr is None else f"{psnr:.1f}",
                "—" if prior is None else f"{prior:.1f}",
                "—" if psnr is None or aid not in base else f"{psnr - base[aid]:+.1f}",
                "—" if ssim is None else f"{ssim:.3f}",
                "—" if lab is None else f"{lab:.0%}",
                "—" if acc is None else f"{acc:.3f}",
            ]
        )
    if not rows:
        return ""
    return _table(
        [
            "variant",
            "attack",
            "attack read",
            "aggregate only",
            "PSNR dB",
            "mean-image PSNR",
            "vs undefended",
            "SSIM",
            "labels",
            "accuracy",
        ],
        rows,
    )


def he_cost_table(results: dict[str, Any]) -> str:
    rows = []
    for vname, v in as_dict(results.get("variants")).items():
        for d in as_dict(v).get("defenses") or []:
            cost = as_dict(as_dict(d).get("cost"))
            if as_dict(d).get("name") != "secure_aggregation" or not cost:
                continue

            def f(key: str, fmt: str, cost: dict[str, Any] = cost) -> str:
                x = as_number(cost.get(key))
                return "—" if x is None else format(x, fmt)

            rows.append(
                [
                    str(vname),
                    str(as_dict(d).get("key_holder") or ""),
                    f("ciphertexts_per_client", ".0f"),
                    f("ciphertext_bytes_per_client", ",.0f"),
                    f("plaintext_bytes_per_client", ",.0f"),
                    f("bytes_ratio", ".1f") + "x",
                    f("encrypt_seconds", ".4f"),
                    f("aggregate_seconds", ".4f"),
                    f("decrypt_seconds", ".4f"),
                    f("max_abs_error_bound", ".0e"),
                    "yes" if as_dict(d).get("server_holds_secret_key") else "no",
                ]
            )
    if not rows:
        return ""
    return _table(
        [
            "variant",
            "keys held by",
            "ciphertexts / client",
            "bytes / client (CKKS)",
            "bytes / client (plain)",
            "ratio",
            "encrypt s / client",
            "sum s / round",
            "decrypt s / round",
            "aggregate error ≤",
            "server has secret key",
        ],
        rows,
    )


def sections(results: dict[str, Any]) -> list[Section]:
    out = []
    if _entries(results):
        out.append(
            Section(
                "Gradient inversion: what each attack could read",
                visibility_table(results),
                "Under secure aggregation the server holds ciphertexts and a public key only, "
                "so it inverts the aggregate of all participants (one large batch); a client "
                "that colludes and hands over the shared secret key restores single updates. "
                "PSNR is measured by the referee against the true records, after optimal "
                "(Hungarian) matching; exact reconstructions are capped at 100 dB.",
                order=40,
            )
        )
        svg = tradeoff_svg(results)
        if svg:
            out.append(
                Section(
                    "Reconstruction quality against accuracy",
                    svg,
                    "Each point is a variant: lower PSNR means less leakage; further right "
                    "means a more useful model. Pruning and noise trade one for the other; "
                    "secure aggregation keeps the accuracy of plain FedAvg.",
                    order=41,
                )
            )
        out.append(
            Section(
                "Originals beside reconstructions",
                gallery(results),
                "Top row: the client's true training records; bottom row: the attack's "
                "reconstruction matched to each (hover for the PSNR of each image).",
                order=42,
            )
        )
    cost = he_cost_table(results)
    if cost:
        out.append(
            Section(
                "Cost of CKKS secure aggregation",
                cost,
                "Per client and round: ciphertext bytes on the wire against the float32 update, "
                "encryption, the server's homomorphic sum and the key holder's decryption; the "
                "decrypted mean's largest deviation from the plaintext mean (order of "
                "magnitude). CKKS draws fresh encryption randomness every run, as its "
                "security requires, so variants under HE agree across runs only up to that "
                "noise: their losses and inversion metrics can differ in late digits.",
                order=43,
            )
        )
    return out
