"""Plots as self-contained inline SVG strings: no matplotlib, fonts, CSS, scripts or network.

The report must open from a CI artifact with nothing else around it, so every figure is plain
SVG text built here. All text placed in a figure (titles, labels, variant names, which are user
input) goes through ``html.escape``. Series use the Okabe-Ito palette, which stays distinct under
the common colour-vision deficiencies, and dash patterns or marker shapes once it cycles.

The returned ``<svg>`` has no ``xmlns`` so that the HTML report holds no ``http://`` address;
inline SVG in HTML needs none. Use :func:`standalone_svg` to write a figure as its own file.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
"""Okabe-Ito, ordered for a white background (the low-contrast yellow comes last)."""
DASHES = ("", "7 3", "2 2", "9 3 2 3")
MARKERS = ("circle", "square", "triangle", "diamond")
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"

_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 66, 18, 34, 46
_LEGEND_ROW = 18
_CHAR_WIDTH = 6.6  # rough width of one 11-12px sans-serif character, for layout only
_MAX_LABEL = 60
_AUTO_MARKERS = 15  # series with at most this many points get markers in line plots


# --------------------------------------------------------------------------- scales


@dataclass(frozen=True)
class _Scale:
    """Maps data values on one axis to pixels; log scales clip values below `lo` to `lo`."""

    lo: float
    hi: float
    px0: float
    px1: float
    log: bool

    def _t(self, v: float) -> float:
        return math.log10(v) if self.log else v

    def __call__(self, v: float) -> float:
        if self.log and v < self.lo:
            v = self.lo
        a, b = self._t(self.lo), self._t(self.hi)
        return self.px0 + (self._t(v) - a) / (b - a) * (self.px1 - self.px0)


def _finite(values: Iterable[float]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def _nice_step(span: float, integer: bool, target: int = 6) -> float:
    """The 1-2-5 step giving the tick count nearest to `target` (whole steps on integer data)."""
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10)), key=lambda st: abs(math.log(raw / st)))
    return max(step, 1.0) if integer else step


def _domain(
    values: list[float],
    given: tuple[float, float] | None,
    log: bool,
    integer: bool,
    nice: bool,
) -> tuple[float, float]:
    """Axis limits: the caller's, else the data's (rounded out to nice ticks or decades)."""
    if given is not None:
        lo, hi = float(given[0]), float(given[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            raise ValueError(f"axis range must be finite with min < max, got {given!r}")
        if log and lo <= 0:
            raise ValueError(f"a log axis needs a positive minimum, got {given!r}")
        return lo, hi
    if log:
        pos = [v for v in values if v > 0]
        if not pos:
            return 1e-3, 1.0
        lo = 10 ** math.floor(math.log10(min(pos)))
        hi = 10 ** math.ceil(math.log10(max(pos)))
        return (lo, hi) if hi > lo else (lo, lo * 10)
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    if not nice:
        return lo, hi
    step = _nice_step(hi - lo, integer)
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step


def _ticks(lo: float, hi: float, log: bool, integer: bool) -> tuple[list[float], list[float]]:
    """Major ticks (labelled) and minor ticks (light grid only)."""
    if log:
        e0, e1 = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
        stride = max(1, math.ceil((e1 - e0 + 1) / 8))
        major = [10.0**e for e in range(e0, e1 + 1, stride)]
        minor = []
        if stride == 1 and e1 - e0 <= 5:
            for e in range(e0 - 1, e1 + 1):
                minor += [m * 10.0**e for m in range(2, 10) if lo <= m * 10.0**e <= hi]
        if len(major) < 2:  # less than a decade: label the ends too
            major = sorted({lo, *major, hi})
        return major, minor
    step = _nice_step(hi - lo, integer)
    first = math.ceil(lo / step - 1e-9)
    major = []
    k = first
    while k * step <= hi + step * 1e-9:
        major.append(k * step)
        k += 1
    return major, []


def _fmt_tick(v: float, log: bool, step: float | None) -> str:
    if log:
        e = math.log10(v)
        if abs(e - round(e)) < 1e-9 and not -3 <= round(e) <= 3:
            sup = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
            return "10" + str(round(e)).translate(sup)
        return f"{v:.4g}"
    decimals = 0
    if step is not None:
        decimals = max(0, -math.floor(math.log10(step) + 1e-9))
        while decimals < 8 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
            decimals += 1  # steps like 0.25 or 2.5
    text = f"{v:.{decimals}f}"
    return "0" if text.strip("-0.") == "" else text


def _num(v: float) -> str:
    return f"{v:.1f}".removesuffix(".0")


def _label(text: Any) -> str:
    s = str(text)
    return s if len(s) <= _MAX_LABEL else s[: _MAX_LABEL - 1] + "…"


def _text_width(text: str, size: float = 12) -> float:
    return len(text) * _CHAR_WIDTH * size / 12


# --------------------------------------------------------------------------- drawing


def _marker(shape: str, x: float, y: float, colour: str, r: float = 3.2) -> str:
    if shape == "square":
        return (
            f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" '
            f'fill="{colour}"/>'
        )
    if shape == "triangle":
        a, b = r * 1.1, r * 1.2
        pts = f"{x:.1f},{y - b:.1f} {x - a:.1f},{y + r:.1f} {x + a:.1f},{y + r:.1f}"
        return f'<polygon points="{pts}" fill="{colour}"/>'
    if shape == "diamond":
        q = r * 1.3
        pts = f"{x:.1f},{y - q:.1f} {x + q:.1f},{y:.1f} {x:.1f},{y + q:.1f} {x - q:.1f},{y:.1f}"
        return f'<polygon points="{pts}" fill="{colour}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{colour}"/>'


def _vline(x: float, y0: float, y1: float, colour: str) -> str:
    return f'<line x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y1:.1f}" stroke="{colour}"/>'


def _hline(y: float, x0: float, x1: float, colour: str) -> str:
    return f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="{colour}"/>'


def _pixel_runs(
    xs: Sequence[float], ys: Sequence[float], sx: _Scale, sy: _Scale
) -> list[list[tuple[float, float]]]:
    """Pixel points split into runs at non-finite values, with repeated pixels dropped."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys, strict=False):
        try:
            fx, fy = float(x), float(y)
        except (TypeError, ValueError):
            fx = fy = math.nan
        if not (math.isfinite(fx) and math.isfinite(fy)):
            if runs[-1]:
                runs.append([])
            continue
        p = (round(sx(fx), 1), round(sy(fy), 1))
        if not runs[-1] or runs[-1][-1] != p:
            runs[-1].append(p)
    return [r for r in runs if r]


