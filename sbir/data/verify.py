"""Check a dataset root against a split: counts, missing, unlisted and unreadable files (`sbir data verify`).

Errors (the report is not ``ok``): the split cannot be read, listed files or folders are missing, images
cannot be decoded. Warnings (``ok`` unless ``strict``): image files in the class folders of listed classes
that no list mentions (the official Sketchy lists leave some out), classes with no images of a modality,
sketches whose paired photo is not in the split.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from sbir.data.readers import IMAGE_EXTENSIONS, get_layout, read_split
from sbir.data.records import MODALITIES, DatasetError, ImageRecord

logger = logging.getLogger(__name__)


@dataclass
class ClassCounts:
    """Per-class tallies, each keyed by modality."""

    role: str
    listed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    missing: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    unlisted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    unreadable: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))


@dataclass
class VerifyReport:
    """Result of :func:`verify_dataset`: per-class counts, problem lists, and a text rendering."""

    layout: str
    root: str
    split: str
    list_source: str = ""
    generated_lists: list[str] = field(default_factory=list)
    classes: dict[str, ClassCounts] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # listed files that do not exist (relative paths)
    missing_folders: list[str] = field(default_factory=list)  # folders of listed files that do not exist
    unlisted: list[str] = field(default_factory=list)  # image files in listed classes' folders, in no list
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (relative path, error)
    images_checked: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    strict: bool = False

    @property
    def ok(self) -> bool:
        """True when there are no errors (and, if strict, no warnings)."""
        return not self.errors and not (self.strict and self.warnings)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def to_text(self, max_items: int = 20, per_class: bool = True) -> str:
        """A readable multi-line report; lists are cut after `max_items` entries."""
        out = [f"dataset check: layout={self.layout} split={self.split} root={self.root}"]
        if self.list_source:
            out.append(f"lists: {self.list_source}")
        if self.generated_lists:
            out.append(f"regenerated from class folders: {', '.join(self.generated_lists)}")
        roles: dict[str, int] = defaultdict(int)
        totals: dict[str, int] = defaultdict(int)
        for counts in self.classes.values():
            roles[counts.role] += 1
            for modality in MODALITIES:
                totals[modality] += counts.listed[modality]
        if self.classes:
            out.append("classes: " + ", ".join(f"{n} {role}" for role, n in roles.items()))
            out.append(f"listed: {totals['sketch']:,} sketches, {totals['photo']:,} photos")
            out.append(f"images decoded: {self.images_checked:,}")
        if per_class and self.classes:
            width = max(5, *(len(c) for c in self.classes))
            out.append(f"  {'class':<{width}}  role   sketch   photo  missing  unlisted  unreadable")
            for name, c in self.classes.items():
                out.append(
                    f"  {name:<{width}}  {c.role:<5} {c.listed['sketch']:>7} {c.listed['photo']:>7}"
                    f" {sum(c.missing.values()):>8} {sum(c.unlisted.values()):>9} {sum(c.unreadable.values()):>11}"
                )
        sections = [
            ("missing folders", self.missing_folders),
            ("missing files", self.missing),
            ("unreadable images", [f"{p}: {e}" for p, e in self.unreadable]),
            ("unlisted files", self.unlisted),
        ]
        for title, items in sections:
            if items:
                out.append(f"{title} ({len(items):,}):")
                out.extend(f"  {item}" for item in items[:max_items])
                if len(items) > max_items:
                    out.append(f"  ... and {len(items) - max_items:,} more")
        out.extend(f"ERROR: {e}" for e in self.errors)
        out.extend(f"WARNING: {w}" for w in self.warnings)
        out.append("OK" if self.ok else "PROBLEMS FOUND")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.to_text()


def check_image(path: str | Path) -> str | None:
    """None if Pillow can open, verify and fully decode the image, else the error text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                image.verify()
            with Image.open(path) as image:
                image.load()
    except Exception as exc:  # any decoder failure means the training loader would fail too
        return f"{type(exc).__name__}: {exc}"
    return None


def _listing(folder: Path) -> set[str] | None:
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries if not e.name.startswith(".") and e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return None


