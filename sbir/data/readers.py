"""Readers for the released ZS-SBIR layouts (Sketchy-Ext, TU-Berlin-Ext, QuickDraw-Ext) and a generic one.

``read_split(layout, root, split)`` resolves the dataset root, finds the split lists (the dataset's own
``<dataset root>/<split>/`` folder first, else the packaged official lists), regenerates lists that are
not released from the class folders, holds out validation classes and returns one record per image.
See docs/data.md for the directory trees and conventions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from sbir.data.records import MODALITIES, DatasetError, DatasetSplit, ImageRecord, Modality, Role
from sbir.data.splitfiles import (
    OFFICIAL_SPLITS,
    SEEN_CLASS_FILE,
    UNSEEN_CLASS_FILE,
    ListPath,
    check_relative_path,
    find_list,
    format_file_list,
    iter_lines,
    official_list_dir,
    read_class_ids,
    read_class_names,
    read_file_list,
)
from sbir.data.validation import split_validation_classes

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
PAIRS_FILE = "pairs.txt"  # picked up automatically from a dataset's own split folder
PARTS = ("train", "zero")  # list suffixes: seen classes, unseen classes


@dataclass(frozen=True)
class Layout:
    """Where one dataset layout keeps its images and which list files describe a split."""

    name: str
    dataset_dir: str | None  # folder name under a data root ('Sketchy'); None: root is the dataset root
    sketch_dirs: tuple[str, ...]  # parents of the sketch class folders
    photo_dirs: tuple[str, ...]  # parents of the photo class folders
    sketch_lists: tuple[str, str]  # (train, zero) list file names
    photo_lists: tuple[str, str]
    class_files: tuple[str, str] = (SEEN_CLASS_FILE, UNSEEN_CLASS_FILE)
    class_format: str = "cname_cid"  # 'cname_cid' (<name> <id>) or 'names' (one name per line, id = line order)

    def dirs(self, modality: Modality) -> tuple[str, ...]:
        return self.sketch_dirs if modality == "sketch" else self.photo_dirs

    def list_name(self, modality: Modality, part: str) -> str:
        return (self.sketch_lists if modality == "sketch" else self.photo_lists)[PARTS.index(part)]


LAYOUTS: dict[str, Layout] = {
    "sketchy": Layout(
        "sketchy",
        "Sketchy",
        ("256x256/sketch/tx_000000000000_ready",),
        ("256x256/photo/tx_000000000000_ready", "EXTEND_image_sketchy_ready"),
        ("sketch_tx_000000000000_ready_filelist_train.txt", "sketch_tx_000000000000_ready_filelist_zero.txt"),
        ("all_photo_filelist_train.txt", "all_photo_filelist_zero.txt"),
    ),
    "tuberlin": Layout(
        "tuberlin",
        "TUBerlin",
        ("png_ready",),
        ("ImageResized_ready",),
        ("png_ready_filelist_train.txt", "png_ready_filelist_zero.txt"),
        ("ImageResized_ready_filelist_train.txt", "ImageResized_ready_filelist_zero.txt"),
    ),
    "quickdraw": Layout(
        "quickdraw",
        "QuickDraw",
        ("sketches",),
        ("images",),
        ("sketch_train.txt", "sketch_zero.txt"),
        ("all_photo_train.txt", "all_photo_zero.txt"),
    ),
    "generic": Layout(
        "generic",
        None,
        ("sketch",),
        ("photo",),
        ("sketch_train.txt", "sketch_zero.txt"),
        ("photo_train.txt", "photo_zero.txt"),
        ("seen_classes.txt", "unseen_classes.txt"),
        "names",
    ),
}
LAYOUT_ALIASES: dict[str, str] = {"synthetic": "sketchy"}  # `sbir data synth` writes the Sketchy layout


@dataclass
class LoadedSplit(DatasetSplit):
    """A DatasetSplit plus where its lists came from (provenance for run manifests)."""

    list_source: str = ""  # folder the lists were read from, or 'package:<Dataset>/<split>'
    generated_lists: list[str] = field(default_factory=list)  # list files regenerated from class folders
    list_sha256: dict[str, str] = field(default_factory=dict)  # list file name -> sha256 of its (decompressed) text
    pairs_source: str | None = None  # pairs list applied, if any


def get_layout(name: str) -> Layout:
    """The Layout for 'sketchy' / 'tuberlin' / 'quickdraw' / 'generic' (or an alias such as 'synthetic')."""
    key = LAYOUT_ALIASES.get(name.lower(), name.lower())
    if key not in LAYOUTS:
        raise DatasetError(f"unknown layout {name!r}: choose one of {sorted([*LAYOUTS, *LAYOUT_ALIASES])}")
    return LAYOUTS[key]


def resolve_dataset_root(layout: Layout, root: str | Path, split: str | None = None) -> Path:
    """The folder list paths are relative to: `root` itself, or `root/<Dataset>` when root is a data root."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetError(f"dataset root {base} does not exist or is not a folder")
    if layout.dataset_dir is None:
        return base.absolute()
    marks = [*layout.sketch_dirs, *layout.photo_dirs, *([split] if split else [])]
    own = any((base / mark).is_dir() for mark in marks)
    if not own and (base / layout.dataset_dir).is_dir():
        return (base / layout.dataset_dir).absolute()
    return base.absolute()


