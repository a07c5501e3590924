"""Photo and sketch rendering of one category instance (pixel-space parts from `shapes.to_canvas`).

Photos: filled, coloured and textured parts with lighting (shading, bevel, highlight, drop shadow) on
varied backgrounds, plus sensor noise and blur; colours are random per instance so only shape tells
classes apart. Sketches: the same instance traced as hand-like strokes (drawer misalignment, jitter,
overshoot, broken strokes), with abstraction (missing parts, extra strokes) and several drawing styles.
"""

from __future__ import annotations

import colorsys
import itertools
import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sbir.data.synth.shapes import Part

SUPERSAMPLE = 2  # masks and sketches are drawn at 2x and box-reduced for anti-aliasing
SKETCH_STYLES: dict[str, float] = {"clean": 0.3, "pencil": 0.25, "marker": 0.15, "sketchy": 0.15, "shaded": 0.15}


# helpers ---------------------------------------------------------------------------------------


@cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel coordinates in [0, 1] (x, y), cached per size."""
    v = np.linspace(0.0, 1.0, size, dtype=np.float32)
    return np.meshgrid(v, v)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour shaped (3, 1, 1) to broadcast over channel-first (3, H, W) images."""
    rgb = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.asarray(rgb, dtype=np.float32).reshape(3, 1, 1)


