"""What a serving replica holds of a saved gallery: one shard of it (all of it for one shard), kept in step
with the folder's journal.

The replica answers the two stages of a search for its items: ``candidates`` (the FAISS index) and
``relation_scores`` (the method's second stage, from the photos' cached encodings, for the candidates it
holds). It applies journal entries only up to a sequence number it is given or reads from the journal's
head, so the hot path touches no file: a search carries the newest sequence its sender knows, and a
replica that is behind catches up first.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch import nn

from sbir.inference.gallery import Gallery, GalleryItem
from sbir.inference.saved_gallery import Journal, ShardSpec, load_gallery
from sbir.models.encoding import Encoding

logger = logging.getLogger(__name__)


class GalleryShard:
    """Shard ``spec`` of the saved gallery in ``directory``, scored with ``model``."""

    def __init__(
        self,
        directory: str | Path,
        model: nn.Module,
        *,
        method: str,
        encoding: type[Encoding],
        checkpoint_sha256: str | None = None,
        spec: ShardSpec | None = None,
    ) -> None:
        self.spec = spec or ShardSpec()
        self.encoding = encoding
        self.journal = Journal(directory)
        head = self.journal.head().seq  # what the saved folder and its journal hold now
        self.gallery: Gallery = load_gallery(
            directory,
            model,
            method=method,
            encoding=encoding,
            checkpoint_sha256=checkpoint_sha256,
            shard=self.spec,
        )
        self.applied = 0
        self.sync(head)

    def __len__(self) -> int:
        return len(self.gallery)

    # ----------------------------------------------------------------- keeping up with the journal
    def sync(self, upto: int | None = None) -> int:
        """Apply the journal up to ``upto`` (None: its head, one small file read); the sequence now applied."""
        if upto is not None and upto <= self.applied:
            return self.applied
        self.applied = self.journal.replay(self.applied, self._add, self._remove, upto)
        return self.applied

    def _add(self, arrays: dict[str, np.ndarray], items: list[GalleryItem]) -> None:
        mine = np.flatnonzero(self.spec.holds(np.asarray([item.id for item in items], dtype=np.int64)))
        if len(mine):
            photos = self.encoding.from_arrays({name: values[mine] for name, values in arrays.items()})
            self.gallery.add(photos, [items[i] for i in mine])

    def _remove(self, ids: list[int]) -> None:
        held = self.gallery.rows_of(np.asarray(ids, dtype=np.int64), missing_ok=True) >= 0
        if held.any():
            self.gallery.remove(np.asarray(ids, dtype=np.int64)[held])

    # ----------------------------------------------------------------- the two stages
    def candidates(self, embeddings: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``depth`` best of this shard's ids per query (scores, ids; -1 padding), best first."""
        return self.gallery.candidates(embeddings, depth)

    def relation_scores(self, queries: Encoding, ids: np.ndarray) -> np.ndarray:
        """Second-stage scores of each query with its candidate ids; NaN for ids another shard holds."""
        return self.gallery.relation_scores(queries, ids, missing_ok=True)

    # ----------------------------------------------------------------- items
    def describe(self, ids: list[int]) -> list[GalleryItem]:
        """The items of ``ids`` this shard holds."""
        rows = self.gallery.rows_of(np.asarray(ids, dtype=np.int64), missing_ok=True)
        return [self.gallery.items[int(r)] for r in rows if r >= 0]

    def holds(self, gallery_id: int) -> bool:
        return bool(self.gallery.rows_of(np.asarray([gallery_id]), missing_ok=True)[0] >= 0)
