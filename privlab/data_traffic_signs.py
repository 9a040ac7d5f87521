"""Synthetic traffic-sign camera images from vehicles that drive in different regions.

The source brief's split-learning example: vehicles train a sign classifier on what their
cameras see, and the route a vehicle drove (where its owner goes) is the private property. This
generator draws 32x32 RGB signs with numpy only: a shape (circle, triangle, octagon, square,
diamond) in a fill colour with an optional ring, a symbol (bars, arrows, digit-like strokes, a
cross), on a random background, then rotated, scaled and shifted, and degraded by the region's
lighting, fog, blur and sensor noise. The classes are the ten sign types in `SIGNS`.

Each vehicle is a group (`groups_train`, so `partition.scheme = "by_group"` gives every vehicle
a client of its own) and drives in one region. The region skews both the vehicle's class mix
(`REGION_MIX`, a public statistic) and its conditions (`REGIONS`). Which region each vehicle
drove in is drawn from the seed (`vehicle_regions`); only the referee reads it back. Each
vehicle's records are split into train and test by `test_fraction`; the test set is also the
population data auxiliary attacks hold. `public_images` adds a public set (`x_public`): balanced
classes photographed in studio conditions, the split server's pretraining data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from privlab.data import Dataset, _make, _validate

SIZE = 32
COLOURS = {
    "red": (0.85, 0.1, 0.1),
    "blue": (0.1, 0.25, 0.8),
    "yellow": (0.95, 0.8, 0.1),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
}
# (name, shape, fill, ring colour or None, symbol, symbol colour)
SIGNS: tuple[tuple[str, str, str, str | None, str, str], ...] = (
    ("stop", "octagon", "red", None, "hbar", "white"),
    ("warning", "triangle", "white", "red", "vbar", "black"),
    ("speed_limit", "circle", "white", "red", "digits", "black"),
    ("no_entry", "circle", "red", None, "hbar", "white"),
    ("ahead_only", "circle", "blue", None, "arrow_up", "white"),
    ("crossroads", "diamond", "yellow", None, "cross", "black"),
    ("information", "square", "blue", None, "vbar", "white"),
    ("turn_left", "square", "white", None, "arrow_left", "black"),
    ("slippery", "triangle", "yellow", None, "arrow_up", "black"),
    ("end_priority", "diamond", "white", None, "hbar", "black"),
)
# Region conditions: (name, lighting gain, fog share, blur passes, noise std)
REGIONS: tuple[tuple[str, float, float, int, float], ...] = (
    ("city", 1.0, 0.0, 0, 0.03),
    ("mountain", 0.9, 0.45, 1, 0.04),
    ("night_highway", 0.45, 0.05, 2, 0.08),
    ("countryside", 1.15, 0.15, 1, 0.03),
)
STUDIO = ("studio", 1.0, 0.0, 0, 0.01)
"""The public set's conditions: catalogue photos of signs, even light, no fog, no blur."""
# Class mix per region (relative frequencies of SIGNS): public traffic statistics.
REGION_MIX = np.array(
    [
        [5, 2, 3, 5, 4, 1, 5, 4, 1, 1],
        [1, 5, 2, 1, 1, 4, 1, 2, 5, 3],
        [1, 1, 6, 1, 4, 1, 2, 1, 1, 5],
        [2, 4, 3, 1, 1, 5, 1, 1, 3, 4],
    ],
    dtype=np.float64,
)


class TrafficSignsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_vehicles: int = Field(default=12, ge=2, le=10_000)
    num_regions: int = Field(default=3, ge=1, le=len(REGIONS))
    images_per_vehicle: int = Field(default=200, ge=4, le=100_000)
    mix_concentration: float = Field(default=20.0, gt=0)
    """Dirichlet concentration of a vehicle's class mix around its region's (higher: closer)."""
    public_images: int = Field(default=0, ge=0, le=100_000)
    """Public studio images (balanced classes, `STUDIO` conditions) every party holds: the
    split server's pretraining set. 0: none."""