def _xy(points: np.ndarray, scale: int = 1) -> list[tuple[float, float]]:
    """Pixel-centre coordinates to PIL drawing coordinates at a supersampling scale."""
    return [tuple(q) for q in ((points + 0.5) * scale - 0.5).tolist()]


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1] (H, W): a tiny random grid upsampled bicubically."""
    small = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
    return np.clip(np.asarray(small.resize((size, size), Image.Resampling.BICUBIC)), 0.0, 1.0)


def _gauss2d(size: int, cx: float, cy: float, sigma: float) -> np.ndarray:
    """exp(-d²/2σ²) around (cx, cy) in normalised coordinates, as an outer product (separable, cheap)."""
    v = np.linspace(0.0, 1.0, size, dtype=np.float32)
    return np.outer(np.exp(-((v - cy) ** 2) / (2 * sigma * sigma)), np.exp(-((v - cx) ** 2) / (2 * sigma * sigma)))


def _mask(parts: list[Part], size: int, stroke_width: float) -> Image.Image:
    """Anti-aliased coverage mask ("L") of closed parts (filled) and open parts (thick strokes)."""
    ss = SUPERSAMPLE
    img = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(img)
    w = max(1, round(stroke_width * ss))
    for part in parts:
        pts = _xy(part.points, ss)
        if part.closed:
            draw.polygon(pts, fill=255)
        else:
            draw.line(pts, fill=255, width=w, joint="curve")
            for x, y in (pts[0], pts[-1]):
                draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=255)
    return img.reduce(ss)


# photos ----------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, size: int, hue: float) -> np.ndarray:
    """A varied background (gradient, radial, mottled, stripes, checker or horizon scene), (3, H, W) in [0, 1]."""
    xx, yy = _grid(size)
    c1 = _hsv(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.05, 0.5), rng.uniform(0.45, 0.95))
    c2 = _hsv(hue + rng.uniform(-0.2, 0.2), rng.uniform(0.05, 0.6), rng.uniform(0.3, 0.95))
    kind = rng.choice(["gradient", "radial", "mottled", "stripes", "checker", "scene"])
    if kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a), 0, 1)
    elif kind == "radial":
        cx, cy = rng.uniform(0.2, 0.8, 2)
        t = np.clip(np.hypot(xx - cx, yy - cy) * 1.4, 0, 1)
    elif kind == "mottled":
        t = _lowfreq(rng, size, int(rng.integers(3, 8)))
    elif kind == "stripes":
        a, f = rng.uniform(0, math.pi), rng.uniform(6, 20)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * f * (xx * math.cos(a) + yy * math.sin(a)))
        t = t * rng.uniform(0.2, 0.6)
    elif kind == "checker":
        n = int(rng.integers(4, 12))
        t = (((xx * n).astype(np.int32) + (yy * n).astype(np.int32)) % 2).astype(np.float32) * rng.uniform(0.15, 0.5)
    else:  # scene: sky gradient above a textured ground
        horizon = rng.uniform(0.45, 0.8)
        ground = (yy > horizon + 0.03 * np.sin(xx * rng.uniform(3, 9))).astype(np.float32)
        t = ground * (0.7 + 0.3 * _lowfreq(rng, size, 12)) + (1 - ground) * yy * 0.4
    bg = c1 * (1 - t) + c2 * t
    # faint, blurred clutter blobs so the background is not trivially uniform
    for _ in range(int(rng.integers(0, 4))):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        blob = _gauss2d(size, cx, cy, r)
        bg = bg * (1 - 0.25 * blob) + _hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.3, 1.0)) * 0.25 * blob
    return bg.astype(np.float32)


def _texture(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, c1: np.ndarray, c2: np.ndarray, size: int
) -> np.ndarray:
    """Fill of one part on the grid window (xx, yy): solid, stripes, dots, checker, gradient or mottled."""
    kind = rng.choice(["solid", "solid", "stripes", "dots", "checker", "gradient", "mottled"])
    if kind == "solid":
        return np.broadcast_to(c1, (3, *xx.shape))
    if kind == "stripes":
        a, f = rng.uniform(0, math.pi), rng.uniform(5, 14)
        t = (np.sin(2 * math.pi * f * (xx * math.cos(a) + yy * math.sin(a))) > 0).astype(np.float32)
    elif kind == "dots":
        f = rng.uniform(6, 14)
        t = ((np.sin(2 * math.pi * f * xx) * np.sin(2 * math.pi * f * yy)) > 0.45).astype(np.float32)
    elif kind == "checker":
        n = int(rng.integers(5, 12))
        t = (((xx * n).astype(np.int32) + (yy * n).astype(np.int32)) % 2).astype(np.float32)
    elif kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a), 0, 1)
    else:  # mottled: smooth noise over the whole canvas, cut to the window
        cells = int(rng.integers(4, 10))
        full = _lowfreq(rng, size, cells)
        i0, j0 = round(float(yy[0, 0]) * (size - 1)), round(float(xx[0, 0]) * (size - 1))
        t = full[i0 : i0 + xx.shape[0], j0 : j0 + xx.shape[1]]
    return c1 * (1 - t) + c2 * t


def _window(part: Part, size: int, margin: float) -> tuple[int, int, int, int]:
    """Pixel window (x0, y0, x1, y1) around a part, grown by `margin`, clipped to the canvas."""
    lo = np.floor(part.points.min(axis=0) - margin).astype(int)
    hi = np.ceil(part.points.max(axis=0) + margin).astype(int) + 1
    x0, y0 = np.clip(lo, 0, size)
    x1, y1 = np.clip(hi, 0, size)
    return int(x0), int(y0), int(max(x1, x0 + 1)), int(max(y1, y0 + 1))


def render_photo(parts: list[Part], size: int, rng: np.random.Generator) -> Image.Image:
    """A photo of the instance: lit, coloured, textured parts with a shadow on a varied background."""
    xx, yy = _grid(size)
    bg_hue = rng.random()
    img = _background(rng, size, bg_hue)
    stroke_w = size * rng.uniform(0.035, 0.06)
    light = rng.uniform(0, 2 * math.pi)
    lx, ly = math.cos(light), math.sin(light)

    union = _mask(parts, size, stroke_w)
    # drop shadow cast away from the light
    off = size * rng.uniform(0.015, 0.045)
    shadow = union.filter(ImageFilter.GaussianBlur(size * 0.02)).transform(
        union.size, Image.Transform.AFFINE, (1, 0, -lx * off, 0, 1, -ly * off), fillcolor=0
    )
    img *= 1 - rng.uniform(0.25, 0.5) * (np.asarray(shadow, dtype=np.float32) / 255.0)

    # object colours: hues far from the background hue, per-part palette (random per instance)
    obj_hue = bg_hue + rng.uniform(0.25, 0.75)
    shared = rng.random() < 0.4
    u = np.asarray(union, dtype=np.float32) / 255.0
    cy, cx = (float((yy * u).sum() / max(u.sum(), 1)), float((xx * u).sum() / max(u.sum(), 1)))
    shade_k = rng.uniform(0.2, 0.45)
    hx, hy = cx - lx * 0.12, cy - ly * 0.12
    highlight = _gauss2d(size, hx, hy, rng.uniform(0.04, 0.09)) * rng.uniform(0.2, 0.5)
    outline = rng.random() < 0.4
    blur = size * 0.025
    margin = stroke_w + 3 * blur + 2
    for i, part in enumerate(parts):
        hue = obj_hue + (0.0 if shared else rng.uniform(-0.25, 0.25) * (i > 0))
        c1 = _hsv(hue, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
        c2 = _hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.2, 1.0), rng.uniform(0.25, 1.0))
        x0, y0, x1, y1 = _window(part, size, margin)
        win = (slice(y0, y1), slice(x0, x1))
        cwin = (slice(None), *win)
        m_img = _mask([part], size, stroke_w).crop((x0, y0, x1, y1))
        m = np.asarray(m_img, dtype=np.float32) / 255.0
        bevel = np.asarray(m_img.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32) / 255.0
        shade = 1 + shade_k * np.clip(((xx[win] - cx) * -lx + (yy[win] - cy) * -ly) * 3, -1, 1)
        lit = shade * (0.72 + 0.28 * np.clip(bevel * 2 - 0.3, 0, 1))
        tex = _texture(rng, xx[win], yy[win], c1, c2, size) * lit
        tex = tex + (1 - tex) * (highlight[win] * bevel)
        img[cwin] = img[cwin] * (1 - m) + tex * m
        if outline:
            edge = Image.new("L", (x1 - x0, y1 - y0), 0)
            pts = _xy(part.points - [x0, y0])
            ImageDraw.Draw(edge).line([*pts, pts[0]] if part.closed else pts, fill=255, width=1)
            e = np.asarray(edge, dtype=np.float32) / 255.0 * 0.5
            img[cwin] = img[cwin] * (1 - e) + (c1 * 0.3) * e

    # camera: exposure, contrast, colour cast, vignette, noise, occasional defocus
    contrast = rng.uniform(0.85, 1.15)
    cast = 1 + rng.uniform(-0.05, 0.05, (3, 1, 1)).astype(np.float32)
    gain, offset = contrast * cast, (0.5 - 0.5 * contrast + rng.uniform(-0.06, 0.06)) * cast
    v = np.linspace(-0.5, 0.5, size, dtype=np.float32) ** 2
    vignette = 1 - rng.uniform(0.0, 0.35) * (v[:, None] + v[None, :]) * 2
    img = (img * gain + offset) * vignette
    img += rng.standard_normal((3, size, size), dtype=np.float32) * rng.uniform(0.005, 0.03)
    out = Image.fromarray(np.ascontiguousarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)))
    if rng.random() < 0.25:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9) * size / 224))
    return out


# sketches --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SketchStyle:
    """How strokes are inked: style name, pen width (px at the output size) and ink grey level."""

    name: str
    width: float
    ink: int


def _resample(points: np.ndarray, closed: bool, step: float) -> np.ndarray:
    """Points evenly spaced `step` pixels apart along the polyline (closed polylines are closed)."""
    pts = np.vstack([points, points[:1]]) if closed else points
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(cum[-1] / step) + 1)
    s = np.linspace(0.0, cum[-1], n)
    return np.stack([np.interp(s, cum, pts[:, 0]), np.interp(s, cum, pts[:, 1])], axis=1)


def _jitter(rng: np.random.Generator, pts: np.ndarray, size: int, amount: float) -> np.ndarray:
    """Hand tremor: a smooth random drift plus a little high-frequency noise."""
    n = len(pts)
    walk = np.cumsum(rng.standard_normal((n, 2)), axis=0)
    k = np.ones(min(7, n)) / min(7, n)
    smooth = np.stack([np.convolve(walk[:, 0], k, "same"), np.convolve(walk[:, 1], k, "same")], axis=1)
    smooth -= np.linspace(smooth[0], smooth[-1], n) * rng.uniform(0.3, 1.0)
    smooth /= max(float(np.abs(smooth).max()), 1e-6)
    return pts + smooth * amount * size * rng.uniform(0.4, 1.0) + rng.normal(0, 0.0025 * size, (n, 2))


def _overshoot(rng: np.random.Generator, pts: np.ndarray, size: int) -> np.ndarray:
    """Extend a stroke's ends a little along their tangents, as quick hands do."""
    if len(pts) < 3:
        return pts
    out = [pts]
    for end, prev, front in ((pts[-1], pts[-2], False), (pts[0], pts[1], True)):
        if rng.random() < 0.35:
            d = end - prev
            d = d / max(float(np.linalg.norm(d)), 1e-6)
            ext = end + d * size * rng.uniform(0.01, 0.035)
            out = [ext[None], *out] if front else [*out, ext[None]]
    return np.vstack(out)


