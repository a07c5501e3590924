"""Write the synthetic dataset to disk in the Sketchy-Ext layout, with split lists, pairs and strokes.

Every item is rendered from its own RNG seeded by (seed, catalogue index, role, item index), so the
bytes on disk do not depend on the number of worker processes. The manifest is written last (and an
in-progress marker first), so an interrupted run is never mistaken for a complete dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from sbir.data.strokes import box_to_pixels, pixels_to_box, simplify_strokes, to_simplified_drawing
from sbir.data.synth.render import draw_sketch, render_photo, sketch_strokes
from sbir.data.synth.shapes import Category, category_catalogue, to_canvas
from sbir.errors import SbirError, UsageError

logger = logging.getLogger(__name__)

GENERATOR = "sbir.data.synth"
GENERATOR_VERSION = "1"
MANIFEST_NAME = "synth_manifest.json"
INCOMPLETE_NAME = ".synth_incomplete"
CONTACT_SHEET_NAME = "contact_sheet.png"
DATASET_DIR = "Sketchy"
SKETCH_DIR = "256x256/sketch/tx_000000000000_ready"
PHOTO_DIR = "256x256/photo/tx_000000000000_ready"
STROKES_DIR = "strokes"
SKETCH_LIST = "sketch_tx_000000000000_ready_filelist_{}.txt"
PHOTO_LIST = "all_photo_filelist_{}.txt"
PAIRS_LIST = "fg_pairs_{}.txt"
SIMPLIFY_EPSILON = 1.0  # RDP tolerance in 0-255 box units for the written strokes (< 1 px at 224)
_ROLE_PHOTO, _ROLE_GEOMETRY, _ROLE_SKETCH, _ROLE_SPLIT = 1, 0, 2, 7


@dataclass(frozen=True)
class SynthSummary:
    """What `write_synthetic_dataset` wrote (paths, classes, counts) and how long it took."""

    out: Path
    dataset_root: Path  # <out>/Sketchy: the root the split-list paths are relative to
    split_dir: Path  # <out>/Sketchy/<split>
    seed: int
    image_size: int
    seen_classes: list[str]
    unseen_classes: list[str]
    num_photos: int
    num_sketches: int
    manifest: Path
    contact_sheet: Path
    seconds: float = field(compare=False)


@dataclass(frozen=True)
class _ClassJob:
    root: str
    cat_index: int
    category: Category
    photos: int
    sketches: int
    size: int
    seed: int


@dataclass(frozen=True)
class _ClassResult:
    name: str
    photos: list[str]  # relative paths, photo index order
    pairs: list[tuple[str, str]]  # (sketch relpath, photo relpath), sketch order


def photo_id(cat_index: int, photo_index: int) -> str:
    """File stem of a photo (no '-', so `<photo-id>-<k>.png` splits unambiguously on the last '-')."""
    return f"syn{cat_index:05d}_{photo_index:05d}"


def _rng(seed: int, cat_index: int, role: int, *items: int) -> np.random.Generator:
    return np.random.default_rng([seed, cat_index, role, *items])


def _render_class(job: _ClassJob) -> _ClassResult:
    """Render and write all photos, sketches and the strokes ndjson of one class (runs in a worker)."""
    root, name, size = Path(job.root), job.category.name, job.size
    (root / PHOTO_DIR / name).mkdir(parents=True, exist_ok=True)
    (root / SKETCH_DIR / name).mkdir(parents=True, exist_ok=True)
    photos, pairs, lines = [], [], []
    per_photo = [list(range(p, job.sketches, job.photos)) for p in range(job.photos)]  # round-robin
    for p in range(job.photos):
        pid = photo_id(job.cat_index, p)
        geom = _rng(job.seed, job.cat_index, _ROLE_GEOMETRY, p)
        parts = to_canvas(job.category.instance(geom), size, geom)
        photo_rng = _rng(job.seed, job.cat_index, _ROLE_PHOTO, p)
        photo_rel = f"{PHOTO_DIR}/{name}/{pid}.jpg"
        quality = int(photo_rng.integers(65, 93))
        render_photo(parts, size, photo_rng).save(root / photo_rel, "JPEG", quality=quality, optimize=False)
        photos.append(photo_rel)
        for j in per_photo[p]:
            k = j // job.photos + 1
            strokes_px, style = sketch_strokes(parts, size, _rng(job.seed, job.cat_index, _ROLE_SKETCH, p, k))
            drawing = to_simplified_drawing(simplify_strokes(pixels_to_box(strokes_px, size), SIMPLIFY_EPSILON))
            ink = box_to_pixels([np.asarray(s, dtype=np.float64).T for s in drawing], size)
            sketch_rel = f"{SKETCH_DIR}/{name}/{pid}-{k}.png"
            draw_sketch(ink, size, style).save(root / sketch_rel, "PNG", optimize=False, compress_level=6)
            pairs.append((j, sketch_rel, photo_rel))
            record = {
                "word": name,
                "countrycode": "ZZ",
                "recognized": True,
                "key_id": f"{job.cat_index + 1:05d}{p:07d}{k:04d}",
                "drawing": drawing,
                "sketch": sketch_rel,
                "photo": photo_rel,
                "photo_id": pid,
                "style": style.name,
                "pen_width": round(style.width, 3),
                "image_size": size,
            }
            lines.append((j, json.dumps(record, separators=(",", ":"))))
    lines.sort()
    pairs.sort()
    (root / STROKES_DIR).mkdir(parents=True, exist_ok=True)
    (root / STROKES_DIR / f"{name}.ndjson").write_text("".join(f"{line}\n" for _, line in lines))
    return _ClassResult(name, photos, [(s, ph) for _, s, ph in pairs])


def _validate(
    num_classes: int, sketches: int, photos: int, size: int, unseen_fraction: float, split: str, seed: int, workers: int
) -> None:
    available = len(category_catalogue())
    if not 2 <= num_classes <= available:
        raise SynthArgumentError(f"num_classes must be between 2 and {available} (catalogue size), got {num_classes}")
    if sketches < 1 or photos < 1:
        raise SynthArgumentError(f"need at least one sketch and one photo per class, got {sketches} and {photos}")
    if size < 32:
        raise SynthArgumentError(f"image_size must be at least 32 px, got {size}")
    if not 0.0 <= unseen_fraction < 1.0:
        raise SynthArgumentError(f"unseen_fraction must be in [0, 1), got {unseen_fraction}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", split) or split in ("256x256", STROKES_DIR):
        raise SynthArgumentError(f"split must be a plain folder name such as 'zeroshot1', got {split!r}")
    if seed < 0:
        raise SynthArgumentError(f"seed must be a non-negative integer, got {seed}")
    if workers < 1:
        raise SynthArgumentError(f"workers must be >= 1, got {workers}")


def read_synth_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of a complete synthetic dataset at `out`, or None if there is none (or it is foreign)."""
    path = Path(out) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR else None


