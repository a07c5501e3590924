"""Primitive shapes and the procedural category catalogue of the synthetic dataset.

A category is a fixed composition of primitives (polygons, ellipses, stars, arcs, lines, spirals ...)
laid out by a template (`star_in_circle`, `twin_spiral`, `heart_on_stick` ...). An instance is the same
composition with per-instance shape parameters, layout jitter and a smooth global deformation, so
categories differ only in shape; unseen categories are new compositions of the same primitives.
Coordinates are in a unit frame (y down, drawing fits in [-1, 1]²) until `to_canvas` maps them to pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATALOGUE_SEED = 20240611  # fixed: the catalogue never depends on the dataset seed
CATALOGUE_MAX = 200  # number of category definitions kept
DISTINCT_IOU = 0.8  # canonical outline masks of two categories overlap less than this


@dataclass(frozen=True)
class Part:
    """One primitive of an instance: a dense polyline, closed (fillable outline) or open (a stroke)."""

    points: np.ndarray  # (n, 2) float64, x right, y down
    closed: bool

    def transformed(self, fn: Callable[[np.ndarray], np.ndarray]) -> Part:
        return Part(fn(self.points), self.closed)


Rng = np.random.Generator | None


def _u(rng: Rng, lo: float, hi: float, canonical: float | None = None) -> float:
    """A uniform draw in [lo, hi], or the canonical value (midpoint by default) without an rng."""
    if rng is None:
        return (lo + hi) / 2 if canonical is None else canonical
    return float(rng.uniform(lo, hi))


def _densify(vertices: np.ndarray, closed: bool, per_edge: int = 12) -> np.ndarray:
    """Subdivide a polyline's edges so smooth warps bend straight edges a little (vertices are kept)."""
    pts = np.vstack([vertices, vertices[:1]]) if closed else vertices
    t = np.linspace(0.0, 1.0, per_edge, endpoint=False)[:, None]
    segs = [pts[i] + (pts[i + 1] - pts[i]) * t for i in range(len(pts) - 1)]
    out = np.vstack(segs)
    return out if closed else np.vstack([out, pts[-1:]])


def _polar(radii: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)


def _regular(n: int, rng: Rng, rot: float = -math.pi / 2) -> list[Part]:
    theta = rot + 2 * math.pi * np.arange(n) / n
    radii = np.ones(n) if rng is None else 1 + rng.uniform(-0.06, 0.06, n)
    if rng is not None:
        theta = theta + rng.uniform(-0.05, 0.05, n)
    return [Part(_densify(_polar(radii, theta), True), True)]


def _curve(fn_r: Callable[[np.ndarray], np.ndarray], n: int = 96, aspect: float = 1.0) -> list[Part]:
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    pts = _polar(fn_r(theta), theta)
    pts[:, 0] *= aspect
    return [Part(pts, True)]


def _circle(rng: Rng) -> list[Part]:
    return _curve(lambda t: np.ones_like(t), aspect=_u(rng, 0.94, 1.06, 1.0))


def _oval(rng: Rng) -> list[Part]:
    return _curve(lambda t: np.ones_like(t), aspect=_u(rng, 0.5, 0.62))


def _star(points: int, inner: tuple[float, float]) -> Callable[[Rng], list[Part]]:
    def build(rng: Rng) -> list[Part]:
        k = 2 * points
        ratio = _u(rng, *inner)
        radii = np.where(np.arange(k) % 2 == 0, 1.0, ratio)
        if rng is not None:
            radii = radii * (1 + rng.uniform(-0.05, 0.05, k))
        theta = -math.pi / 2 + 2 * math.pi * np.arange(k) / k
        return [Part(_densify(_polar(radii, theta), True, 6), True)]

    return build


def _poly(vertices: list[tuple[float, float]], jitter: float = 0.04) -> Callable[[Rng], list[Part]]:
    base = np.asarray(vertices, dtype=np.float64)

    def build(rng: Rng) -> list[Part]:
        v = base if rng is None else base + rng.uniform(-jitter, jitter, base.shape)
        return [Part(_densify(v, True), True)]

    return build


def _heart(rng: Rng) -> list[Part]:
    t = np.linspace(0, 2 * math.pi, 120, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1) / 16.0
    pts[:, 1] *= _u(rng, 0.9, 1.1, 1.0)
    return [Part(pts, True)]


