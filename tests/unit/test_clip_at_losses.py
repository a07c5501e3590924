"""CLIP-AT losses: triplet values, CE, the relative-distance KL regulariser, patch shuffling, totals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sbir.config import ClipATConfig
from sbir.losses.clip_at import (
    ClipATLoss,
    classification_loss,
    cosine_distance,
    patch_shuffle,
    patch_shuffle_triplet,
    permute_grid,
    relative_distance_loss,
    sample_grid_permutations,
    triplet_loss,
)


def test_cosine_distance_and_triplet_hand_values() -> None:
    anchor = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    positive = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # d = 0, d = 1
    negative = torch.tensor([[0.0, 3.0], [1.0, 1.0]])  # d = 1, d = 1 - 1/sqrt(2)
    assert torch.allclose(cosine_distance(anchor, positive), torch.tensor([0.0, 1.0]))
    # item 0: max(0, 0.3 + 0 - 1) = 0; item 1: 0.3 + 1 - (1 - 1/sqrt2) = 0.3 + 1/sqrt2
    expected = (0.0 + 0.3 + 1 / math.sqrt(2)) / 2
    assert triplet_loss(anchor, positive, negative, margin=0.3).item() == pytest.approx(expected, abs=1e-6)
    assert triplet_loss(anchor, positive, negative, margin=0.0).item() == pytest.approx(1 / math.sqrt(2) / 2)


def test_classification_loss_is_sum_of_two_ce() -> None:
    torch.manual_seed(0)
    s, p, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    expected = F.cross_entropy(s, y) + F.cross_entropy(p, y)
    assert torch.allclose(classification_loss(s, p, y), expected)


def test_relative_distance_zero_when_categories_agree() -> None:
    d_pos = torch.tensor([0.1, 0.2, 0.3, 0.5, 0.6, 0.7])
    # Same delta profile in both categories, up to a shift (softmax is shift-invariant).
    d_neg = torch.tensor([0.5, 0.9, 0.4, 0.9 + 0.2, 1.3 + 0.2, 0.8 + 0.2])
    classes = torch.tensor([0, 0, 0, 1, 1, 1])
    assert relative_distance_loss(d_pos, d_neg, classes).item() == pytest.approx(0.0, abs=1e-7)
    d_neg_other = d_neg.clone()
    d_neg_other[3] += 1.0
    assert relative_distance_loss(d_pos, d_neg_other, classes).item() > 1e-4


def test_relative_distance_hand_value_and_grouping() -> None:
    # Two categories, M = 2. delta_a = (0, 1), delta_b = (1, 0).
    d_pos = torch.zeros(4)
    d_neg = torch.tensor([0.0, 1.0, 1.0, 0.0])
    classes = torch.tensor([3, 3, 7, 7])
    p = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    q = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    kl_pq = (p * (p.log() - q.log())).sum()
    kl_qp = (q * (q.log() - p.log())).sum()
    expected = (kl_pq + kl_qp) / 2
    assert relative_distance_loss(d_pos, d_neg, classes).item() == pytest.approx(expected.item(), rel=1e-5)
    # Interleaved batch order gives the same categories (order kept within each category).
    inter = torch.tensor([0, 2, 1, 3])
    assert relative_distance_loss(d_pos[inter], d_neg[inter], classes[inter]).item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    # Temperature flattens the distributions.
    assert relative_distance_loss(d_pos, d_neg, classes, temperature=10.0) < expected


def test_relative_distance_sort_gives_permutation_invariance() -> None:
    gen = torch.Generator().manual_seed(1)
    d_pos, d_neg = torch.rand(12, generator=gen), torch.rand(12, generator=gen)
    classes = torch.arange(3).repeat_interleave(4)
    perm = torch.cat([torch.randperm(4, generator=gen) + 4 * c for c in range(3)])  # within-category shuffle
    sorted_a = relative_distance_loss(d_pos, d_neg, classes, sort=True)
    sorted_b = relative_distance_loss(d_pos[perm], d_neg[perm], classes[perm], sort=True)
    assert sorted_a.item() == pytest.approx(sorted_b.item(), rel=1e-6)
    unsorted_a = relative_distance_loss(d_pos, d_neg, classes)
    unsorted_b = relative_distance_loss(d_pos[perm], d_neg[perm], classes[perm])
    assert unsorted_a.item() != pytest.approx(unsorted_b.item(), rel=1e-6)


def test_relative_distance_errors_and_single_class() -> None:
    with pytest.raises(ValueError, match="same number of triplets per category"):
        relative_distance_loss(torch.zeros(3), torch.ones(3), torch.tensor([0, 0, 1]))
    single = relative_distance_loss(torch.zeros(3, requires_grad=True), torch.rand(3), torch.zeros(3, dtype=torch.long))
    assert single.item() == 0.0 and single.requires_grad


def _cells(image: torch.Tensor, grid: int) -> list[tuple[float, ...]]:
    _, h, w = image.shape
    ch, cw = h // grid, w // grid
    return sorted(
        tuple(image[:, i * ch : (i + 1) * ch, j * cw : (j + 1) * cw].flatten().tolist())
        for i in range(grid)
        for j in range(grid)
    )


@pytest.mark.parametrize("grid", [2, 3])
def test_patch_shuffle_is_a_cell_permutation(grid: int) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 12, 12, generator=gen)
    g1, g2 = patch_shuffle(images, grid, generator=torch.Generator().manual_seed(5))
    for i in range(6):
        assert _cells(g1[i], grid) == _cells(images[i], grid)
        assert _cells(g2[i], grid) == _cells(images[i], grid)
        assert not torch.equal(g1[i], g2[i])  # gamma2 != gamma1 (cells are distinct random values)


def test_permutations_differ_and_are_reproducible() -> None:
    gamma1, gamma2 = sample_grid_permutations(500, 2, torch.Generator().manual_seed(3))
    assert gamma1.shape == (500, 4)
    assert not (gamma1 == gamma2).all(dim=1).any()
    assert (gamma1.sort(dim=1).values == torch.arange(4)).all()
    again = sample_grid_permutations(500, 2, torch.Generator().manual_seed(3))
    assert torch.equal(gamma1, again[0]) and torch.equal(gamma2, again[1])
    assert len({tuple(r) for r in gamma1.tolist()}) > 1  # resampled per item
    with pytest.raises(ValueError, match="grid"):
        sample_grid_permutations(2, 1)


def test_permute_grid_semantics_and_remainder() -> None:
    image = torch.arange(16.0).view(1, 1, 4, 4)
    identity = permute_grid(image, torch.tensor([[0, 1, 2, 3]]), 2)
    assert torch.equal(identity, image)
    swapped = permute_grid(image, torch.tensor([[3, 2, 1, 0]]), 2)
    assert torch.equal(swapped[0, 0, :2, :2], image[0, 0, 2:, 2:])  # output cell 0 = input cell 3
    odd = torch.arange(25.0).view(1, 1, 5, 5)
    out = permute_grid(odd, torch.tensor([[1, 0, 3, 2]]), 2)
    assert torch.equal(out[..., 4, :], odd[..., 4, :]) and torch.equal(out[..., :, 4], odd[..., :, 4])
    assert torch.equal(out[..., :2, :2], odd[..., :2, 2:4])


def test_patch_shuffle_triplet_shares_gamma1() -> None:
    images = torch.randn(4, 3, 8, 8)
    s1, p1, p2 = patch_shuffle_triplet(images, images.clone(), 2, torch.Generator().manual_seed(0))
    assert torch.equal(s1, p1)
    assert all(not torch.equal(p1[i], p2[i]) for i in range(4))


def _embeddings(n: int, dim: int = 8, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=gen).requires_grad_(True) for _ in range(6)]


def test_category_total() -> None:
    cfg = ClipATConfig(backbone="sbir-tiny-vit", pretrained=None)
    s, p, n, *_ = _embeddings(4)
    ls, lp = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    parts = ClipATLoss(cfg)(s, p, n, sketch_logits=ls, photo_logits=lp, labels=y)
    assert set(parts) == {"triplet", "ce_sketch", "ce_photo", "loss"}
    expected = triplet_loss(s, p, n, 0.3) + 0.5 * classification_loss(ls, lp, y)
    assert torch.allclose(parts["loss"], expected)
    official = ClipATConfig(backbone="sbir-tiny-vit", pretrained=None, preset="official")
    parts = ClipATLoss(official)(s, p, n)  # cls_weight 0: no logits needed
    assert torch.allclose(parts["loss"], triplet_loss(s, p, n, 0.2))
    with pytest.raises(ValueError, match="sketch_logits"):
        ClipATLoss(cfg)(s, p, n)


def test_fine_grained_total_and_gradients() -> None:
    cfg = ClipATConfig(backbone="sbir-tiny-vit", pretrained=None, granularity="fine_grained", ps_margin=0.1)
    s, p, n, ps_s, ps_p, ps_n = _embeddings(6)
    ls = torch.randn(6, 3, requires_grad=True)
    lp = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = ClipATLoss(cfg)
    parts = loss(
        s, p, n, sketch_logits=ls, photo_logits=lp, labels=y, ps_sketch=ps_s, ps_positive=ps_p, ps_negative=ps_n
    )
    assert set(parts) == {"triplet", "ce_sketch", "ce_photo", "delta", "ps", "loss"}
    delta = relative_distance_loss(cosine_distance(s, p), cosine_distance(s, n), y)
    expected = (
        triplet_loss(s, p, n, 0.3)
        + 0.5 * classification_loss(ls, lp, y)
        + 0.1 * delta
        + 1.0 * triplet_loss(ps_s, ps_p, ps_n, 0.1)
    )
    assert torch.allclose(parts["loss"], expected)
    parts["loss"].backward()
    for t in (s, p, n, ps_s, ps_p, ps_n, ls, lp):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    with pytest.raises(ValueError, match="patch_shuffle_triplet"):
        loss(s, p, n, sketch_logits=ls, photo_logits=lp, labels=y)