class SynthArgumentError(UsageError):
    """An argument of the synthetic-dataset writer is out of range."""


class SynthTargetNotADirectory(SbirError, NotADirectoryError):
    """The output path exists and is a file."""

    exit_code = 2


class SynthTargetNotEmpty(SbirError, FileExistsError):
    """The output folder holds something other than an earlier synthetic dataset (never overwritten)."""

    exit_code = 2


def _prepare_out(out: Path) -> None:
    """Create `out`, or clear a previous synthetic dataset there; refuse any other non-empty directory."""
    if out.exists() and not out.is_dir():
        raise SynthTargetNotADirectory(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        ours = read_synth_manifest(out) is not None or (out / INCOMPLETE_NAME).is_file()
        if not ours:
            raise SynthTargetNotEmpty(
                f"refusing to write into {out}: it is not empty and holds no synthetic dataset "
                f"({MANIFEST_NAME} or {INCOMPLETE_NAME} missing); pass an empty or new directory"
            )
        logger.info("replacing the previous synthetic dataset in %s", out)
        (out / MANIFEST_NAME).unlink(missing_ok=True)  # first: from here on the old output is incomplete
        (out / INCOMPLETE_NAME).write_text("synthetic dataset being (re)written; not complete\n")
        shutil.rmtree(out / DATASET_DIR, ignore_errors=True)
        (out / CONTACT_SHEET_NAME).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE_NAME).write_text("synthetic dataset being written; not complete\n")


