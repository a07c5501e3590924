"""Class-disjoint validation split for zero-shot model selection (docs/data.md#validation-classes).

A seeded, fixed fraction of the SEEN classes is held out as validation classes (10 / 10 / 22 / 8 for
Sketchy-25 / Sketchy-21 / TU-Berlin / QuickDraw at 10%). Classes are ranked by sha256(seed, name), so
the choice depends only on the names, the fraction and the seed (not on Python or NumPy versions).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Sequence

from sbir.data.records import DatasetError, DatasetSplit, Role

logger = logging.getLogger(__name__)


def validation_count(n_seen: int, fraction: float) -> int:
    """Number of validation classes: round(fraction * n_seen), at least 1 if fraction > 0, leaving >= 1 to train."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0 or n_seen < 2:
        return 0
    return min(n_seen - 1, max(1, math.floor(fraction * n_seen + 0.5)))


def _rank_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}\x00{name}".encode()).hexdigest()


def split_validation_classes(seen: Sequence[str], fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, val) partition of the seen classes; both keep the order of `seen`."""
    dupes = sorted(name for name, n in Counter(seen).items() if n > 1)
    if dupes:
        raise DatasetError(f"duplicate seen classes: {dupes}")
    k = validation_count(len(seen), fraction)
    if fraction > 0 and k == 0:
        logger.warning("only %d seen class(es): no validation classes held out", len(seen))
    chosen = set(sorted(seen, key=lambda name: _rank_key(seed, name))[:k])
    return [c for c in seen if c not in chosen], [c for c in seen if c in chosen]


def selection_role(split: DatasetSplit, *, use_unseen_test: bool = False) -> Role:
    """The role whose classes drive model selection: 'val' by default; 'test' only as an explicit, logged opt-in."""
    if use_unseen_test:
        logger.warning(
            "model selection on the UNSEEN TEST classes of %s/%s (explicit opt-in): results are not zero-shot clean",
            split.layout,
            split.split,
        )
        return "test"
    if not split.val_classes:
        raise DatasetError(
            f"split {split.split!r} has no validation classes: set data.val_fraction > 0 "
            "or opt into selection on the unseen test classes (train.model_selection=unseen_test)"
        )
    return "val"