def _hatching(rng: np.random.Generator, part: Part, size: int) -> list[np.ndarray]:
    """Short parallel shading strokes clipped to a closed part (a sketch's 'extra' strokes)."""
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon(_xy(part.points), fill=1)
    mask = np.asarray(img, dtype=bool)
    if mask.sum() < 20:
        return []
    a = rng.uniform(0.5, 1.1) * rng.choice([-1, 1])
    d = np.array([math.cos(a), math.sin(a)])
    nrm = np.array([-d[1], d[0]])
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs, ys], axis=1).astype(np.float64)
    proj = pts @ nrm
    lo, hi = float(proj.min()), float(proj.max())
    band = (lo + (hi - lo) * rng.uniform(0.0, 0.4), lo + (hi - lo) * rng.uniform(0.6, 1.0))
    step = max(2.0, size * rng.uniform(0.03, 0.05))
    strokes = []
    along = pts @ d
    for off in np.arange(band[0] + step / 2, band[1], step):
        sel = np.abs(proj - off) < 0.5
        if sel.sum() < 4:
            continue
        t0, t1 = float(along[sel].min()), float(along[sel].max())
        shrink = (t1 - t0) * 0.1
        t0, t1 = t0 + shrink, t1 - shrink
        if t1 - t0 < 3:
            continue
        strokes.append(np.linspace(nrm * off + d * t0, nrm * off + d * t1, 4))
    return strokes