def _write_lines(path: Path, lines: list[str]) -> str:
    data = "".join(f"{line}\n" for line in lines).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _contact_sheet(root: Path, results: list[_ClassResult], unseen: set[str], path: Path, thumb: int = 80) -> None:
    """A PNG grid to eyeball the data: per row one class, photo/sketch pairs side by side."""
    rows = results if len(results) <= 12 else [results[round(i * (len(results) - 1) / 11)] for i in range(12)]
    pairs_per_row = 4
    label_w, gap = 170, 4
    width = label_w + pairs_per_row * (2 * thumb + gap) + gap
    height = len(rows) * (thumb + gap) + gap
    sheet = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, res in enumerate(rows):
        y = gap + r * (thumb + gap)
        label = res.name + ("  [unseen]" if res.name in unseen else "")
        draw.text((6, y + thumb // 2 - 6), label, fill=(0, 0, 0), font=font)
        first_sketch: dict[str, str] = {}
        for s, ph in res.pairs:
            first_sketch.setdefault(ph, s)
        for c, ph in enumerate(res.photos[:pairs_per_row]):
            x = label_w + c * (2 * thumb + gap)
            with Image.open(root / ph) as im:
                sheet.paste(im.convert("RGB").resize((thumb, thumb), Image.Resampling.BILINEAR), (x, y))
            if ph in first_sketch:
                with Image.open(root / first_sketch[ph]) as im:
                    sheet.paste(im.convert("RGB").resize((thumb, thumb), Image.Resampling.BILINEAR), (x + thumb, y))
    sheet.save(path, "PNG", optimize=False)


def write_synthetic_dataset(
    out: Path,
    *,
    seed: int = 0,
    num_classes: int = 100,
    sketches_per_class: int = 40,
    photos_per_class: int = 40,
    image_size: int = 224,
    unseen_fraction: float = 0.2,
    split: str = "zeroshot1",
    workers: int = 1,
    progress: bool = True,
) -> SynthSummary:
    """Write the procedural sketch/photo dataset under `out` in the Sketchy-Ext layout (see docs/synthetic.md).

    Output is byte-identical for the same arguments (whatever `workers`). `out` must be new, empty or a
    previous synthetic dataset (which is replaced); the manifest is written last to mark completion.
    """
    start = time.perf_counter()
    out = Path(out)
    _validate(num_classes, sketches_per_class, photos_per_class, image_size, unseen_fraction, split, seed, workers)
    _prepare_out(out)
    root = out / DATASET_DIR
    categories = list(category_catalogue()[:num_classes])
    n_unseen = 0 if unseen_fraction == 0 else min(num_classes - 1, max(1, round(unseen_fraction * num_classes)))
    unseen_idx = set(_rng(seed, 0, _ROLE_SPLIT).permutation(num_classes)[:n_unseen].tolist())
    seen = [c.name for i, c in enumerate(categories) if i not in unseen_idx]
    unseen = [c.name for i, c in enumerate(categories) if i in unseen_idx]

    jobs = [
        _ClassJob(str(root), i, cat, photos_per_class, sketches_per_class, image_size, seed)
        for i, cat in enumerate(categories)
    ]
    results: list[_ClassResult] = []
    bar = tqdm(total=len(jobs), desc="synth", unit="class", disable=not progress)
    try:
        if workers == 1:
            for job in jobs:
                results.append(_render_class(job))
                bar.update()
        else:
            with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for res in pool.imap(_render_class, jobs):
                    results.append(res)
                    bar.update()
    finally:
        bar.close()

    split_dir = root / split
    split_dir.mkdir(parents=True, exist_ok=True)
    by_name = {r.name: r for r in results}
    hashes: dict[str, str] = {}
    for suffix, names in (("train", seen), ("zero", unseen)):
        hashes[f"cname_cid{'_zero' if suffix == 'zero' else ''}.txt"] = _write_lines(
            split_dir / f"cname_cid{'_zero' if suffix == 'zero' else ''}.txt",
            [f"{n} {i}" for i, n in enumerate(names)],
        )
        sketch_lines, photo_lines, pair_lines = [], [], []
        for i, n in enumerate(names):
            res = by_name[n]
            sketch_lines += [f"{s} {i}" for s, _ in res.pairs]
            photo_lines += [f"{p} {i}" for p in res.photos]
            pair_lines += [f"{s} {p} {i}" for s, p in res.pairs]
        for template, lines in ((SKETCH_LIST, sketch_lines), (PHOTO_LIST, photo_lines), (PAIRS_LIST, pair_lines)):
            name = template.format(suffix)
            hashes[name] = _write_lines(split_dir / name, lines)

    _contact_sheet(root, results, set(unseen), out / CONTACT_SHEET_NAME)
    n_photos = sum(len(r.photos) for r in results)
    n_sketches = sum(len(r.pairs) for r in results)
    manifest = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "num_classes": num_classes,
        "photos_per_class": photos_per_class,
        "sketches_per_class": sketches_per_class,
        "unseen_fraction": unseen_fraction,
        "split": split,
        "counts": {
            "photos": n_photos,
            "sketches": n_sketches,
            "seen_classes": len(seen),
            "unseen_classes": len(unseen),
        },
        "layout": {
            "dataset_root": DATASET_DIR,
            "photos": f"{DATASET_DIR}/{PHOTO_DIR}/<class>/<photo-id>.jpg",
            "sketches": f"{DATASET_DIR}/{SKETCH_DIR}/<class>/<photo-id>-<k>.png",
            "strokes": f"{DATASET_DIR}/{STROKES_DIR}/<class>.ndjson",
            "split_lists": f"{DATASET_DIR}/{split}/",
            "fine_grained_pairs": [f"{DATASET_DIR}/{split}/{PAIRS_LIST.format(s)}" for s in ("train", "zero")],
        },
        "seen_classes": seen,
        "unseen_classes": unseen,
        "class_definitions": {c.name: {"template": c.template, "primitives": list(c.primitives)} for c in categories},
        "list_sha256": hashes,
    }
    tmp = out / f"{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST_NAME)
    (out / INCOMPLETE_NAME).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    logger.info(
        "wrote %d classes (%d unseen), %d photos and %d sketches at %d px to %s in %.1f s",
        num_classes,
        len(unseen),
        n_photos,
        n_sketches,
        image_size,
        out,
        seconds,
    )
    return SynthSummary(
        out=out,
        dataset_root=root,
        split_dir=split_dir,
        seed=seed,
        image_size=image_size,
        seen_classes=seen,
        unseen_classes=unseen,
        num_photos=n_photos,
        num_sketches=n_sketches,
        manifest=out / MANIFEST_NAME,
        contact_sheet=out / CONTACT_SHEET_NAME,
        seconds=seconds,
    )