def _crescent(rng: Rng) -> list[Part]:
    shift = _u(rng, 0.35, 0.5)
    t_out = np.linspace(-0.75 * math.pi, 0.75 * math.pi, 60) + math.pi  # left-facing outer arc
    outer = _polar(np.ones_like(t_out), t_out)
    # inner arc: a circle of radius r centred at (shift, 0) passing through the outer arc's end points
    end = outer[-1]
    r = math.hypot(end[0] - shift, end[1])
    a0 = math.atan2(end[1], end[0] - shift)
    a1 = math.atan2(outer[0][1], outer[0][0] - shift)
    a1 = a1 - 2 * math.pi if a1 > a0 else a1  # run back through the inner circle's left side
    t_in = np.linspace(a0, a1, 50)[1:-1]
    inner = np.stack([shift + r * np.cos(t_in), r * np.sin(t_in)], axis=1)
    return [Part(np.vstack([outer, inner]), True)]


def _teardrop(rng: Rng) -> list[Part]:
    t = np.linspace(0, 2 * math.pi, 100, endpoint=False)
    sharp = _u(rng, 1.6, 2.4)
    x = np.sin(t) * np.abs(np.sin(t / 2)) ** sharp
    y = -np.cos(t)
    return [Part(np.stack([x * 0.9, y], axis=1), True)]


def _semicircle(rng: Rng) -> list[Part]:
    t = np.linspace(math.pi, 2 * math.pi, 48)
    arc = _polar(np.ones_like(t), t)
    arc[:, 1] = arc[:, 1] * _u(rng, 0.85, 1.1, 1.0) + 0.5
    base = _densify(np.array([arc[-1], arc[0]]), False, 10)[1:-1]
    return [Part(np.vstack([arc, base]), True)]


def _cloud(rng: Rng) -> list[Part]:
    k = 6 if rng is None else int(rng.integers(5, 8))
    depth = _u(rng, 0.14, 0.22)
    return _curve(lambda t: 1 - depth + depth * np.abs(np.sin(k * t / 2)) ** 0.5, n=160, aspect=1.2)


def _gear(rng: Rng) -> list[Part]:
    teeth = 8 if rng is None else int(rng.integers(7, 10))
    depth = _u(rng, 0.2, 0.28)
    return _curve(lambda t: 1 - depth * (np.sin(teeth * t) < 0), n=teeth * 16)


def _flower(rng: Rng) -> list[Part]:
    petals = 5 if rng is None else int(rng.integers(5, 7))
    depth = _u(rng, 0.35, 0.5)
    return _curve(lambda t: 1 - depth + depth * np.abs(np.cos(petals * t / 2)), n=180)


def _leaf(rng: Rng) -> list[Part]:
    w = _u(rng, 0.38, 0.5)
    t = np.linspace(-1, 1, 40)
    right = np.stack([w * (1 - t**2), t], axis=1)
    left = np.stack([-w * (1 - t[1:-1] ** 2), t[1:-1]], axis=1)[::-1]
    return [Part(np.vstack([right, left]), True)]


# open primitives ---------------------------------------------------------------------------------


def _line(rng: Rng) -> list[Part]:
    return [Part(_densify(np.array([[0.0, -1.0], [0.0, 1.0]]), False, 24), False)]


def _arc(rng: Rng) -> list[Part]:
    span = _u(rng, 0.55, 0.7) * 2 * math.pi
    t = np.linspace(-math.pi / 2 - span / 2, -math.pi / 2 + span / 2, 60)
    return [Part(_polar(np.ones_like(t), t) + np.array([0.0, 0.4]), False)]


def _spiral(rng: Rng) -> list[Part]:
    turns = _u(rng, 2.2, 2.8)
    t = np.linspace(0, turns * 2 * math.pi, int(60 * turns))
    r = 0.08 + 0.92 * t / t[-1]
    return [Part(_polar(r, t + _u(rng, 0, 2 * math.pi, 0.0)), False)]


def _zigzag(rng: Rng) -> list[Part]:
    n = 5 if rng is None else int(rng.integers(4, 7))
    x = np.linspace(-1, 1, n + 1)
    y = np.where(np.arange(n + 1) % 2 == 0, -0.35, 0.35) * _u(rng, 0.8, 1.2, 1.0)
    return [Part(_densify(np.stack([x, y], axis=1), False, 8), False)]


def _wave(rng: Rng) -> list[Part]:
    x = np.linspace(-1, 1, 80)
    cycles = _u(rng, 1.6, 2.4, 2.0)
    return [Part(np.stack([x, 0.3 * np.sin(cycles * math.pi * x)], axis=1), False)]


def _loop(rng: Rng) -> list[Part]:
    t = np.linspace(-math.pi, 3 * math.pi, 140)
    k = _u(rng, 0.45, 0.6)
    x = t / (2 * math.pi) - k * np.sin(t) - 0.5
    y = -0.6 * np.cos(t) * _u(rng, 0.85, 1.15, 1.0)
    return [Part(np.stack([x, y], axis=1), False)]


