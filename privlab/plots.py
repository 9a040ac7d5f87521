"""matplotlib plumbing shared by every privlab figure: the look, the colours, SVG export.

Figures are built on a bare ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot state, no
GUI backend, so a notebook's own backend is left alone). :func:`to_svg` turns a figure into SVG
for inline use in the HTML report: text stays text (``svg.fonttype = "none"``, system sans-serif
fonts), and the XML prologue, RDF metadata and namespace declarations are dropped so the report
holds no external address; ids get a per-figure prefix so several figures share one page.

Colours: the Okabe-Ito palette (distinct under the common colour-vision deficiencies). A variant
keeps its colour in every figure of a report: :func:`variant_colours` fixes the mapping from the
results' variant order and :func:`use_colours` makes it the default for every plot drawn inside.
matplotlib is imported lazily so ``privlab --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
"""Okabe-Ito, ordered for a white background (the low-contrast yellow comes last)."""
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MAX_LABEL = 60
WIDTH_IN, HEIGHT_IN = 6.4, 3.6
STYLE: dict[str, Any] = {
    "svg.fonttype": "none",  # text stays text in the SVG: searchable, selectable, system font
    "svg.hashsalt": "privlab",  # deterministic ids
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.7,
    "axes.edgecolor": "#999999",
    "axes.labelcolor": "#222222",
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "axes.prop_cycle": None,  # set in style() (needs cycler)
    "legend.frameon": False,
    "legend.fontsize": 9,
    "lines.linewidth": 2.0,
    "lines.markersize": 5,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "pdf.fonttype": 42,  # TrueType in PDFs, editable text
}
_colours: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "privlab_colours", default=None
)


# --------------------------------------------------------------------------- look and colours


def style() -> dict[str, Any]:
    """The rcParams every privlab figure is drawn and saved with."""
    from cycler import cycler

    return {**STYLE, "axes.prop_cycle": cycler(color=list(PALETTE))}


def variant_colours(results: Mapping[str, Any]) -> dict[str, str]:
    """Variant name -> colour, in the results' variant order (cycling past eight). Sweep
    variants ("<base>|<param>=<value>") take their base's colour (and the base name is mapped
    too), so one aggregator or defense is one colour across the grid; markers tell the grid
    points apart (:func:`variant_markers`)."""
    v = results.get("variants")
    names = [str(k) for k in v] if isinstance(v, dict) else []
    bases = list(dict.fromkeys(n.split("|")[0] for n in names))
    base_colour = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(bases)}
    out = {n: base_colour[n.split("|")[0]] for n in names}
    return {**{b: c for b, c in base_colour.items() if b not in out}, **out}


def variant_markers(results: Mapping[str, Any]) -> dict[str, str]:
    """Variant name -> marker: by grid point in a sweep, else by how often the palette cycled."""
    v = results.get("variants")
    names = [str(k) for k in v] if isinstance(v, dict) else []
    points = list(dict.fromkeys(n.partition("|")[2] for n in names))
    if len(points) > 1:
        return {n: MARKERS[points.index(n.partition("|")[2]) % len(MARKERS)] for n in names}
    return {n: MARKERS[(i // len(PALETTE)) % len(MARKERS)] for i, n in enumerate(names)}


@contextlib.contextmanager
def use_colours(colours: Mapping[str, str]) -> Iterator[None]:
    """Within the block, series labelled with a variant's name are drawn in its colour."""
    token = _colours.set(dict(colours))
    try:
        yield
    finally:
        _colours.reset(token)


def colour_for(label: str, index: int, colours: Mapping[str, str] | None = None) -> str:
    """The variant colour when `label` names a variant (exactly, or before " (" or " / "),
    else the palette at `index` counted after the variant colours."""
    mapping = colours if colours is not None else (_colours.get() or {})
    for key in (label, label.split(" (")[0], label.split(" / ")[0], label.split("|")[0]):
        if key in mapping:
            return mapping[key]
    return PALETTE[(len(mapping) + index) % len(PALETTE)]


def short(text: Any) -> str:
    s = str(text)
    return s if len(s) <= MAX_LABEL else s[: MAX_LABEL - 1] + "…"


# --------------------------------------------------------------------------- figures


