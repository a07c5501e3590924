"""A tiny in-memory sketch/photo generator: a few shape classes, for smoke runs of the core library.

Each class is a shape (regular polygon with n sides, star, ellipse, cross...). Photos are filled,
coloured shapes on a coloured background; sketches are jittered black outlines of the same instance.
The full procedural dataset on disk (`sbir data synth`) builds on the same idea at scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

TOY_CLASSES = ["triangle", "square", "pentagon", "hexagon", "star", "ellipse", "cross", "arrow"]


@dataclass
class ToyPair:
    sketch: Image.Image
    photo: Image.Image
    label: int


def _outline(name: str, rng: np.random.Generator, size: int) -> list[tuple[float, float]]:
    cx, cy = size / 2 + rng.uniform(-0.06, 0.06) * size, size / 2 + rng.uniform(-0.06, 0.06) * size
    r = size * rng.uniform(0.28, 0.38)
    rot = rng.uniform(0, 2 * math.pi)
    aspect = rng.uniform(0.8, 1.2)

    def ring(radii: list[float]) -> list[tuple[float, float]]:
        n = len(radii)
        return [
            (cx + rad * math.cos(rot + 2 * math.pi * i / n) * aspect, cy + rad * math.sin(rot + 2 * math.pi * i / n))
            for i, rad in enumerate(radii)
        ]

    sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
    if name in sides:
        return ring([r] * sides[name])
    if name == "star":
        return ring([r if i % 2 == 0 else r * 0.45 for i in range(10)])
    if name == "ellipse":
        return ring([r] * 40)
    if name == "cross":
        w = r * 0.35
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w)]
        pts += [(w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
    else:  # arrow
        w = r * 0.3
        pts = [(-r, -w), (0, -w), (0, -r * 0.7), (r, 0), (0, r * 0.7), (0, w), (-r, w)]
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + (x * c - y * s) * aspect, cy + x * s + y * c) for x, y in pts]


def make_pair(label: int, seed: int, size: int = 64) -> ToyPair:
    """One sketch/photo pair of class `label`, deterministic in (label, seed)."""
    rng = np.random.default_rng([label, seed])
    outline = _outline(TOY_CLASSES[label], rng, size)
    background = tuple(int(v) for v in rng.integers(60, 255, 3))
    colour = tuple(int(v) for v in rng.integers(0, 200, 3))
    photo = Image.new("RGB", (size, size), background)
    ImageDraw.Draw(photo).polygon(outline, fill=colour)
    noise = rng.normal(0, 8, (size, size, 3))
    photo = Image.fromarray(np.clip(np.asarray(photo, dtype=np.float32) + noise, 0, 255).astype(np.uint8))
    sketch = Image.new("RGB", (size, size), (255, 255, 255))
    jitter = [(x + rng.normal(0, size * 0.01), y + rng.normal(0, size * 0.01)) for x, y in outline]
    ImageDraw.Draw(sketch).line([*jitter, jitter[0]], fill=(0, 0, 0), width=max(1, size // 48))
    return ToyPair(sketch, photo, label)


def make_toy_set(classes: list[int], per_class: int, seed: int = 0, size: int = 64) -> list[ToyPair]:
    return [make_pair(c, seed * 100_003 + i, size) for c in classes for i in range(per_class)]
