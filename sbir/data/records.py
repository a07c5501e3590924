"""The record model every dataset reader produces and every pipeline consumes.

A reader turns a dataset root plus a split into a :class:`DatasetSplit`: the class lists per role
and one :class:`ImageRecord` per image. Class ids are global within a split: seen training classes
first (in split-file order), then validation classes, then unseen test classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sbir.errors import SbirError

Modality = Literal["sketch", "photo"]
Role = Literal["train", "val", "test"]
MODALITIES: tuple[str, ...] = ("sketch", "photo")
ROLES: tuple[str, ...] = ("train", "val", "test")


class DatasetError(SbirError, ValueError):
    """A dataset root or split file is missing, malformed or inconsistent (the message names it)."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset split."""

    path: str  # relative to the dataset root, '/'-separated
    class_name: str
    modality: Modality
    role: Role
    pair_id: str | None = None  # fine-grained key: a photo's own id, or the id of the photo a sketch depicts


@dataclass
class DatasetSplit:
    """Class lists per role and the records of one split of one dataset."""

    root: str
    layout: str
    split: str
    train_classes: list[str]  # seen classes used for training (validation classes removed)
    val_classes: list[str]  # held-out seen classes for model selection (class-disjoint)
    test_classes: list[str]  # unseen classes
    records: list[ImageRecord] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        """All classes in global id order: train, then val, then test."""
        return [*self.train_classes, *self.val_classes, *self.test_classes]

    def class_id(self, name: str) -> int:
        try:
            return self._ids[name]
        except KeyError:
            raise DatasetError(f"class {name!r} is not part of split {self.split!r}") from None

    @property
    def _ids(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}

    def classes_of(self, role: Role) -> list[str]:
        return {"train": self.train_classes, "val": self.val_classes, "test": self.test_classes}[role]

    def select(self, role: Role | None = None, modality: Modality | None = None) -> list[ImageRecord]:
        return [
            r for r in self.records if (role is None or r.role == role) and (modality is None or r.modality == modality)
        ]