_CROSS = [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1)]
_CROSS += [(-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]

CLOSED: dict[str, Callable[[Rng], list[Part]]] = {
    "circle": _circle,
    "oval": _oval,
    "triangle": lambda rng: _regular(3, rng),
    "square": lambda rng: _regular(4, rng, rot=-math.pi / 4),
    "diamond": _poly([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]),
    "pentagon": lambda rng: _regular(5, rng),
    "hexagon": lambda rng: _regular(6, rng, rot=0.0),
    "octagon": lambda rng: _regular(8, rng, rot=math.pi / 8),
    "brick": _poly([(-1, -0.45), (1, -0.45), (1, 0.45), (-1, 0.45)], 0.03),
    "star": _star(5, (0.38, 0.5)),
    "sunburst": _star(10, (0.6, 0.72)),
    "heart": _heart,
    "cross": _poly(_CROSS),
    "crescent": _crescent,
    "arrow": _poly([(-1, -0.25), (0.15, -0.25), (0.15, -0.65), (1, 0), (0.15, 0.65), (0.15, 0.25), (-1, 0.25)]),
    "teardrop": _teardrop,
    "trapezoid": _poly([(-0.5, -0.6), (0.5, -0.6), (1, 0.6), (-1, 0.6)]),
    "dome": _semicircle,
    "cloud": _cloud,
    "gear": _gear,
    "flower": _flower,
    "bolt": _poly([(-0.15, -1), (0.55, -1), (0.1, -0.15), (0.55, -0.15), (-0.35, 1), (-0.05, 0.1), (-0.5, 0.1)]),
    "house": _poly([(0, -1), (0.85, -0.25), (0.85, 0.9), (-0.85, 0.9), (-0.85, -0.25)]),
    "leaf": _leaf,
    "tee": _poly(
        [(-1, -0.9), (1, -0.9), (1, -0.45), (0.25, -0.45), (0.25, 0.9), (-0.25, 0.9), (-0.25, -0.45), (-1, -0.45)]
    ),
}
OPEN: dict[str, Callable[[Rng], list[Part]]] = {
    "line": _line,
    "arc": _arc,
    "spiral": _spiral,
    "zigzag": _zigzag,
    "wave": _wave,
    "loop": _loop,
}
PRIMITIVES: dict[str, Callable[[Rng], list[Part]]] = {**CLOSED, **OPEN}


# layout helpers ----------------------------------------------------------------------------------


def _bbox(parts: list[Part]) -> tuple[np.ndarray, np.ndarray]:
    pts = np.vstack([p.points for p in parts])
    return pts.min(axis=0), pts.max(axis=0)


def normalise(parts: list[Part], extent: float = 1.0) -> list[Part]:
    """Centre the drawing and scale it uniformly so its larger side spans [-extent, extent]."""
    lo, hi = _bbox(parts)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6)
    return [p.transformed(lambda q: (q - centre) * (extent / half)) for p in parts]


def _place(parts: list[Part], scale: float, dx: float = 0.0, dy: float = 0.0, rot: float = 0.0) -> list[Part]:
    c, s = math.cos(rot), math.sin(rot)
    m = np.array([[c, s], [-s, c]]) * scale
    return [p.transformed(lambda q: q @ m + [dx, dy]) for p in normalise(parts)]


def _j(rng: Rng, amount: float) -> float:
    return 0.0 if rng is None else float(rng.uniform(-amount, amount))


def _s(rng: Rng, amount: float) -> float:
    return 1.0 if rng is None else float(rng.uniform(1 - amount, 1 + amount))


# templates: (template, primitive names) -> builder -------------------------------------------------