def new_axes(ax: Axes | None, height: float = HEIGHT_IN, width: float = WIDTH_IN) -> Axes:
    """The caller's axes, or the single axes of a new constrained-layout figure (Agg canvas)."""
    if ax is not None:
        return ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with rc():
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        return fig.add_subplot()


def rc() -> Any:
    import matplotlib

    return matplotlib.rc_context(style())


def legend_below(ax: Axes, owns_figure: bool, labels_count: int | None = None) -> None:
    """A legend outside the axes, below them, in as many columns as the labels fit; a normal
    in-axes legend when the caller supplied the axes."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if not owns_figure:
        ax.legend(loc="best")
        return
    fig = ax.figure
    width_px = fig.get_figwidth() * 72
    longest = max(len(t) for t in labels)
    ncols = max(1, min(len(labels), int(width_px // (longest * 5.6 + 34))))
    rows = math.ceil(len(labels) / ncols)
    fig.set_figheight(fig.get_figheight() + 0.2 * rows)
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, handlelength=2.4)


def draw(
    ax: Axes | None,
    series: Series,
    *,
    kind: str = "line",
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    x_log: bool = False,
    y_log: bool = False,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    diagonal: bool = False,
    markers: bool | None = None,
    colours: Mapping[str, str] | None = None,
    linestyles: Mapping[str, str] | None = None,
    marker_map: Mapping[str, str] | None = None,
) -> Figure:
    """One line (or marker set) per series label -> (xs, ys); returns the figure.

    On log axes values at or below the axis minimum (zeros included) are drawn at the minimum.
    Non-finite points break a line. `diagonal` adds the dashed chance line y = x.
    """
    owns = ax is None
    with rc():
        ax = new_axes(ax)
        for i, (name, (xs, ys)) in enumerate(series.items()):
            px, py = _points(xs, ys, x_range if x_log else None, y_range if y_log else None)
            colour = colour_for(str(name), i, colours)
            few = sum(1 for v in px if math.isfinite(v)) <= 15
            show_markers = kind == "scatter" or (markers if markers is not None else few)
            style = (linestyles or {}).get(str(name), LINESTYLES[(i // len(PALETTE)) % 4])
            ax.plot(
                px,
                py,
                color=colour,
                linestyle="none" if kind == "scatter" else style,
                marker=(
                    (marker_map or {}).get(str(name), MARKERS[(i // len(PALETTE)) % len(MARKERS)])
                    if show_markers
                    else None
                ),
                markersize=7 if kind == "scatter" else 5,
                label=short(name),
                clip_on=True,
            )
        _axes(ax, title, x_label, y_label, x_log, y_log, x_range, y_range, diagonal)
        if not series:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#777777")
        legend_below(ax, owns)
        return ax.figure


def _points(
    xs: Sequence[Any],
    ys: Sequence[Any],
    x_floor: tuple[float, float] | None,
    y_floor: tuple[float, float] | None,
) -> tuple[list[float], list[float]]:
    def num(v: Any) -> float:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return math.nan
        return f if math.isfinite(f) else math.nan

    px = [num(x) for x in xs][: len(ys)]
    py = [num(y) for y in ys][: len(px)]
    if x_floor is not None:
        px = [max(v, x_floor[0]) if math.isfinite(v) else v for v in px]
    if y_floor is not None:
        py = [max(v, y_floor[0]) if math.isfinite(v) else v for v in py]
    return px, py


def _axes(
    ax: Axes,
    title: str,
    x_label: str,
    y_label: str,
    x_log: bool,
    y_log: bool,
    x_range: tuple[float, float] | None,
    y_range: tuple[float, float] | None,
    diagonal: bool,
) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter

    for on, axis, setter in ((x_log, ax.xaxis, ax.set_xscale), (y_log, ax.yaxis, ax.set_yscale)):
        if on:
            setter("log")
            # minor ticks at 2x and 5x only: a readable grid at half the layout cost
            axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            axis.set_minor_formatter(NullFormatter())
    if x_range is not None:
        ax.set_xlim(*x_range)
    if y_range is not None:
        ax.set_ylim(*y_range)
    if diagonal:
        lo = max(ax.get_xlim()[0], ax.get_ylim()[0])
        hi = min(ax.get_xlim()[1], ax.get_ylim()[1])
        if hi > lo:
            n = 64 if x_log != y_log else 2
            vals = [lo * (hi / lo) ** (k / (n - 1)) for k in range(n)] if x_log else [lo, hi]
            ax.plot(vals, vals, color="#888888", linestyle="--", linewidth=1.1, label="chance")
    if title:
        ax.set_title(short(title), wrap=True)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(True, which="major")
    if x_log or y_log:
        ax.grid(True, which="minor", color="#f0f0f0", linewidth=0.5)
    ax.set_axisbelow(True)


# --------------------------------------------------------------------------- export


_XML_HEAD = re.compile(r"\A.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_XMLNS = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
_ID = re.compile(r'\bid="([^"]+)"')
_SIZE = re.compile(r'<svg\b([^>]*?)\swidth="([\d.]+)pt"\s+height="([\d.]+)pt"')


def to_svg(fig: Figure, label: str = "") -> str:
    """The figure as an inline ``<svg>`` for HTML: no prologue, metadata or namespaces (inline
    SVG needs none, and the report must hold no external address), ids made unique to this
    figure, width capped at the container's (``max-width:100%``), ``aria-label`` = `label`."""
    buf = io.StringIO()
    with rc():
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = _METADATA.sub("", _XML_HEAD.sub("", buf.getvalue(), count=1))
    text = _XMLNS.sub("", text)
    prefix = "p" + hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:8] + "-"
    ids = set(_ID.findall(text))
    text = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(
        r"#([\w.-]+)([\")])",
        lambda m: f"#{prefix}{m.group(1)}{m.group(2)}" if m.group(1) in ids else m.group(0),
        text,
    )
    text = text.replace("*{stroke-linejoin", "svg.plot *{stroke-linejoin", 1)
    from html import escape

    text = _SIZE.sub(
        lambda m: (
            f'<svg{m.group(1)} class="plot" role="img" aria-label="{escape(label)}" '
            f'width="{float(m.group(2)) * 4 / 3:.0f}" height="{float(m.group(3)) * 4 / 3:.0f}" '
            'style="max-width:100%;height:auto"'
        ),
        text,
        count=1,
    )
    return text.strip()