@dataclass(frozen=True)
class ListSource:
    """The folder a split's lists are read from."""

    folder: ListPath
    label: str
    packaged: bool


def find_list_source(layout: Layout, dataset_root: Path, split: str) -> ListSource:
    """The dataset's own ``<dataset root>/<split>/`` if it holds the seen-class file, else the packaged lists."""
    if not split or Path(split).is_absolute() or ".." in Path(split).parts:
        raise DatasetError(f"split {split!r} must be a folder name such as 'zeroshot1'")
    own = dataset_root / split
    if own.is_dir():
        if find_list(own, layout.class_files[0]) is not None:
            return ListSource(own, str(own), False)
        names = [*layout.class_files, *layout.sketch_lists, *layout.photo_lists]
        present = [n for n in names if find_list(own, n) is not None]
        if present:
            raise DatasetError(
                f"{own} holds {present} but not {layout.class_files[0]}: add it, "
                "or remove the folder to use the packaged official lists"
            )
    official = OFFICIAL_SPLITS.get(layout.name, ())
    if split in official:
        return ListSource(official_list_dir(layout.name, split), f"package:{layout.dataset_dir}/{split}", True)
    hint = f"packaged official {layout.name} splits: {list(official)}" if official else "no packaged lists"
    raise DatasetError(
        f"no split lists for layout {layout.name!r}: {own / layout.class_files[0]} does not exist ({hint})"
    )


def _read_classes(layout: Layout, source: ListSource, index: int) -> dict[int, str]:
    name = layout.class_files[index]
    path = find_list(source.folder, name)
    if path is None:
        raise DatasetError(f"class list {name} is missing from {source.label}")
    if layout.class_format == "names":
        return dict(enumerate(read_class_names(path)))
    return read_class_ids(path)


def image_files(folder: Path) -> list[str]:
    """Sorted names of the (non-hidden) image files directly inside `folder`."""
    with os.scandir(folder) as entries:
        return sorted(
            e.name
            for e in entries
            if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()
        )


def generate_entries(
    layout: Layout, dataset_root: Path, modality: Modality, classes: list[str]
) -> list[tuple[str, str]]:
    """(path, class) entries for `classes` from their class folders: classes in list order, files sorted."""
    entries: list[tuple[str, str]] = []
    missing: list[str] = []
    for cls in classes:
        folders = [d for d in layout.dirs(modality) if (dataset_root / d / cls).is_dir()]
        if not folders:
            missing.append(str(dataset_root / layout.dirs(modality)[0] / cls))
            continue
        before = len(entries)
        for d in folders:
            entries.extend((f"{d}/{cls}/{name}", cls) for name in image_files(dataset_root / d / cls))
        if len(entries) == before:
            logger.warning("class folder(s) %s of %r hold no images", folders, cls)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DatasetError(f"{len(missing)} {modality} class folder(s) missing: {shown}")
    return entries


_SKETCH_OF_PHOTO = re.compile(r"(.+)-\d+")


def sketchy_pair_id(path: str, modality: Modality) -> str | None:
    """Sketchy convention: '<cls>/<photo>' for basic photos and their sketches '<photo>-<k>.png'; None otherwise."""
    parts = path.split("/")
    stem = parts[-1].rpartition(".")[0] or parts[-1]
    if modality == "photo":
        return f"{parts[-2]}/{stem}" if path.startswith("256x256/photo/") else None
    match = _SKETCH_OF_PHOTO.fullmatch(stem)
    return f"{parts[-2]}/{match.group(1)}" if match and path.startswith("256x256/sketch/") else None


