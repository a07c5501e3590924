"""Incremental gallery updates: an append-only journal in the saved gallery's folder.

``POST /v1/gallery`` and ``DELETE /v1/gallery/{id}`` append an entry; every replica that holds the gallery
(the index and the re-ranker, any number of each) applies the entries it has not seen before it answers,
and a restarted endpoint replays them. So there is one source of truth, on disk, not one copy per replica.

Layout: ``journal/<seq>.json`` (``{"op": "add", "items": [...], "encoding": "<seq>.safetensors"}`` or
``{"op": "remove", "ids": [...]}``) with the added photos' encoding arrays beside it and their images in
``images/``. Entries are written under an exclusive lock (one writer at a time, ids never reused) and
made visible by an atomic rename, so a reader never sees half an entry.
"""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from sbir.inference.gallery import GalleryItem, read_gallery_meta, write_images

logger = logging.getLogger(__name__)

JOURNAL_DIR = "journal"


@dataclass(frozen=True)
class Entry:
    """One journal entry: photos added (with their encodings) or ids removed."""

    seq: int
    op: str  # "add" | "remove"
    items: tuple[GalleryItem, ...] = ()
    arrays: dict[str, np.ndarray] | None = None
    ids: tuple[int, ...] = ()


class Journal:
    """The journal of one saved gallery folder (local or on a shared filesystem)."""

    def __init__(self, gallery_dir: str | Path) -> None:
        self.root = Path(gallery_dir)
        self.dir = self.root / JOURNAL_DIR

    def entries(self, after: int = 0) -> list[Entry]:
        """Entries with a sequence number above `after`, in order."""
        if not self.dir.is_dir():
            return []
        out = []
        for path in sorted(self.dir.glob("*.json")):
            seq = int(path.stem)
            if seq <= after:
                continue
            record = json.loads(path.read_text())
            if record["op"] == "add":
                arrays = load_file(str(self.dir / record["encoding"]))
                items = tuple(GalleryItem(**item) for item in record["items"])
                out.append(Entry(seq, "add", items=items, arrays=arrays))
            else:
                out.append(Entry(seq, "remove", ids=tuple(int(i) for i in record["ids"])))
        return out

    def last_seq(self) -> int:
        names = sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []
        return int(names[-1].stem) if names else 0

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "LOCK").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _next_id(self) -> int:
        """One above every id the gallery and its journal have ever held (ids are never reused)."""
        items_file = self.root / "items.jsonl"
        ids = [json.loads(line)["id"] for line in items_file.read_text().splitlines() if line]
        for path in self.dir.glob("*.json"):  # the records only: the added encodings are not needed here
            ids += [item["id"] for item in json.loads(path.read_text()).get("items", [])]
        return max(ids, default=-1) + 1

    def add(self, photos: list[tuple[str, str | None, bytes]], arrays: dict[str, np.ndarray]) -> list[GalleryItem]:
        """Append photos ((name, class, image bytes)) and their encoding rows; returns their new items."""
        read_gallery_meta(self.root)  # the gallery must be intact before it grows
        with self._locked():
            first = self._next_id()
            items = [
                GalleryItem(first + i, f"added/{name}", class_name, -1, None)
                for i, (name, class_name, _) in enumerate(photos)
            ]
            write_images(self.root, {item.id: data for item, (_, _, data) in zip(items, photos, strict=True)})
            seq = self.last_seq() + 1
            encoding = f"{seq:08d}.safetensors"
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(self.dir / encoding))
            self._publish(seq, {"op": "add", "items": [asdict(item) for item in items], "encoding": encoding})
        logger.info("gallery %s: added %d photo(s) (journal entry %d)", self.root, len(items), seq)
        return items

    def remove(self, ids: list[int]) -> None:
        with self._locked():
            seq = self.last_seq() + 1
            self._publish(seq, {"op": "remove", "ids": [int(i) for i in ids]})
        logger.info("gallery %s: removed %s (journal entry %d)", self.root, ids, seq)

    def _publish(self, seq: int, record: dict) -> None:
        tmp = self.dir / f".{seq:08d}.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(self.dir / f"{seq:08d}.json")
