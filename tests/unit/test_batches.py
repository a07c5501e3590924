"""P x K batch plans and the samplers built on them (pure Python, no Ray)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from sbir.data.batches import BatchSpec, clip_triplets, fine_grained_triplets, plan_epoch, zse_quadruplets


def _rows(classes: int = 5, per_class: int = 6, paired: bool = True) -> list[dict]:
    rows = []
    for c in range(classes):
        for i in range(per_class):
            pid = f"c{c}/p{i}" if paired else ""
            rows.append({"path": f"c{c}/s{i}.png", "class_id": c, "modality": "sketch", "pair_id": pid})
            rows.append({"path": f"c{c}/p{i}.jpg", "class_id": c, "modality": "photo", "pair_id": pid})
    return rows


def _batches(plan, rows, spec, num_batches):
    """Rebuild per-batch slot tables from a plan: {batch: {modality: {slot: path}}}."""
    out = {b: {"sketch": {}, "photo": {}} for b in range(num_batches)}
    for path, slots in plan.items():
        for b, modality, pos in slots:
            assert pos not in out[b][modality], "a slot was filled twice"
            out[b][modality][pos] = path
    return out


def test_plan_fills_every_slot_with_p_classes_times_k_items():
    rows = _rows()
    cls = {r["path"]: r["class_id"] for r in rows}
    spec = BatchSpec(classes_per_batch=3, items_per_class=4)
    plan = plan_epoch(rows, spec, num_batches=5, seed=1, epoch=0)
    for tables in _batches(plan, rows, spec, 5).values():
        for modality in ("sketch", "photo"):
            assert sorted(tables[modality]) == list(range(12))
            labels = [cls[tables[modality][pos]] for pos in range(12)]
            assert len(set(labels)) == 3 and set(Counter(labels).values()) == {4}
            assert all(labels[p * 4] == labels[p * 4 + k] for p in range(3) for k in range(4))
        assert [cls[tables["sketch"][i]] for i in range(12)] == [cls[tables["photo"][i]] for i in range(12)]


def test_plan_is_deterministic_per_seed_and_epoch():
    rows = _rows()
    spec = BatchSpec(3, 2)
    a = plan_epoch(rows, spec, 4, seed=7, epoch=2)
    assert a == plan_epoch(list(reversed(rows)), spec, 4, seed=7, epoch=2)  # input order does not matter
    assert a != plan_epoch(rows, spec, 4, seed=7, epoch=3)


def test_fine_grained_plan_keeps_pairs_together():
    rows = _rows()
    pair = {r["path"]: r["pair_id"] for r in rows}
    plan = plan_epoch(rows, BatchSpec(2, 3, fine_grained=True), 3, seed=0, epoch=0)
    for tables in _batches(plan, rows, None, 3).values():
        for pos in range(6):
            assert pair[tables["sketch"][pos]] == pair[tables["photo"][pos]]


def test_fine_grained_plans_sample_every_sketch_of_a_pair():
    """Sketchy has ~5 sketches per photo; keying sketches by pair id used to keep only the first."""
    rows = []
    for c in range(3):
        for i in range(4):
            pid = f"c{c}/p{i}"
            rows.append({"path": f"c{c}/p{i}.jpg", "class_id": c, "modality": "photo", "pair_id": pid})
            rows += [
                {"path": f"c{c}/p{i}-{k}.png", "class_id": c, "modality": "sketch", "pair_id": pid} for k in range(5)
            ]
    sketches = {r["path"] for r in rows if r["modality"] == "sketch"}
    pair = {r["path"]: r["pair_id"] for r in rows}
    plan = plan_epoch(rows, BatchSpec(2, 4, fine_grained=True), 60, seed=0, epoch=0)
    used = {path for path, slots in plan.items() if any(modality == "sketch" for _, modality, _ in slots)}
    assert used == sketches  # all 60 sketches of the 12 pairs are drawn over the epoch
    for tables in _batches(plan, rows, None, 60).values():
        assert all(pair[tables["sketch"][pos]] == pair[tables["photo"][pos]] for pos in range(8))


def test_plan_errors_are_actionable():
    with pytest.raises(ValueError, match="at least 3 classes"):
        plan_epoch(_rows(classes=2), BatchSpec(3, 2), 1, 0, 0)
    with pytest.raises(ValueError, match="sketch–photo pairs"):
        plan_epoch(_rows(paired=False), BatchSpec(2, 2, fine_grained=True), 1, 0, 0)
    with pytest.raises(ValueError, match="other-class negatives"):
        BatchSpec(1, 4)


def _batch(p: int = 3, k: int = 4) -> dict[str, torch.Tensor]:
    labels = torch.arange(p).repeat_interleave(k)
    n = p * k
    # Encode the position in the pixels so sampled tensors can be traced back to their slot.
    sketch = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2).clone()
    return {"sketch": sketch, "photo": sketch + 100, "sketch_label": labels, "photo_label": labels.clone()}


def _slot(images: torch.Tensor, offset: float = 0) -> list[int]:
    return [int(v - offset) for v in images[:, 0, 0, 0]]


def test_zse_quadruplets_follow_the_release_sampling():
    batch = _batch()
    labels = batch["sketch_label"].tolist()
    gen = torch.Generator().manual_seed(0)
    sketch, sketch_neg, photo_pos, photo_neg = zse_quadruplets(batch, gen)
    for i, (sn, pp, pn) in enumerate(zip(_slot(sketch_neg), _slot(photo_pos, 100), _slot(photo_neg, 100), strict=True)):
        assert sn != i and labels[sn] == labels[i]  # another sketch of the same class
        assert labels[pp] == labels[i] and labels[pn] != labels[i]
    assert torch.equal(sketch, batch["sketch"])


def test_clip_and_fine_grained_triplets():
    batch = _batch()
    labels = batch["sketch_label"].tolist()
    _, pos, neg, sl, pl = clip_triplets(batch, torch.Generator().manual_seed(1))
    assert all(labels[p] == labels[i] for i, p in enumerate(_slot(pos, 100)))
    assert all(labels[n] != labels[i] for i, n in enumerate(_slot(neg, 100)))
    assert torch.equal(sl, pl)
    _, paired, hard, _ = fine_grained_triplets(batch, torch.Generator().manual_seed(2))
    assert _slot(paired, 100) == list(range(12))
    assert all(h != i and labels[h] == labels[i] for i, h in enumerate(_slot(hard, 100)))


def test_independent_quadruplets_follow_the_release():
    """15 quadruplets per batch, each drawn on its own: anchor, second sketch and positive photo of a class c0,
    negative photo of another class c2, from the whole class (60 images, nearly all distinct)."""
    from sbir.data.batches import independent_quadruplets

    rows = _rows(classes=20, per_class=40)
    cls = {r["path"]: r["class_id"] for r in rows}
    spec = BatchSpec(quadruplets=15)
    assert spec.batch_size == 30  # per modality: 15 anchors + 15 negatives, 15 positives + 15 negatives
    plan = plan_epoch(rows, spec, 20, seed=2021, epoch=0)
    distinct = []
    for tables in _batches(plan, rows, spec, 20).values():
        sk = [cls[tables["sketch"][i]] for i in range(30)]
        ph = [cls[tables["photo"][i]] for i in range(30)]
        assert all(sk[i] == sk[15 + i] == ph[i] != ph[15 + i] for i in range(15))
        distinct.append(len(set(tables["sketch"].values()) | set(tables["photo"].values())))
    assert min(distinct) >= 55, distinct  # P x K batches of 5 classes x 3 reuse about half of their 60 slots
    batch = {"sketch": torch.arange(30.0), "photo": torch.arange(30.0) + 100}
    anchor, negative, positive, other = independent_quadruplets(batch)
    assert anchor.tolist() == list(range(15)) and negative.tolist()[0] == 15
    assert positive.tolist()[0] == 100 and other.tolist()[0] == 115


def test_the_release_batch_of_15_splits_over_any_worker_count_that_divides_it():
    from sbir.config import ConfigError, load_config

    for workers in (1, 3, 5, 15):
        assert load_config("zse_sketchy25", [f"train.num_workers={workers}"]).train.micro_batch == 15 // workers
    with pytest.raises(ConfigError, match="split evenly"):
        load_config("zse_sketchy25", ["train.num_workers=2"])
    with pytest.raises(ConfigError, match="category-level sampling"):
        load_config("clip_at_sketchy21", ["train.sampler=quadruplets"])


def test_fine_grained_zse_quadruplets_use_a_same_class_photo_as_negative():
    from sbir.data.batches import fine_grained_quadruplets

    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    batch = {"sketch": torch.arange(6.0), "photo": torch.arange(6.0) + 10, "sketch_label": labels}
    sketch, sketch_neg, paired, hard = fine_grained_quadruplets(batch, torch.Generator().manual_seed(0))
    assert torch.equal(sketch, sketch_neg) and torch.equal(paired, batch["photo"])
    picked = (hard - 10).long()
    assert all(labels[picked[i]] == labels[i] and picked[i] != i for i in range(6))