def sketch_strokes(parts: list[Part], size: int, rng: np.random.Generator) -> tuple[list[np.ndarray], SketchStyle]:
    """Hand-drawn strokes (pixel coordinates) tracing the instance, and the style to ink them with."""
    names = list(SKETCH_STYLES)
    name = str(rng.choice(names, p=np.array(list(SKETCH_STYLES.values())) / sum(SKETCH_STYLES.values())))
    scale = size / 224
    width, ink = {
        "clean": (rng.uniform(1.8, 2.6), int(rng.integers(0, 30))),
        "pencil": (rng.uniform(1.2, 1.8), int(rng.integers(40, 90))),
        "marker": (rng.uniform(3.5, 5.0), int(rng.integers(0, 20))),
        "sketchy": (rng.uniform(1.3, 2.0), int(rng.integers(0, 50))),
        "shaded": (rng.uniform(1.6, 2.2), int(rng.integers(0, 40))),
    }[name]
    style = SketchStyle(name, max(1.0, width * scale), ink)

    # drawer misalignment: sketches follow their photo only roughly
    c = (size - 1) / 2
    rot, sc = rng.uniform(-0.07, 0.07), rng.uniform(0.93, 1.05)
    shift = rng.uniform(-0.03, 0.03, 2) * size
    m = np.array([[math.cos(rot), math.sin(rot)], [-math.sin(rot), math.cos(rot)]]) * sc

    # abstraction: drop small parts now and then (never the largest, never everything)
    keep = list(parts)
    if len(parts) >= 3 and rng.random() < 0.15:
        areas = [float(np.ptp(p.points[:, 0]) * np.ptp(p.points[:, 1])) for p in parts]
        smallest = int(np.argmin(areas))
        keep = [p for i, p in enumerate(parts) if i != smallest]

    step = max(1.5, size / 60)
    jit = {"clean": 0.008, "pencil": 0.01, "marker": 0.007, "sketchy": 0.014, "shaded": 0.009}[name]
    strokes: list[np.ndarray] = []
    for part in keep:
        pts = _resample(part.points, part.closed, step)
        n = len(pts)
        if part.closed:
            pts = np.roll(pts[:-1], -int(rng.integers(0, n - 1)), axis=0)
            pts = np.vstack([pts, pts[:2]])  # close with a small overlap
            n = len(pts)
        pieces = int(rng.choice([1, 1, 2, 2, 3])) if n > 12 else 1
        cuts = np.sort(rng.choice(np.arange(3, n - 3), pieces - 1, replace=False)) if pieces > 1 else []
        bounds = [0, *cuts, n]
        for a, b in itertools.pairwise(bounds):
            a2 = max(0, a - int(rng.integers(0, 2)))
            seg = pts[a2:b]
            if len(seg) > 8 and rng.random() < 0.08:  # a gap: part of the contour is left out
                seg = seg[: int(len(seg) * rng.uniform(0.5, 0.85))]
            seg = _overshoot(rng, _jitter(rng, seg, size, jit), size)
            strokes.append(seg)
            if name == "sketchy" or (name == "pencil" and rng.random() < 0.3):
                strokes.append(_jitter(rng, seg, size, jit * 0.8))  # retraced stroke
    if name == "shaded" or rng.random() < 0.1:
        closed = [p for p in keep if p.closed]
        if closed:
            target = closed[int(rng.integers(0, len(closed)))]
            strokes += [_jitter(rng, s_, size, 0.003) for s_ in _hatching(rng, target, size)]
    if rng.random() < 0.15:  # an extra stroke: a ground line under the object
        ys = np.vstack([p.points for p in keep])
        y = float(ys[:, 1].max()) + size * rng.uniform(0.02, 0.05)
        x0, x1 = float(ys[:, 0].min()), float(ys[:, 0].max())
        line = _resample(np.array([[x0 - size * 0.05, y], [x1 + size * 0.05, y]]), False, step)
        strokes.append(_jitter(rng, line, size, jit))
    strokes = [(s_ - c) @ m + c + shift for s_ in strokes]
    return [np.clip(s_, 0, size - 1) for s_ in strokes], style


def draw_sketch(strokes: list[np.ndarray], size: int, style: SketchStyle) -> Image.Image:
    """Ink strokes (pixel coordinates) on white with the style's pen; anti-aliased, RGB like Sketchy PNGs."""
    ss = SUPERSAMPLE
    img = Image.new("L", (size * ss, size * ss), 255)
    draw = ImageDraw.Draw(img)
    w = max(1, round(style.width * ss))
    for stroke in strokes:
        pts = _xy(stroke, ss)
        if len(pts) > 1:
            draw.line(pts, fill=style.ink, width=w, joint="curve")
        for x, y in (pts[0], pts[-1]):
            draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=style.ink)
    return img.reduce(ss).convert("RGB")
