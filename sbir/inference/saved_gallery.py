"""The saved gallery: one folder, and the one module that knows its layout.

| Path | Holds |
|---|---|
| ``gallery.json`` | format, kind, modes, count, time, provenance, index config, file SHA-256s; written last |
| ``items.jsonl`` | one :class:`GalleryItem` per line |
| ``encoding.safetensors`` | the encoding's arrays (what the gallery's kind scores with) |
| ``index/`` | the FAISS index (``sbir.inference.index``) |
| ``images/<id>.<ext>`` | optional: the photos themselves, for serving them back and explaining matches |
| ``journal/`` | updates made after the save, replayed on load (below) |

**The journal.** A served gallery grows and shrinks without being rewritten: every update appends an
entry ``journal/<seq>.json`` (``{"op": "add", "items": [...], "encoding": "<seq>.safetensors"}`` or
``{"op": "remove", "ids": [...]}``), written under an exclusive lock (one writer at a time, ids never
reused) and published by an atomic rename, so a reader never sees half an entry. Every holder of the
gallery replays the entries it has not seen (:meth:`Journal.replay`), so there is one source of truth on
disk, not one per replica, and a restart keeps every update.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from torch import nn

from sbir.config import IndexConfig
from sbir.files import read_format_json, sha256_file, write_atomic
from sbir.inference.gallery import GALLERY_KINDS, Gallery, GalleryError, GalleryItem
from sbir.inference.index import EmbeddingIndex, IndexFileError
from sbir.models.encoding import Encoding

logger = logging.getLogger(__name__)

FORMAT_NAME = "sbir.gallery"
FORMAT_VERSION = 1
META_FILE = "gallery.json"
ITEMS_FILE = "items.jsonl"
ENCODING_FILE = "encoding.safetensors"
INDEX_DIR = "index"
IMAGES_DIR = "images"
JOURNAL_DIR = "journal"
HEAD_FILE = "HEAD"  # in journal/: {"seq": last entry, "next_id": next unused gallery id}
INDEX_FILES = (f"{INDEX_DIR}/index.faiss", f"{INDEX_DIR}/index.json")


@dataclass(frozen=True)
class Provenance:
    """What a saved gallery was built from, so serving loads exactly what evaluation scored."""

    method: str
    checkpoint: str  # the reference the gallery was built from (path, runs:/, models:/)
    checkpoint_sha256: str  # weights content hash (sbir.checkpoint.weights_sha256)
    model_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count``: the items whose id modulo ``count`` is ``index`` (so a new id has one home)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise GalleryError(f"shard {self.index} of {self.count} does not exist")

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` this shard holds."""
        return np.asarray(ids, dtype=np.int64) % self.count == self.index


@dataclass(frozen=True)
class GalleryManifest:
    """The checked contents of ``gallery.json``."""

    kind: str
    modes: tuple[str, ...]
    count: int
    created: str
    provenance: Provenance
    index: IndexConfig
    files: dict[str, str]  # relative path -> SHA-256


# --------------------------------------------------------------------- writing
def save_gallery(gallery: Gallery, directory: str | Path, provenance: Provenance) -> Path:
    """Write ``gallery`` as a self-describing folder; ``gallery.json`` goes last, so a half-written gallery
    never looks complete."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)
    shutil.rmtree(out / JOURNAL_DIR, ignore_errors=True)  # updates of a gallery this one replaces
    write_items(out, gallery.items)
    save_file({k: np.ascontiguousarray(v) for k, v in gallery.photos.to_arrays().items()}, str(out / ENCODING_FILE))
    gallery.index.save(out / INDEX_DIR)
    files = (ITEMS_FILE, ENCODING_FILE, *INDEX_FILES)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "kind": gallery.kind,
        "modes": list(gallery.modes),
        "count": len(gallery),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "provenance": asdict(provenance),
        "index": gallery.index_config.model_dump(mode="json"),
        "files": {name: sha256_file(out / name) for name in files},
    }
    write_atomic(out / META_FILE, json.dumps(meta, indent=2))
    logger.info("saved a %s gallery of %d photos to %s", gallery.kind, len(gallery), out)
    return out


def write_items(directory: Path, items: list[GalleryItem]) -> None:
    lines = [json.dumps(asdict(item), sort_keys=True) for item in items]
    (directory / ITEMS_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def image_suffix(data: bytes) -> str:
    """The file suffix of encoded image bytes, from their magic number."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    raise GalleryError("not a PNG, JPEG, WebP, GIF or BMP image")