def _style(i: int) -> tuple[str, str, str]:
    """Colour, dash pattern and marker shape of the i-th series."""
    n = len(PALETTE)
    return PALETTE[i % n], DASHES[(i // n) % len(DASHES)], MARKERS[(i // n) % len(MARKERS)]


def _legend(labels: list[str], width: float, top: float, kind: str) -> tuple[list[str], float]:
    """Legend entries flowed left to right below the plot; returns elements and height."""
    parts: list[str] = []
    x, y = _MARGIN_LEFT, top
    for i, label in enumerate(labels):
        colour, dash, shape = _style(i)
        text = _label(label)
        w = 30 + _text_width(text, 11.5) + 18
        if x > _MARGIN_LEFT and x + w > width - _MARGIN_RIGHT:
            x, y = _MARGIN_LEFT, y + _LEGEND_ROW
        cy = y + _LEGEND_ROW / 2
        if kind == "line":
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            parts.append(
                f'<line x1="{x:.1f}" y1="{cy:.1f}" x2="{x + 24:.1f}" y2="{cy:.1f}" '
                f'stroke="{colour}" stroke-width="2.2"{dash_attr}/>'
            )
        parts.append(_marker(shape, x + 12, cy, colour))
        parts.append(
            f'<text x="{x + 30:.1f}" y="{cy + 4:.1f}" font-size="11.5" fill="#222">'
            f"{escape(text)}</text>"
        )
        x += w
    height = (y - top + _LEGEND_ROW + 6) if labels else 0
    return parts, height


def _xy_plot(
    series: Series,
    *,
    kind: str,
    title: str,
    x_label: str,
    y_label: str,
    x_log: bool,
    y_log: bool,
    x_range: tuple[float, float] | None,
    y_range: tuple[float, float] | None,
    diagonal: bool,
    markers: bool | None,
    point_labels: Mapping[str, Sequence[str]] | None,
    width: int,
    height: int,
) -> str:
    xs_all = [v for xs, _ in series.values() for v in _finite(xs)]
    ys_all = [v for _, ys in series.values() for v in _finite(ys)]
    x_int = bool(xs_all) and all(v.is_integer() for v in xs_all)
    y_int = bool(ys_all) and all(v.is_integer() for v in ys_all)
    # x spans exactly the data (rounds 1..R), y is rounded out so the curves get headroom.
    x_lo, x_hi = _domain(xs_all, x_range, x_log, x_int, nice=False)
    y_lo, y_hi = _domain(ys_all, y_range, y_log, y_int, nice=True)

    left, right = _MARGIN_LEFT, width - _MARGIN_RIGHT
    top, bottom = _MARGIN_TOP, height - _MARGIN_BOTTOM
    sx = _Scale(x_lo, x_hi, left, right, x_log)
    sy = _Scale(y_lo, y_hi, bottom, top, y_log)

    grid: list[str] = []
    axes: list[str] = []
    x_major, x_minor = _ticks(x_lo, x_hi, x_log, x_int)
    y_major, y_minor = _ticks(y_lo, y_hi, y_log, y_int)
    x_step = None if x_log else _nice_step(x_hi - x_lo, x_int)
    y_step = None if y_log else _nice_step(y_hi - y_lo, y_int)
    for v in x_minor:
        grid.append(_vline(sx(v), top, bottom, "#f0f0f0"))
    for v in y_minor:
        grid.append(_hline(sy(v), left, right, "#f0f0f0"))
    for v in x_major:
        px = sx(v)
        grid.append(_vline(px, top, bottom, "#dddddd"))
        axes.append(
            _vline(px, bottom, bottom + 4, "#555")
            + f'<text x="{px:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11" '
            f'fill="#444">{escape(_fmt_tick(v, x_log, x_step))}</text>'
        )
    for v in y_major:
        py = sy(v)
        grid.append(_hline(py, left, right, "#dddddd"))
        axes.append(
            _hline(py, left - 4, left, "#555")
            + f'<text x="{left - 7}" y="{py + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#444">{escape(_fmt_tick(v, y_log, y_step))}</text>'
        )
    axes.append(
        f'<text x="{(left + right) / 2:.1f}" y="{height - 10}" text-anchor="middle" '
        f'font-size="12" fill="#222">{escape(x_label)}</text>'
        f'<text transform="translate(16 {(top + bottom) / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle" font-size="12" fill="#222">{escape(y_label)}</text>'
    )

    data: list[str] = []
    if diagonal:
        lo, hi = max(x_lo, y_lo), min(x_hi, y_hi)
        if hi > lo:
            n = 64 if x_log != y_log else 2
            vals = (
                [lo * (hi / lo) ** (k / (n - 1)) for k in range(n)]
                if x_log
                else [lo + (hi - lo) * k / (n - 1) for k in range(n)]
            )
            pts = " ".join(f"{_num(sx(v))},{_num(sy(v))}" for v in vals)
            data.append(
                f'<polyline points="{pts}" fill="none" stroke="#888" stroke-width="1.2" '
                f'stroke-dasharray="5 4"/>'
            )
    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour, dash, shape = _style(i)
        runs = _pixel_runs(xs, ys, sx, sy)
        n_points = sum(len(r) for r in runs)
        show_markers = kind == "scatter" or (
            markers if markers is not None else n_points <= _AUTO_MARKERS
        )
        group = [f"<title>{escape(_label(name))}</title>"]
        if kind == "line":
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            for run in runs:
                pts = " ".join(f"{_num(x)},{_num(y)}" for x, y in run)
                group.append(
                    f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2.2" '
                    f'stroke-linejoin="round" stroke-linecap="round"{dash_attr}/>'
                )
        if show_markers:
            group += [_marker(shape, x, y, colour) for run in runs for x, y in run]
        data.append(f"<g>{''.join(group)}</g>")

    notes: list[str] = []
    for i, (name, texts) in enumerate((point_labels or {}).items()):
        if name not in series:
            continue
        xs, ys = series[name]
        for x, y, text in zip(xs, ys, texts, strict=False):
            fx, fy = _finite([x]), _finite([y])
            if not (fx and fy) or not text:
                continue
            notes.append(
                f'<text x="{sx(fx[0]) + 6:.1f}" y="{sy(fy[0]) - 6:.1f}" font-size="10.5" '
                f'fill="{_style(i)[0]}">{escape(_label(text))}</text>'
            )

    if not series or not (xs_all and ys_all):
        data.append(
            f'<text x="{(left + right) / 2:.1f}" y="{(top + bottom) / 2:.1f}" '
            f'text-anchor="middle" font-size="13" fill="#777">no data</text>'
        )

    legend, legend_h = _legend([str(k) for k in series], width, height - 2, kind)
    total_h = height + legend_h
    body = "".join(data)
    key = f"{title}|{width}x{height}|{body}".encode()
    clip = f"plclip-{hashlib.sha1(key, usedforsecurity=False).hexdigest()[:12]}"
    # The clip box is a little larger than the frame so lines on the border are not halved.
    return (
        f'<svg class="plot" viewBox="0 0 {width} {total_h:.0f}" width="{width}" '
        f'height="{total_h:.0f}" role="img" aria-label="{escape(title)}" '
        f'font-family="{escape(FONT)}" style="max-width:100%;height:auto">'
        f"<title>{escape(title)}</title>"
        f'<defs><clipPath id="{clip}"><rect x="{left - 4}" y="{top - 4}" '
        f'width="{right - left + 8}" height="{bottom - top + 8}"/></clipPath></defs>'
        f'<rect width="{width}" height="{total_h:.0f}" fill="#ffffff"/>'
        f'<text x="{left}" y="20" font-size="13.5" font-weight="600" fill="#111">'
        f"{escape(_label(title))}</text>"
        f"{''.join(grid)}"
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        f'fill="none" stroke="#999"/>'
        f"{''.join(axes)}"
        f'<g clip-path="url(#{clip})">{body}</g>'
        f"{''.join(notes)}"
        f"{''.join(legend)}"
        f"</svg>"
    )


# --------------------------------------------------------------------------- generic plots


def line_plot(
    series: Series,
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_log: bool = False,
    y_log: bool = False,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    diagonal: bool = False,
    markers: bool | None = None,
    width: int = 640,
    height: int = 360,
) -> str:
    """One polyline per series (label -> (xs, ys)) with legend, ticks and gridlines.

    Log axes get decade ticks; values at or below the axis minimum (zeros included) are
    drawn at the minimum. Non-finite points break the line. `diagonal` adds the dashed
    chance line y = x. `markers` defaults to on for series with few points.
    """
    return _xy_plot(
        series, kind="line", title=title, x_label=x_label, y_label=y_label, x_log=x_log,
        y_log=y_log, x_range=x_range, y_range=y_range, diagonal=diagonal, markers=markers,
        point_labels=None, width=width, height=height,
    )  # fmt: skip


def scatter_plot(
    series: Series,
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_log: bool = False,
    y_log: bool = False,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    diagonal: bool = False,
    point_labels: Mapping[str, Sequence[str]] | None = None,
    width: int = 640,
    height: int = 360,
) -> str:
    """Markers only, one shape and colour per series; `point_labels` annotates points.

    For trade-off plots (e.g. reconstruction PSNR against accuracy, one point per variant).
    Same axes handling as :func:`line_plot`; use `line_plot(..., markers=True)` for a
    connected sweep such as accuracy against malicious fraction.
    """
    return _xy_plot(
        series, kind="scatter", title=title, x_label=x_label, y_label=y_label, x_log=x_log,
        y_log=y_log, x_range=x_range, y_range=y_range, diagonal=diagonal, markers=True,
        point_labels=point_labels, width=width, height=height,
    )  # fmt: skip


def standalone_svg(svg: str) -> str:
    """A figure as a stand-alone .svg file (adds the namespace inline SVG does not need)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        + svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
        + "\n"
    )


# --------------------------------------------------------------------------- results plots


def _variants(results: Mapping[str, Any]) -> dict[str, Any]:
    variants = results.get("variants")
    if not isinstance(variants, dict):
        return {}
    return {str(k): v for k, v in variants.items() if isinstance(v, dict)}


def accuracy_plot(results: Mapping[str, Any]) -> str:
    """Test accuracy per round, one line per variant; "" when no variant has per-round data."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for name, v in _variants(results).items():
        rounds = (v.get("utility") or {}).get("per_round") or []
        pts = [
            (r.get("round"), r.get("accuracy"))
            for r in rounds
            if isinstance(r, dict) and r.get("accuracy") is not None
        ]
        pts = [(x, y) for x, y in pts if _finite([x]) and _finite([y])]
        if pts:
            series[name] = ([float(x) for x, _ in pts], [float(y) for _, y in pts])
    if not series:
        return ""
    return line_plot(series, title="Test accuracy per round", x_label="round", y_label="accuracy")


def roc_plot(results: Mapping[str, Any], attack_id: str) -> str:
    """Log-log ROC curves of one attack across variants, as in Carlini et al. (2022).

    The axes start at 1/(2 n) for n non-members (the first FPR step is 1/n, zeros sit just
    below it), else at 1e-3 or below the smallest FPR shown. "" when no variant has ROC points.
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    n_nonmembers: list[int] = []
    attack_name = ""
    for name, v in _variants(results).items():
        entry = (v.get("attacks") or {}).get(attack_id)
        if not isinstance(entry, dict):
            continue
        roc = (entry.get("artifacts") or {}).get("roc")
        if not isinstance(roc, dict):
            continue
        fpr, tpr = roc.get("fpr"), roc.get("tpr")
        if not isinstance(fpr, list) or not isinstance(tpr, list) or not fpr:
            continue
        metrics = entry.get("metrics") or {}
        n = metrics.get("n_nonmembers")
        if isinstance(n, int | float) and not isinstance(n, bool) and n > 0:
            n_nonmembers.append(int(n))
        auc = metrics.get("auc")
        label = name
        if isinstance(auc, int | float) and not isinstance(auc, bool) and math.isfinite(auc):
            label = f"{name} (AUC {auc:.3f})"
        attack_name = attack_name or str(entry.get("name") or "")
        series[label] = (fpr, tpr)
    if not series:
        return ""
    if n_nonmembers:
        lo = 1 / (2 * max(n_nonmembers))
    else:
        positive = [f for xs, _ in series.values() for f in _finite(xs) if f > 0]
        lo = min([1e-3, *positive])
    title = f"ROC, log-log: {attack_id}"
    if attack_name and attack_name != attack_id:
        title += f" ({attack_name})"
    return line_plot(
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
        width=520,
        height=440,
    )
