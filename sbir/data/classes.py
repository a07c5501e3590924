"""Class names across datasets: the normalisation and overlap rule of cross-dataset evaluation.

Names are lower-cased, `_` and `-` become spaces, and they are matched exactly, so synonyms are missed
(docs/settings.md#cross-dataset-class-overlap). A model has seen every class of its source split's seen
list, validation classes included: they were held out of gradient steps but chose the checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def normalise_class_name(name: str) -> str:
    return re.sub(r"[_\-]+", " ", name.lower()).strip()


def class_overlap(seen: Iterable[str], target: Iterable[str]) -> list[str]:
    """The target classes whose normalised name is one of the seen classes', in target order."""
    known = {normalise_class_name(c) for c in seen}
    return [c for c in target if normalise_class_name(c) in known]