def _masks(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-the-shape mask in sign coordinates (radius about 1)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u**2 + v**2 < 1.0
    if shape == "square":
        return np.maximum(au, av) < 0.82
    if shape == "diamond":
        return au + av < 1.0
    if shape == "octagon":
        return np.maximum(np.maximum(au, av), (au + av) / np.sqrt(2)) < 0.9
    return (v < 0.6) & (au < (v + 0.95) * 0.6)  # triangle, apex up


def _symbol(symbol: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    if symbol == "hbar":
        return (av < 0.17) & (au < 0.6)
    if symbol == "vbar":
        return (au < 0.12) & (av < 0.45)
    if symbol == "digits":
        return ((np.abs(u - 0.25) < 0.08) | (np.abs(u + 0.25) < 0.08)) & (av < 0.42)
    if symbol == "cross":
        inside = (au < 0.45) & (av < 0.45)
        return inside & ((np.abs(u - v) < 0.14) | (np.abs(u + v) < 0.14))
    if symbol == "arrow_left":
        u, v = -v, u
        au = np.abs(u)
    shaft = (au < 0.1) & (v > -0.15) & (v < 0.55)
    head = (v <= -0.15) & (v > -0.6) & (au < (v + 0.6) * 0.9)
    return shaft | head


def _blur(img: np.ndarray, passes: np.ndarray) -> np.ndarray:
    """3x3 box blur applied `passes[i]` times to image i (edge-padded), vectorised per pass."""
    out = img.copy()
    for p in range(1, int(passes.max(initial=0)) + 1):
        sel = passes >= p
        x = np.pad(out[sel], ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
        acc = sum(x[:, :, i : i + SIZE, j : j + SIZE] for i in range(3) for j in range(3))
        out[sel] = acc / 9.0
    return out


def render(labels: np.ndarray, regions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera images (n, 3, 32, 32) in [0, 1] of signs `labels` seen under `regions`'
    conditions; pose, background and per-image jitter of the conditions come from `rng`."""
    n = len(labels)
    grid = (np.arange(SIZE) - (SIZE - 1) / 2) / (SIZE / 2)
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    theta = rng.uniform(-0.35, 0.35, n)[:, None, None]
    scale = rng.uniform(0.65, 0.9, n)[:, None, None]
    dx, dy = (rng.uniform(-0.12, 0.12, (2, n)))[:, :, None, None]
    x0, y0 = gx[None] - dx, gy[None] - dy
    u = (np.cos(theta) * x0 + np.sin(theta) * y0) / scale
    v = (-np.sin(theta) * x0 + np.cos(theta) * y0) / scale
    bg = rng.uniform(0.2, 0.7, (n, 3, 1, 1)) + rng.uniform(-0.15, 0.15, (n, 1, 1, 1)) * gy
    img = np.broadcast_to(bg, (n, 3, SIZE, SIZE)).copy()
    for c, (_, shape, fill, ring, symbol, sym_colour) in enumerate(SIGNS):
        sel = labels == c
        if not sel.any():
            continue
        su, sv = u[sel], v[sel]
        outer = _masks(shape, su, sv)
        part = img[sel]
        if ring is not None:
            inner = _masks(shape, su / 0.72, sv / 0.72)
            _paint(part, outer & ~inner, COLOURS[ring])
            _paint(part, inner, COLOURS[fill])
        else:
            _paint(part, outer, COLOURS[fill])
        _paint(part, _symbol(symbol, su, sv) & outer, COLOURS[sym_colour])
        img[sel] = part
    cond = np.array([(STUDIO if r < 0 else REGIONS[r])[1:] for r in regions])
    light = cond[:, 0] * rng.uniform(0.85, 1.15, n)
    fog = np.clip(cond[:, 1] + rng.normal(0, 0.05, n), 0, 0.9)
    img = img * light[:, None, None, None]
    img = (1 - fog)[:, None, None, None] * img + fog[:, None, None, None] * 0.7
    img = _blur(img, cond[:, 2].astype(int))
    img = img + cond[:, 3, None, None, None] * rng.standard_normal(img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def public_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the public set: balanced classes in studio conditions (region -1),
    on a stream of its own, so disjoint from every vehicle's sightings."""
    rng = np.random.default_rng([seed, 7324])
    labels = rng.permutation(np.arange(n) % len(SIGNS)).astype(np.int64)
    return render(labels, np.full(n, -1), rng), labels


def _paint(img: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float]) -> None:
    for ch in range(3):
        img[:, ch][mask] = colour[ch]


def vehicle_regions(num_vehicles: int, num_regions: int, seed: int) -> np.ndarray:
    """The region each vehicle drove in: near-balanced, shuffled by the data seed."""
    rng = np.random.default_rng([seed, 7321])
    return rng.permutation(np.arange(num_vehicles) % num_regions).astype(np.int64)


def vehicle_mix(region: int, concentration: float, rng: np.random.Generator) -> np.ndarray:
    """A vehicle's class mix: Dirichlet around its region's public mix."""
    mix = REGION_MIX[region] / REGION_MIX[region].sum()
    return rng.dirichlet(concentration * mix + 1e-3)


def drive(
    region: int, n: int, concentration: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) a vehicle's camera records in `n` sightings while driving in `region`."""
    labels = rng.choice(len(SIGNS), size=n, p=vehicle_mix(region, concentration, rng))
    return render(labels, np.full(n, region), rng), labels.astype(np.int64)


def load_traffic_signs(params: dict[str, Any], *, test_fraction: float, seed: int) -> Dataset:
    """Per-vehicle sign images; each vehicle's records are split into train and test."""
    p = _validate(TrafficSignsParams, params)
    regions = vehicle_regions(p.num_vehicles, p.num_regions, seed)
    rng = np.random.default_rng([seed, 7322])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("xtr", "ytr", "gtr", "xte", "yte")}
    for vehicle, region in enumerate(regions):
        x, y = drive(int(region), p.images_per_vehicle, p.mix_concentration, rng)
        test = np.zeros(len(y), dtype=bool)
        test[rng.permutation(len(y))[: round(test_fraction * len(y))]] = True
        parts["xtr"].append(x[~test])
        parts["ytr"].append(y[~test])
        parts["gtr"].append(np.full(int((~test).sum()), vehicle, dtype=np.int64))
        parts["xte"].append(x[test])
        parts["yte"].append(y[test])
    data = _make(
        "traffic_signs",
        np.concatenate(parts["xtr"]),
        np.concatenate(parts["ytr"]),
        np.concatenate(parts["xte"]),
        np.concatenate(parts["yte"]),
        len(SIGNS),
    )
    public = public_images(p.public_images, seed) if p.public_images else (None, None)
    return dataclasses.replace(
        data, groups_train=np.concatenate(parts["gtr"]), x_public=public[0], y_public=public[1]
    )