def verify_dataset(
    layout: str,
    root: str | Path,
    split: str,
    *,
    check_images: bool = True,
    progress: bool = True,
    pairs_file: str | Path | None = None,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    strict: bool = False,
    workers: int | None = None,
) -> VerifyReport:
    """Check `root` against `split` of `layout` (see module docstring); never raises for dataset problems."""
    report = VerifyReport(layout=layout, root=str(root), split=split, strict=strict)
    try:
        spec = get_layout(layout)
        data = read_split(layout, root, split, val_fraction=val_fraction, val_seed=val_seed, pairs_file=pairs_file)
    except DatasetError as exc:
        report.errors.append(str(exc))
        return report
    report.root, report.list_source, report.generated_lists = data.root, data.list_source, data.generated_lists
    base = Path(data.root)
    for role in ("train", "val", "test"):
        for name in data.classes_of(role):
            report.classes[name] = ClassCounts(role=role)

    # Folders to list: every folder holding a listed file, plus each layout class folder of each class.
    listed: dict[str, dict[str, str]] = defaultdict(dict)  # folder -> {file name: modality}
    owner: dict[str, tuple[str, str]] = {}  # folder -> (class, modality)
    for rec in data.records:
        folder, _, name = rec.path.rpartition("/")
        listed[folder][name] = rec.modality
        owner.setdefault(folder, (rec.class_name, rec.modality))
        report.classes[rec.class_name].listed[rec.modality] += 1
    for name in data.class_names:
        for modality in MODALITIES:
            for parent in spec.dirs(modality):
                owner.setdefault(f"{parent}/{name}", (name, modality))

    present: list[tuple[str, str, str]] = []  # (path, class, modality) of listed files that exist
    for folder in tqdm(sorted(owner), desc="listing folders", unit="dir", disable=not progress):
        cls, folder_modality = owner[folder]
        names = _listing(base / folder)
        wanted = listed.get(folder, {})
        if names is None:
            if wanted:
                report.missing_folders.append(f"{folder}/ ({len(wanted):,} listed files)")
            names = set()
        for name, modality in wanted.items():
            if name in names:
                present.append((f"{folder}/{name}", cls, modality))
            else:
                report.missing.append(f"{folder}/{name}")
                report.classes[cls].missing[modality] += 1
        for name in sorted(names - wanted.keys()):
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                report.unlisted.append(f"{folder}/{name}")
                report.classes[cls].unlisted[folder_modality] += 1

    if check_images and present:
        n_workers = workers or min(4, os.cpu_count() or 1)
        with (
            ThreadPoolExecutor(n_workers) as pool,
            tqdm(total=len(present), desc="decoding", unit="img", disable=not progress) as bar,
        ):
            for start in range(0, len(present), 4096):  # bounded batches: no million-future backlog
                batch = present[start : start + 4096]
                for (path, cls, modality), error in zip(
                    batch, pool.map(check_image, (base / p for p, _, _ in batch)), strict=True
                ):
                    if error is not None:
                        report.unreadable.append((path, error))
                        report.classes[cls].unreadable[modality] += 1
                bar.update(len(batch))
        report.images_checked = len(present)

    _summarise(report, data.records)
    logger.info("verify %s %s: %s", layout, split, "ok" if report.ok else "problems found")
    return report


def _summarise(report: VerifyReport, records: list[ImageRecord]) -> None:
    if report.missing_folders:
        report.errors.append(f"{len(report.missing_folders):,} folder(s) of listed files missing")
    if report.missing:
        report.errors.append(f"{len(report.missing):,} listed file(s) missing")
    if report.unreadable:
        report.errors.append(f"{len(report.unreadable):,} image(s) cannot be decoded")
    if report.unlisted:
        report.warnings.append(f"{len(report.unlisted):,} image file(s) in class folders are in no list")
    for name, counts in report.classes.items():
        empty = [m for m in MODALITIES if counts.listed[m] == 0]
        if empty:
            report.warnings.append(f"class {name!r} ({counts.role}) has no {' or '.join(empty)} images")
    photo_pairs = {r.pair_id for r in records if r.modality == "photo" and r.pair_id is not None}
    orphans = sum(
        1 for r in records if r.modality == "sketch" and r.pair_id is not None and r.pair_id not in photo_pairs
    )
    if orphans:
        report.warnings.append(f"{orphans:,} sketch(es) name a paired photo that is not in the split")