def standalone_svg(svg: str) -> str:
    """An inline figure as a stand-alone .svg file (adds back the namespaces)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        + svg.replace(
            "<svg ",
            '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" ',
            1,
        )
        + "\n"
    )


def save(fig: Figure, path: Any) -> None:
    """Write a figure to .pdf, .svg or .png (by suffix), with the report's look."""
    with rc():
        fig.savefig(path, metadata={"Date": None} if str(path).endswith((".svg", ".pdf")) else {})


# --------------------------------------------------------------------------- report helpers


def line_plot(series: Series, *, title: str, x_label: str, y_label: str, **kw: Any) -> str:
    """Lines per series as inline SVG (for report sections); see :func:`draw` for options."""
    kw.pop("width", None), kw.pop("height", None)
    return to_svg(draw(None, series, title=title, x_label=x_label, y_label=y_label, **kw), title)


def scatter_plot(
    series: Series,
    *,
    title: str,
    x_label: str,
    y_label: str,
    point_labels: Mapping[str, Sequence[str]] | None = None,
    **kw: Any,
) -> str:
    """Markers per series as inline SVG. Points named in `point_labels` become their own legend
    entries (one per point, in the variant's colour) rather than in-plot text, so labels
    can neither overlap nor leave the plot."""
    kw.pop("width", None), kw.pop("height", None)
    data: dict[str, tuple[list[Any], list[Any]]] = {}
    for name, (xs, ys) in series.items():
        names = list((point_labels or {}).get(name) or [])
        if len(names) == len(xs) and names:
            many = len(series) > 1
            for x, y, point in zip(xs, ys, names, strict=True):
                key = f"{point} / {name}" if many else str(point)
                px, py = data.setdefault(key, ([], []))
                px.append(x)
                py.append(y)
        else:
            data[str(name)] = (list(xs), list(ys))
    fig = draw(None, data, kind="scatter", title=title, x_label=x_label, y_label=y_label, **kw)
    return to_svg(fig, title)