def _build(template: str, prims: tuple[str, ...], rng: Rng) -> list[Part]:
    """One instance of a composition: per-primitive variation plus layout jitter."""

    def prim(i: int) -> list[Part]:
        return PRIMITIVES[prims[i]](rng)

    if template == "single":
        return prim(0)
    if template == "in":  # prims[0] inside prims[1]
        inner = _place(prim(0), 0.42 * _s(rng, 0.1), _j(rng, 0.06), _j(rng, 0.06))
        return [*_place(prim(1), 1.0), *inner]
    if template == "double":  # concentric copies
        return [*_place(prim(0), 1.0), *_place(prim(0), 0.55 * _s(rng, 0.08), _j(rng, 0.04), _j(rng, 0.04))]
    if template == "on":  # prims[0] on top of prims[1]
        top = _place(prim(0), 0.42 * _s(rng, 0.1), _j(rng, 0.08), -0.62 + _j(rng, 0.04))
        return [*_place(prim(1), 0.6, 0.0, 0.42), *top]
    if template == "and":  # side by side
        left = _place(prim(0), 0.5 * _s(rng, 0.08), -0.55, _j(rng, 0.08))
        return [*left, *_place(prim(1), 0.5 * _s(rng, 0.08), 0.55, _j(rng, 0.08))]
    if template == "twin":
        gap = 0.55 + _j(rng, 0.05)
        return [*_place(prim(0), 0.5, -gap, _j(rng, 0.06)), *_place(prim(0), 0.5 * _s(rng, 0.08), gap, _j(rng, 0.06))]
    if template == "triple":  # triangle arrangement
        out: list[Part] = []
        for x, y in [(0.0, -0.55), (-0.6, 0.45), (0.6, 0.45)]:
            out += _place(prim(0), 0.42 * _s(rng, 0.08), x, y)
        return out
    if template == "stack":  # three in a column, shrinking upwards
        out = []
        for y, sc in [(0.7, 0.42), (0.0, 0.34), (-0.6, 0.26)]:
            out += _place(prim(0), sc * _s(rng, 0.06), _j(rng, 0.05), y)
        return out
    if template == "ring":  # wreath of small copies around an empty centre
        n = 6
        return [
            part
            for k in range(n)
            for part in _place(
                PRIMITIVES[prims[0]](rng),
                0.26 * _s(rng, 0.08),
                0.72 * math.cos(2 * math.pi * k / n),
                0.72 * math.sin(2 * math.pi * k / n),
            )
        ]
    if template == "stick":  # prims[0] on a vertical stick
        stick = _place(_line(rng), 0.62, _j(rng, 0.03), 0.38)
        return [*stick, *_place(prim(0), 0.42 * _s(rng, 0.08), _j(rng, 0.03), -0.52)]
    if template == "with":  # closed prims[0] with an open prims[1] trailing below
        body = _place(prim(0), 0.55 * _s(rng, 0.06), 0.0, -0.4)
        tail = _place(PRIMITIVES[prims[1]](rng), 0.45, _j(rng, 0.05), 0.52, rot=math.pi / 2)
        return [*body, *tail]
    if template == "crossed":  # closed prims[0] struck through by a diagonal line
        body = _place(prim(0), 0.8)
        a = math.pi / 4 + _j(rng, 0.15)
        line = _place(_line(rng), 1.05, 0.0, 0.0, rot=a)
        return [*body, *line]
    if template == "open_in":  # open prims[0] inside closed prims[1]
        return [*_place(prim(1), 1.0), *_place(prim(0), 0.5 * _s(rng, 0.08), _j(rng, 0.05), _j(rng, 0.05))]
    raise ValueError(f"unknown composition template {template!r}")


_NAMES: dict[str, Callable[[tuple[str, ...]], str]] = {
    "single": lambda p: p[0],
    "in": lambda p: f"{p[0]}_in_{p[1]}",
    "double": lambda p: f"double_{p[0]}",
    "on": lambda p: f"{p[0]}_on_{p[1]}",
    "and": lambda p: f"{p[0]}_and_{p[1]}",
    "twin": lambda p: f"twin_{p[0]}",
    "triple": lambda p: f"triple_{p[0]}",
    "stack": lambda p: f"stacked_{p[0]}",
    "ring": lambda p: f"ring_of_{p[0]}",
    "stick": lambda p: f"{p[0]}_on_stick",
    "with": lambda p: f"{p[0]}_with_{p[1]}",
    "crossed": lambda p: f"crossed_{p[0]}",
    "open_in": lambda p: f"{p[0]}_in_{p[1]}",
}


@dataclass(frozen=True)
class Category:
    """A procedural category: a named composition template applied to fixed primitives."""

    name: str
    template: str
    primitives: tuple[str, ...]

    def build(self, rng: Rng = None) -> list[Part]:
        """Parts of one instance in the unit frame; `rng=None` gives the canonical (undeformed) shape."""
        return normalise(_build(self.template, self.primitives, rng))

    def instance(self, rng: np.random.Generator) -> list[Part]:
        """A deformed instance: shape variation, layout jitter and a smooth global warp."""
        return deform(self.build(rng), rng)


