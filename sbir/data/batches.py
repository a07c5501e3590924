"""Class-balanced P x K batch plans and the per-method samplers built on them (pure Python/PyTorch).

A batch holds P distinct classes and K sketches plus K photos of each, so every sketch has same-class
and other-class photos in its batch. In fine-grained mode the K sketches and K photos of a class are K
sketch–photo *pairs* at the same positions. Plans are deterministic in (seed, epoch); the Ray Data
stream in ``pipelines.streams`` turns a plan into decoded batches. The samplers turn one P x K batch
into the tuples each loss needs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from sbir.config import TrainConfig


@dataclass(frozen=True)
class BatchSpec:
    """The layout of one training batch: P classes x K items (and pairs, fine-grained), or B independent
    ZSE-SBIR quadruplets as the release draws them (``quadruplets=B``; P and K are then unused)."""

    classes_per_batch: int = 4  # P
    items_per_class: int = 4  # K
    fine_grained: bool = False
    quadruplets: int = 0  # B > 0: sketches = B anchors then B negatives, photos = B positives then B negatives

    def __post_init__(self) -> None:
        if self.quadruplets:
            if self.fine_grained:
                raise ValueError("independent quadruplets are a category-level sampler; use P x K pairs for FG")
            return
        if self.classes_per_batch < 2:
            raise ValueError("classes_per_batch must be >= 2 so every batch has other-class negatives")
        if self.items_per_class < 2:
            raise ValueError("items_per_class must be >= 2 so every batch has same-class negatives")

    @property
    def batch_size(self) -> int:
        """Images of each modality in one batch (the slots a stream fills)."""
        return 2 * self.quadruplets if self.quadruplets else self.classes_per_batch * self.items_per_class


def batch_spec(train: TrainConfig, fine_grained: bool) -> BatchSpec:
    """The micro-batch layout a training config asks for (per worker and accumulation step)."""
    if train.sampler == "quadruplets":
        return BatchSpec(quadruplets=train.micro_batch)
    return BatchSpec(train.classes_per_batch, train.items_per_class, fine_grained)


# A slot is (batch index, modality, position in the batch's P*K layout: class p, item k -> p*K + k).
Slot = tuple[int, str, int]


def plan_epoch(
    rows: Iterable[Mapping[str, object]], spec: BatchSpec, num_batches: int, seed: int, epoch: int
) -> dict[str, list[Slot]]:
    """Path -> the slots it fills in this epoch's `num_batches` batches.

    `rows` carry path, class_id, modality and pair_id. Items are drawn without replacement within a
    batch when a class has enough, with replacement otherwise.
    """
    by_class: dict[int, dict[str, list[str]]] = defaultdict(lambda: {"sketch": [], "photo": []})
    # Fine-grained: per class and pair id, every sketch of the pair (Sketchy has ~5 per photo) and its photo.
    pairs: dict[int, dict[str, dict[str, list[str]]]] = defaultdict(lambda: {"sketch": {}, "photo": {}})
    for row in rows:
        cid, modality, path = int(row["class_id"]), str(row["modality"]), str(row["path"])
        by_class[cid][modality].append(path)
        pair = row.get("pair_id")
        if spec.fine_grained and pair:
            pairs[cid][modality].setdefault(str(pair), []).append(path)
    for groups in by_class.values():
        for paths in groups.values():
            paths.sort()
    if spec.fine_grained:
        usable = {c: _pair_list(p) for c, p in pairs.items()}
        usable = {c: v for c, v in usable.items() if v}
    else:
        usable = {c: g for c, g in by_class.items() if g["sketch"] and g["photo"]}
    needed = 2 if spec.quadruplets else spec.classes_per_batch
    if len(usable) < needed:
        kind = "classes with sketch–photo pairs" if spec.fine_grained else "classes with both sketches and photos"
        raise ValueError(f"need at least {needed} {kind}, found {len(usable)}")
    classes = sorted(usable)
    rng = np.random.default_rng([seed, epoch])
    if spec.quadruplets:
        return _plan_quadruplets(usable, classes, spec.quadruplets, num_batches, rng)
    plan: dict[str, list[Slot]] = defaultdict(list)
    k = spec.items_per_class
    for b in range(num_batches):
        chosen = rng.choice(classes, spec.classes_per_batch, replace=False)
        for p, cid in enumerate(chosen):
            if spec.fine_grained:
                pair_list = usable[cid]
                picks = rng.choice(len(pair_list), k, replace=len(pair_list) < k)
                for i, pick in enumerate(picks):
                    sketches, photo = pair_list[pick]
                    sketch = sketches[int(rng.integers(len(sketches)))]  # any sketch of the pair, not the first
                    plan[sketch].append((b, "sketch", p * k + i))
                    plan[photo].append((b, "photo", p * k + i))
                continue
            for modality in ("sketch", "photo"):
                paths = usable[cid][modality]
                picks = rng.choice(len(paths), k, replace=len(paths) < k)
                for i, pick in enumerate(picks):
                    plan[paths[pick]].append((b, modality, p * k + i))
    return dict(plan)


def _plan_quadruplets(
    usable: Mapping[int, dict[str, list[str]]], classes: list[int], b: int, num_batches: int, rng: np.random.Generator
) -> dict[str, list[Slot]]:
    """The release's sampling (docs/zse_sbir.md#training): each of the `b` items of a batch draws two distinct
    classes c0, c2 uniformly, then an anchor sketch, a second sketch and a photo of c0 and a photo of c2.
    Every file is eligible (the release never drew a class's first file)."""
    plan: dict[str, list[Slot]] = defaultdict(list)
    for batch in range(num_batches):
        for i in range(b):
            c0, c2 = rng.choice(classes, 2, replace=False)
            sketches = usable[c0]["sketch"]
            anchor, negative = rng.choice(len(sketches), 2, replace=len(sketches) < 2)
            plan[sketches[anchor]].append((batch, "sketch", i))
            plan[sketches[negative]].append((batch, "sketch", b + i))
            positives, negatives = usable[c0]["photo"], usable[c2]["photo"]
            plan[positives[int(rng.integers(len(positives)))]].append((batch, "photo", i))
            plan[negatives[int(rng.integers(len(negatives)))]].append((batch, "photo", b + i))
    return dict(plan)


def _pair_list(pairs: dict[str, dict[str, list[str]]]) -> list[tuple[list[str], str]]:
    """(every sketch of the pair, sorted; the pair's photo) for each pair id with both."""
    return [
        (sorted(pairs["sketch"][pid]), sorted(pairs["photo"][pid])[0])
        for pid in sorted(pairs["sketch"])
        if pid in pairs["photo"]
    ]


# --------------------------------------------------------------------------- samplers over one batch


def _other_index(
    labels: torch.Tensor, same: bool, generator: torch.Generator | None, exclude_self: bool
) -> torch.Tensor:
    """For each position, a random position whose label is (not) the same; self excluded when asked."""
    n = len(labels)
    match = labels[:, None] == labels[None, :]
    allowed = match if same else ~match
    if exclude_self:
        allowed = allowed & ~torch.eye(n, dtype=torch.bool)
    if not allowed.any(dim=1).all():
        raise ValueError("a batch position has no valid partner; check the P x K batch layout")
    weights = allowed.float()
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def zse_quadruplets(
    batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sketch, same-class sketch_neg, same-class photo_pos, other-class photo_neg) per anchor sketch."""
    sk, ph = batch["sketch"], batch["photo"]
    sl, pl = batch["sketch_label"], batch["photo_label"]
    same_sketch = _other_index(sl, True, generator, exclude_self=True)
    pos = _cross_index(sl, pl, True, generator)
    neg = _cross_index(sl, pl, False, generator)
    return sk, sk[same_sketch], ph[pos], ph[neg]


def independent_quadruplets(
    batch: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The quadruplets of a ``BatchSpec(quadruplets=B)`` batch, as laid out by the plan (no sampling)."""
    sk, ph = batch["sketch"], batch["photo"]
    b = sk.shape[0] // 2
    return sk[:b], sk[b:], ph[:b], ph[b:]


def fine_grained_quadruplets(
    batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fine-grained ZSE-SBIR: (sketch, the same sketch, its paired photo, another photo of its class).

    The relation head learns (sketch, paired photo) -> 0.99 and (sketch, same-class photo) -> 0.01, and the
    triplet pulls the paired photo closer than the same-class one: instance-level, as CLIP-AT's hard triplet.
    """
    sketches, paired, hard, _ = fine_grained_triplets(batch, generator)
    return sketches, sketches, paired, hard


def clip_triplets(
    batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Category level: (sketch, same-class photo, other-class photo, sketch labels, positive labels)."""
    sl, pl = batch["sketch_label"], batch["photo_label"]
    pos = _cross_index(sl, pl, True, generator)
    neg = _cross_index(sl, pl, False, generator)
    return batch["sketch"], batch["photo"][pos], batch["photo"][neg], sl, pl[pos]


def fine_grained_triplets(
    batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fine-grained: (sketch, its paired photo, another photo of the same class, labels)."""
    sl = batch["sketch_label"]
    hard = _other_index(sl, True, generator, exclude_self=True)  # positions align: photo i pairs sketch i
    return batch["sketch"], batch["photo"], batch["photo"][hard], sl


def _cross_index(
    sketch_labels: torch.Tensor, photo_labels: torch.Tensor, same: bool, generator: torch.Generator | None
) -> torch.Tensor:
    match = sketch_labels[:, None] == photo_labels[None, :]
    allowed = match if same else ~match
    if not allowed.any(dim=1).all():
        raise ValueError("a sketch has no same-class or other-class photo in its batch")
    return torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)
