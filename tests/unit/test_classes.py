"""Cross-dataset class overlap against the shipped class lists (docs/settings.md#cross-dataset-class-overlap)."""

from __future__ import annotations

import pytest

from sbir.data.classes import class_overlap, normalise_class_name
from sbir.data.splitfiles import official_classes
from sbir.data.validation import split_validation_classes


def test_names_are_normalised_before_matching():
    assert normalise_class_name("Hot-Air_Balloon") == "hot air balloon"
    assert class_overlap(["hot-air_balloon", "teddy_bear"], ["hot air balloon", "bear"]) == ["hot air balloon"]


@pytest.mark.parametrize(
    ("split", "tuberlin", "quickdraw"),
    [("zeroshot0", 10, 8), ("zeroshot1", 9, 19)],
)
def test_overlap_counts_use_every_seen_class(split, tuberlin, quickdraw):
    seen, _ = official_classes("sketchy", split)
    _, tu = official_classes("tuberlin", "zeroshot")
    _, qd = official_classes("quickdraw", "zeroshot")
    assert (len(class_overlap(seen, tu)), len(class_overlap(seen, qd))) == (tuberlin, quickdraw)


def test_validation_classes_count_as_seen():
    """The evaluator used to compare against the training classes only, so a validation class of the
    source ('bread' with the default seed) counted as disjoint: the seen list must include it."""
    seen, _ = official_classes("sketchy", "zeroshot0")
    train, val = split_validation_classes(seen, 0.1, 0)
    _, tu = official_classes("tuberlin", "zeroshot")
    from sbir.checkpoint import CheckpointMeta
    from sbir.config import build_config

    meta = CheckpointMeta(build_config(), classes={"seen": train, "val": val})
    assert len(class_overlap(train, tu)) < 10 == len(class_overlap(meta.seen_classes, tu))