def deform(parts: list[Part], rng: np.random.Generator) -> list[Part]:
    """Global per-instance deformation: small rotation, anisotropy, shear and a smooth sinusoidal warp."""
    rot = rng.uniform(-0.2, 0.2)
    sx, sy = rng.uniform(0.92, 1.08, 2)
    shear = rng.uniform(-0.08, 0.08)
    c, s = math.cos(rot), math.sin(rot)
    m = np.array([[sx, shear], [0.0, sy]]) @ np.array([[c, s], [-s, c]])
    waves = [(rng.uniform(0.8, 2.2, 2) * rng.choice([-1, 1], 2), rng.uniform(0, 2 * math.pi), rng.uniform(0.02, 0.05))]
    waves.append(
        (rng.uniform(0.8, 2.2, 2) * rng.choice([-1, 1], 2), rng.uniform(0, 2 * math.pi), rng.uniform(0.02, 0.05))
    )

    def warp(q: np.ndarray) -> np.ndarray:
        q = q @ m
        for freq, phase, amp in waves:
            arg = q @ freq + phase
            q = q + amp * np.stack([np.sin(arg), np.cos(arg * 1.3)], axis=1)
        return q

    return normalise([p.transformed(warp) for p in parts])


def to_canvas(parts: list[Part], size: int, rng: np.random.Generator | None) -> list[Part]:
    """Map unit-frame parts to pixel coordinates (pixel centres 0…size-1) with a random fill and offset."""
    fill = 0.74 if rng is None else rng.uniform(0.62, 0.84)
    half = (size - 1) / 2
    lo, hi = _bbox(parts)
    room = np.maximum(0.0, 1 - fill * np.maximum(np.abs(lo), np.abs(hi)) - 0.04)
    shift = np.zeros(2) if rng is None else rng.uniform(-room, room)
    return [p.transformed(lambda q: (q * fill + shift) * half + half) for p in parts]


# catalogue -------------------------------------------------------------------------------------


def _candidates() -> dict[str, list[Category]]:
    closed, open_ = list(CLOSED), [o for o in OPEN if o != "line"]
    c: dict[str, list[Category]] = {t: [] for t in _NAMES}

    def add(template: str, *prims: str) -> None:
        c[template].append(Category(_NAMES[template](prims), template, prims))

    for a in closed:
        add("single", a)
        add("double", a)
        add("twin", a)
        add("triple", a)
        add("stack", a)
        add("ring", a)
        add("stick", a)
        add("crossed", a)
        for o in open_:
            add("with", a, o)
        for b in closed:
            if a != b:
                add("in", a, b)
                add("on", a, b)
                if a < b:
                    add("and", a, b)
    for o in open_:
        add("single", o)
        add("twin", o)
        for b in closed:
            add("open_in", o, b)
    return c


def outline_mask(parts: list[Part], size: int = 64, width: int = 3) -> np.ndarray:
    """Boolean mask of the parts' outlines (dilated a little): a shape signature for distinctness checks."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for p in to_canvas(parts, size, None):
        pts = [tuple(q) for q in p.points.tolist()]
        draw.line([*pts, pts[0]] if p.closed else pts, fill=255, width=width)
    return np.asarray(img.filter(ImageFilter.MaxFilter(3))) > 0


def _iou(mask: np.ndarray, others: np.ndarray) -> np.ndarray:
    inter = (others & mask).sum(axis=(1, 2))
    union = (others | mask).sum(axis=(1, 2))
    return inter / np.maximum(union, 1)


@cache
def category_catalogue() -> tuple[Category, ...]:
    """The fixed, ordered category definitions (first N are used for an N-class dataset).

    Templates are interleaved round-robin (in a fixed shuffled order) so that any prefix mixes
    single shapes and compositions; a candidate whose canonical outline overlaps an accepted one by
    IoU >= DISTINCT_IOU is skipped, so every pair of categories differs visibly in shape.
    """
    rng = np.random.default_rng(CATALOGUE_SEED)
    pools = _candidates()
    order = list(pools)
    for t in order:
        rng.shuffle(pools[t])
    pools["single"].sort(key=lambda cat: cat.primitives[0] in OPEN)  # plain shapes first
    accepted: list[Category] = []
    masks = np.zeros((CATALOGUE_MAX, 64, 64), dtype=bool)
    names: set[str] = set()
    while len(accepted) < CATALOGUE_MAX and any(pools.values()):
        for t in order:
            if not pools[t] or len(accepted) >= CATALOGUE_MAX:
                continue
            cat = pools[t].pop(0)
            mask = outline_mask(cat.build(None))
            if cat.name in names or (accepted and _iou(mask, masks[: len(accepted)]).max() >= DISTINCT_IOU):
                continue
            masks[len(accepted)] = mask
            accepted.append(cat)
            names.add(cat.name)
    return tuple(accepted)