def write_images(directory: str | Path, images: Mapping[int, bytes]) -> None:
    """Store gallery photos as ``images/<id>.<ext>`` (names from the integer id only, never from a request)."""
    folder = Path(directory) / IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for gallery_id, data in images.items():
        (folder / f"{int(gallery_id)}{image_suffix(data)}").write_bytes(data)


def find_image(directory: str | Path, gallery_id: int) -> Path | None:
    """The stored photo of a gallery id, or None."""
    matches = sorted((Path(directory) / IMAGES_DIR).glob(f"{int(gallery_id)}.*"))
    return matches[0] if matches else None


# --------------------------------------------------------------------- reading
def read_gallery_meta(directory: str | Path) -> GalleryManifest:
    """The checked ``gallery.json`` of a saved gallery (format, version, kind and every file's checksum)."""
    root = Path(directory)
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise GalleryError(f"{root} is not a saved gallery: {META_FILE} is missing")
    meta = read_format_json(meta_path, FORMAT_NAME, FORMAT_VERSION, GalleryError, "gallery description")
    if meta.get("kind") not in GALLERY_KINDS:
        raise GalleryError(f"{meta_path}: unknown gallery kind {meta.get('kind')!r}")
    files = meta.get("files") or {}
    for name, expected in files.items():
        path = root / name
        if not path.is_file():
            raise GalleryError(f"{root}: {name} is missing")
        if sha256_file(path) != expected:
            raise GalleryError(f"{path} does not match its checksum in {META_FILE}: the gallery is corrupt")
    try:
        return GalleryManifest(
            kind=meta["kind"],
            modes=tuple(meta["modes"]),
            count=int(meta["count"]),
            created=str(meta["created"]),
            provenance=Provenance(**meta["provenance"]),
            index=IndexConfig.model_validate(meta["index"]),
            files=dict(files),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise GalleryError(f"{meta_path}: incomplete manifest ({exc})") from exc


def read_items(directory: str | Path) -> list[GalleryItem]:
    """The items of a saved gallery, in gallery order (without journal updates)."""
    text = (Path(directory) / ITEMS_FILE).read_text(encoding="utf-8")
    return [GalleryItem(**json.loads(line)) for line in text.splitlines() if line]


def load_index(directory: str | Path) -> EmbeddingIndex:
    """The saved gallery's FAISS index."""
    root = Path(directory)
    try:
        return EmbeddingIndex.load(root / INDEX_DIR)
    except (IndexFileError, FileNotFoundError) as exc:
        raise GalleryError(f"{root}: {exc}") from exc


def load_gallery(
    directory: str | Path,
    model: nn.Module,
    *,
    method: str,
    encoding: type[Encoding],
    checkpoint_sha256: str | None = None,
    shard: ShardSpec | None = None,
) -> Gallery:
    """Load a saved gallery for ``model`` of ``method``, whose photos are ``encoding``s (checked: format,
    checksums, method and, if given, the weights it was built with); with ``shard``, only that shard's items,
    indexed on their own with the gallery's index settings."""
    root = Path(directory)
    manifest = read_gallery_meta(root)
    provenance = manifest.provenance
    if provenance.method != method:
        raise GalleryError(f"{root} was built for method {provenance.method!r}, not {method!r}")
    if checkpoint_sha256 is not None and provenance.checkpoint_sha256 != checkpoint_sha256:
        raise GalleryError(
            f"{root} was built with other weights ({provenance.checkpoint}, sha256 "
            f"{provenance.checkpoint_sha256[:12]}…) than the model being loaded ({checkpoint_sha256[:12]}…); "
            "rebuild it with `sbir index build` for this checkpoint"
        )
    arrays, items = load_file(str(root / ENCODING_FILE)), read_items(root)
    cls = GALLERY_KINDS[manifest.kind]
    if shard is None or shard.count == 1:
        gallery = cls(model, encoding.from_arrays(arrays), items, manifest.index, index=load_index(root))
    else:
        rows = np.flatnonzero(shard.holds(np.asarray([item.id for item in items], dtype=np.int64)))
        photos = encoding.from_arrays({name: values[rows] for name, values in arrays.items()})
        index_config = manifest.index.model_copy(update={"nlist": max(1, min(manifest.index.nlist, len(rows)))})
        gallery = cls(model, photos, [items[i] for i in rows], index_config)
        _ = gallery.index  # built now, at load, not on the first request
    logger.info("loaded a %s gallery of %d photos from %s (%s)", gallery.kind, len(gallery), root, shard or "whole")
    return gallery


# --------------------------------------------------------------------- the journal
@dataclass(frozen=True)
class JournalEntry:
    """One journal entry: photos added (with their encoding arrays) or ids removed."""

    seq: int
    op: str  # "add" | "remove"
    items: tuple[GalleryItem, ...] = ()
    arrays: dict[str, np.ndarray] | None = None
    ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class JournalHead:
    """Where the journal stands: the last entry's sequence number and the next unused gallery id."""

    seq: int
    next_id: int


class Journal:
    """The journal of one saved gallery folder (local or on a shared filesystem).

    ``journal/HEAD`` holds the last sequence number and the next free id, so a reader learns whether it is
    behind from one small file and reads only the entries it lacks, by name: no folder listing.
    """

    def __init__(self, gallery_dir: str | Path) -> None:
        self.root = Path(gallery_dir)
        self.dir = self.root / JOURNAL_DIR

    def head(self) -> JournalHead:
        """The journal's head (an empty journal: sequence 0, the id after the saved gallery's last)."""
        path = self.dir / HEAD_FILE
        if path.is_file():
            record = json.loads(path.read_text())
            return JournalHead(int(record["seq"]), int(record["next_id"]))
        return self._head_from_files()

    def _head_from_files(self) -> JournalHead:
        """The head of a journal without a HEAD file (new, or written before HEAD existed): read once."""
        names = sorted(self.dir.glob("[0-9]*.json")) if self.dir.is_dir() else []
        ids = [item.id for item in read_items(self.root)]
        for path in names:
            ids += [item["id"] for item in json.loads(path.read_text()).get("items", [])]
        return JournalHead(int(names[-1].stem) if names else 0, max(ids, default=-1) + 1)

    def entries(self, after: int = 0, upto: int | None = None) -> list[JournalEntry]:
        """Entries ``after < seq <= upto`` (``upto``: the head), in order."""
        last = self.head().seq if upto is None else upto
        return [self._entry(seq) for seq in range(after + 1, last + 1)]

    def _entry(self, seq: int) -> JournalEntry:
        record = json.loads((self.dir / f"{seq:08d}.json").read_text())
        if record["op"] == "add":
            arrays = load_file(str(self.dir / record["encoding"]))
            items = tuple(GalleryItem(**item) for item in record["items"])
            return JournalEntry(seq, "add", items=items, arrays=arrays)
        return JournalEntry(seq, "remove", ids=tuple(int(i) for i in record["ids"]))

    def replay(
        self,
        after: int,
        add: Callable[[dict[str, np.ndarray], list[GalleryItem]], None],
        remove: Callable[[list[int]], None],
        upto: int | None = None,
    ) -> int:
        """Apply the entries ``after < seq <= upto`` in order (``add(arrays, items)``, ``remove(ids)``); returns
        the sequence number of the last entry applied (``after`` when there was none)."""
        if upto is not None and upto <= after:
            return after
        for entry in self.entries(after, upto):
            if entry.op == "add":
                add(entry.arrays or {}, list(entry.items))
            else:
                remove(list(entry.ids))
            after = entry.seq
        return after

    @contextmanager
    def _locked(self) -> Iterator[JournalHead]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "LOCK").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.head()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, photos: list[tuple[str, str | None, bytes]], arrays: dict[str, np.ndarray]) -> list[GalleryItem]:
        """Append photos ((name, class, image bytes)) and their encoding rows; returns their new items
        (ids never reused: one above every id the gallery and its journal have held)."""
        read_gallery_meta(self.root)  # the gallery must be intact before it grows
        with self._locked() as head:
            items = [
                GalleryItem(head.next_id + i, f"added/{name}", class_name, -1, None)
                for i, (name, class_name, _) in enumerate(photos)
            ]
            write_images(self.root, {item.id: data for item, (_, _, data) in zip(items, photos, strict=True)})
            seq = head.seq + 1
            encoding = f"{seq:08d}.safetensors"
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(self.dir / encoding))
            record = {"op": "add", "items": [asdict(item) for item in items], "encoding": encoding}
            self._publish(JournalHead(seq, head.next_id + len(items)), record)
        logger.info("gallery %s: added %d photo(s) (journal entry %d)", self.root, len(items), seq)
        return items

    def remove(self, ids: list[int]) -> int:
        """Append the removal of ``ids``; returns the entry's sequence number."""
        with self._locked() as head:
            seq = head.seq + 1
            self._publish(JournalHead(seq, head.next_id), {"op": "remove", "ids": [int(i) for i in ids]})
        logger.info("gallery %s: removed %s (journal entry %d)", self.root, ids, seq)
        return seq

    def _publish(self, head: JournalHead, record: dict[str, Any]) -> None:
        """The entry first, then the head that makes it visible."""
        write_atomic(self.dir / f"{head.seq:08d}.json", json.dumps(record))
        write_atomic(self.dir / HEAD_FILE, json.dumps(asdict(head)))