def apply_pairs_file(records: list[ImageRecord], path: Path, classes: list[str]) -> list[ImageRecord]:
    """Set pair ids from ``<sketch relpath> <photo relpath> <class id>`` lines (TAB-separated if paths have spaces).

    The pair id is the photo's relative path; the list replaces any naming-convention pairs. Class ids index
    the seen classes followed by the unseen classes, both in class-file order.
    """
    index = {r.path: r for r in records}
    sketch_to_photo: dict[str, tuple[str, int]] = {}
    lines, _ = iter_lines(path)
    for number, line in lines:
        where = f"{path}:{number}"
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        if len(fields) != 3:
            raise DatasetError(
                f"{where}: expected '<sketch relpath> <photo relpath> <class id>' "
                f"(TAB-separate the fields when paths contain spaces), got {line!r}"
            )
        sketch, photo = (check_relative_path(p, where) for p in fields[:2])
        try:
            cls = classes[int(fields[2])]
        except (ValueError, IndexError):
            raise DatasetError(f"{where}: class id {fields[2]!r} is not in 0..{len(classes) - 1}") from None
        for rel, modality in ((sketch, "sketch"), (photo, "photo")):
            rec = index.get(rel)
            if rec is None or rec.modality != modality:
                raise DatasetError(f"{where}: {rel!r} is not a {modality} of the split's lists")
            if rec.class_name != cls:
                raise DatasetError(f"{where}: {rel!r} belongs to class {rec.class_name!r}, not {cls!r}")
        previous = sketch_to_photo.get(sketch)
        if previous and previous[0] != photo:
            raise DatasetError(
                f"{where}: sketch {sketch!r} is already paired with {previous[0]!r} on line {previous[1]}"
            )
        sketch_to_photo[sketch] = (photo, number)
    photos = {photo for photo, _ in sketch_to_photo.values()}

    def pair(r: ImageRecord) -> str | None:
        if r.modality == "sketch":
            return sketch_to_photo[r.path][0] if r.path in sketch_to_photo else None
        return r.path if r.path in photos else None

    return [replace(r, pair_id=pair(r)) for r in records]


def _find_pairs_file(pairs_file: str | Path | None, dataset_root: Path, source: ListSource) -> Path | None:
    if pairs_file is None:
        if source.packaged:
            return None
        auto = Path(str(source.folder)) / PAIRS_FILE
        return auto if auto.is_file() else None
    given = Path(pairs_file).expanduser()
    for candidate in (given, dataset_root / given):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"pairs list {given} not found (also looked in {dataset_root / given})")


def read_split(
    layout: str,
    root: str | Path,
    split: str,
    *,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    pairs_file: str | Path | None = None,
) -> LoadedSplit:
    """Read one split of a dataset into records with roles, validation classes and pair ids (see docs/data.md)."""
    spec = get_layout(layout)
    dataset_root = resolve_dataset_root(spec, root, split)
    source = find_list_source(spec, dataset_root, split)
    seen_ids, unseen_ids = _read_classes(spec, source, 0), _read_classes(spec, source, 1)
    seen, unseen = list(seen_ids.values()), list(unseen_ids.values())
    overlap = sorted(set(seen) & set(unseen))
    if overlap:
        raise DatasetError(f"{source.label}: classes listed as both seen and unseen: {overlap}")
    train_classes, val_classes = split_validation_classes(seen, val_fraction, val_seed)
    val_set = set(val_classes)

    records: list[ImageRecord] = []
    generated: list[str] = []
    digests: dict[str, str] = {}
    origin: dict[str, str] = {}
    for part, class_ids in (("train", seen_ids), ("zero", unseen_ids)):
        for modality in MODALITIES:
            name = spec.list_name(modality, part)
            path = find_list(source.folder, name)
            if path is None:
                try:
                    entries = generate_entries(spec, dataset_root, modality, list(class_ids.values()))
                except DatasetError as exc:
                    raise DatasetError(f"{name} is not in {source.label} and cannot be regenerated: {exc}") from None
                ids = {cls: cid for cid, cls in class_ids.items()}
                text = format_file_list((rel, ids[cls]) for rel, cls in entries)
                digests[name] = hashlib.sha256(text.encode()).hexdigest()
                generated.append(name)
                logger.warning(
                    "%s is not in %s: regenerated from the class folders (%d images)", name, source.label, len(entries)
                )
            else:
                parsed = read_file_list(path, class_ids)
                entries, digests[name] = parsed.entries, parsed.sha256
            for rel, cls in entries:
                if rel in origin:
                    raise DatasetError(f"{rel!r} is listed twice (in {origin[rel]} and {name})")
                origin[rel] = name
                role: Role = "test" if part == "zero" else ("val" if cls in val_set else "train")
                pair = sketchy_pair_id(rel, modality) if spec.name == "sketchy" else None
                records.append(ImageRecord(rel, cls, modality, role, pair))

    pairs_path = _find_pairs_file(pairs_file, dataset_root, source)
    if pairs_path is not None:
        records = apply_pairs_file(records, pairs_path, [*seen, *unseen])
    logger.info(
        "%s %s: %d train / %d val / %d test classes, %d records (lists: %s)",
        spec.name,
        split,
        len(train_classes),
        len(val_classes),
        len(unseen),
        len(records),
        source.label,
    )
    return LoadedSplit(
        root=str(dataset_root),
        layout=layout.lower(),
        split=split,
        train_classes=train_classes,
        val_classes=val_classes,
        test_classes=unseen,
        records=records,
        list_source=source.label,
        generated_lists=generated,
        list_sha256=digests,
        pairs_source=str(pairs_path) if pairs_path else None,
    )
