"""CLIP-AT losses (docs/clip_at.md#losses), pure torch.

* distance d(a, b) = 1 - cos(a, b);
* triplet (category-level, or "hard" fine-grained when the negative is a same-class photo);
* classification CE for sketch and photo against frozen text embeddings;
* the relative-distance regulariser L_delta: per-category softmax over the triplets' separations
  delta = d(s, p-) - d(s, p+), mean KL divergence over ordered category pairs;
* patch shuffling (n x n pixel grid, permutations gamma1 != gamma2 per item) and its triplet L_PS;
* :class:`ClipATLoss`, which weighs the parts for the category-level or fine-grained total.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbir.config import ClipATConfig


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ``1 - cos(a_i, b_i)`` for B x E inputs (normalised here, so raw features are fine)."""
    if a.shape != b.shape:
        raise ValueError(f"cosine_distance needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return 1.0 - (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch mean of ``max(0, margin + d(a, p) - d(a, n))`` with d = 1 - cos."""
    d_pos = cosine_distance(anchor, positive)
    d_neg = cosine_distance(anchor, negative)
    return F.relu(margin + d_pos - d_neg).mean()


def classification_loss(
    sketch_logits: torch.Tensor,
    photo_logits: torch.Tensor,
    labels: torch.Tensor,
    photo_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``CE(sketch_logits, labels) + CE(photo_logits, photo_labels or labels)`` (each a batch mean)."""
    photo_labels = labels if photo_labels is None else photo_labels
    return F.cross_entropy(sketch_logits, labels) + F.cross_entropy(photo_logits, photo_labels)


def _group_by_class(values: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    """Rearrange ``values`` (B) into C x M rows, one per category, in batch order within a row."""
    if values.ndim != 1 or class_ids.shape != values.shape:
        raise ValueError(
            f"expected 1-d values and class ids of equal length, got {tuple(values.shape)} and {tuple(class_ids.shape)}"
        )
    classes, counts = torch.unique(class_ids, return_counts=True)
    if (counts != counts[0]).any():
        detail = ", ".join(f"{int(c)}: {int(n)}" for c, n in zip(classes.tolist(), counts.tolist(), strict=True))
        raise ValueError(
            "relative_distance_loss needs the same number of triplets per category in the batch "
            f"(a class-balanced N_s x M sampler); got counts {{{detail}}}"
        )
    order = torch.sort(class_ids, stable=True).indices
    return values[order].view(len(classes), int(counts[0]))


def relative_distance_loss(
    d_pos: torch.Tensor,
    d_neg: torch.Tensor,
    class_ids: torch.Tensor,
    temperature: float = 1.0,
    sort: bool = False,
) -> torch.Tensor:
    """L_delta: mean over ordered category pairs c != c' of KL(D_c || D_c').

    ``delta_i = d_neg_i - d_pos_i``; D_c = softmax(delta_c / temperature) over category c's M
    triplets (batch order, or ascending when ``sort``, which makes the loss invariant to the order
    of triplets within a category). Zero when fewer than two categories are present.
    """
    if temperature <= 0:
        raise ValueError(f"delta temperature must be positive, got {temperature}")
    if d_pos.shape != d_neg.shape:
        raise ValueError(f"d_pos and d_neg shapes differ: {tuple(d_pos.shape)} vs {tuple(d_neg.shape)}")
    delta = _group_by_class(d_neg - d_pos, class_ids.to(d_pos.device))  # C x M
    num_classes = delta.shape[0]
    if num_classes < 2:
        return delta.sum() * 0.0
    if sort:
        delta = torch.sort(delta, dim=1).values
    log_p = F.log_softmax(delta / temperature, dim=1)  # C x M
    p = log_p.exp()
    # kl[c, c'] = sum_m p_c (log p_c - log p_c'); the diagonal is zero.
    kl = (p * log_p).sum(dim=1, keepdim=True) - p @ log_p.t()
    return kl.sum() / (num_classes * (num_classes - 1))


# --------------------------------------------------------------------------- patch shuffle


def sample_grid_permutations(
    batch: int, grid: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item permutations gamma1, gamma2 of the ``grid**2`` cells (B x grid^2 each), gamma2 != gamma1."""
    if grid < 2:
        raise ValueError(f"patch-shuffle grid must be >= 2 (a 1x1 grid has one permutation), got {grid}")
    cells = grid * grid
    if batch == 0:
        return torch.zeros(0, cells, dtype=torch.long), torch.zeros(0, cells, dtype=torch.long)
    gamma1 = torch.stack([torch.randperm(cells, generator=generator) for _ in range(batch)])
    gamma2 = torch.stack([torch.randperm(cells, generator=generator) for _ in range(batch)])
    same = (gamma1 == gamma2).all(dim=1)
    while same.any():  # resample the clashes; P(clash) = 1/cells! per draw
        for i in torch.nonzero(same).flatten().tolist():
            gamma2[i] = torch.randperm(cells, generator=generator)
        same = (gamma1 == gamma2).all(dim=1)
    return gamma1, gamma2


def permute_grid(images: torch.Tensor, perms: torch.Tensor, grid: int) -> torch.Tensor:
    """Rearrange each image's ``grid x grid`` pixel cells: output cell j (row-major) = input cell perms[b, j].

    When H or W is not divisible by ``grid`` the cells are floor(H/grid) x floor(W/grid) and the
    leftover bottom rows / right columns stay in place.
    """
    if images.ndim != 4:
        raise ValueError(f"expected B x C x H x W images, got {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if perms.shape != (batch, grid * grid):
        raise ValueError(f"expected perms of shape {(batch, grid * grid)}, got {tuple(perms.shape)}")
    cell_h, cell_w = height // grid, width // grid
    if cell_h == 0 or cell_w == 0:
        raise ValueError(f"a {grid}x{grid} grid does not fit {height}x{width} images")
    region = images[:, :, : cell_h * grid, : cell_w * grid]
    cells = region.reshape(batch, channels, grid, cell_h, grid, cell_w).permute(0, 2, 4, 1, 3, 5)
    cells = cells.reshape(batch, grid * grid, channels, cell_h, cell_w)
    index = perms.to(images.device).long()
    shuffled = cells[torch.arange(batch, device=images.device).unsqueeze(1), index]
    shuffled = shuffled.reshape(batch, grid, grid, channels, cell_h, cell_w).permute(0, 3, 1, 4, 2, 5)
    shuffled = shuffled.reshape(batch, channels, cell_h * grid, cell_w * grid)
    if cell_h * grid == height and cell_w * grid == width:
        return shuffled.contiguous()
    out = images.clone()
    out[:, :, : cell_h * grid, : cell_w * grid] = shuffled
    return out


def patch_shuffle(
    images: torch.Tensor, grid: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images shuffled with gamma1, images shuffled with gamma2)``, gamma2 != gamma1 per item."""
    gamma1, gamma2 = sample_grid_permutations(images.shape[0], grid, generator)
    return permute_grid(images, gamma1, grid), permute_grid(images, gamma2, grid)


def patch_shuffle_triplet(
    sketches: torch.Tensor, photos: torch.Tensor, grid: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs of L_PS: ``(s^gamma1, p^gamma1, p^gamma2)`` with one (gamma1, gamma2) pair per item.

    ``sketches[i]`` and ``photos[i]`` are a matching pair; the anchor s^gamma1 should be closer to
    the identically shuffled photo than to the differently shuffled one.
    """
    if sketches.shape != photos.shape:
        raise ValueError(f"sketch/photo shapes differ: {tuple(sketches.shape)} vs {tuple(photos.shape)}")
    gamma1, gamma2 = sample_grid_permutations(sketches.shape[0], grid, generator)
    return permute_grid(sketches, gamma1, grid), permute_grid(photos, gamma1, grid), permute_grid(photos, gamma2, grid)


def patch_shuffle_loss(
    sketch_g1: torch.Tensor, photo_g1: torch.Tensor, photo_g2: torch.Tensor, margin: float
) -> torch.Tensor:
    """L_PS = mean ``max(0, margin + d(f(s^g1), f(p^g1)) - d(f(s^g1), f(p^g2)))`` on embeddings."""
    return triplet_loss(sketch_g1, photo_g1, photo_g2, margin)


# --------------------------------------------------------------------------- total


class ClipATLoss(nn.Module):
    """Weighted CLIP-AT objective; the parts and weights come from :class:`ClipATConfig`.

    Category level: ``L = L_tri + cls_weight * (CE_s + CE_p)``.
    Fine-grained:   ``L = L_tri_hard + cls_weight * (CE_s + CE_p) + delta_weight * L_delta
    + ps_weight * L_PS`` (the hard triplet's negative is a same-class photo; the caller samples it).
    Terms whose weight is zero are skipped, so their inputs may be omitted.
    """

    def __init__(self, cfg: ClipATConfig) -> None:
        super().__init__()
        self.granularity = cfg.granularity
        self.margin = cfg.margin
        self.cls_weight = cfg.cls_weight
        self.fine_grained = cfg.granularity == "fine_grained"
        self.delta_weight = cfg.delta_weight if self.fine_grained else 0.0
        self.delta_temperature = cfg.delta_temperature
        self.delta_sort = cfg.delta_sort
        self.ps_weight = cfg.ps_weight if self.fine_grained else 0.0
        self.ps_grid = cfg.ps_grid
        self.ps_margin = cfg.margin if cfg.ps_margin is None else cfg.ps_margin

    def forward(
        self,
        sketch: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor,
        *,
        sketch_logits: torch.Tensor | None = None,
        photo_logits: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        ps_sketch: torch.Tensor | None = None,
        ps_positive: torch.Tensor | None = None,
        ps_negative: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss parts and total from embeddings (B x E each) and, as needed, logits and labels.

        ``photo_logits`` are the positive photos' logits; ``labels`` the sketch classes (also the
        positives' classes, and the categories of L_delta). ``ps_*`` are the embeddings of
        ``patch_shuffle_triplet`` outputs. Returns the named parts plus ``'loss'``.
        """
        d_pos = cosine_distance(sketch, positive)
        d_neg = cosine_distance(sketch, negative)
        parts: dict[str, torch.Tensor] = {}
        parts["triplet"] = F.relu(self.margin + d_pos - d_neg).mean()
        total = parts["triplet"]
        if self.cls_weight > 0:
            if sketch_logits is None or photo_logits is None or labels is None:
                raise ValueError("cls_weight > 0 needs sketch_logits, photo_logits and labels")
            parts["ce_sketch"] = F.cross_entropy(sketch_logits, labels)
            parts["ce_photo"] = F.cross_entropy(photo_logits, labels)
            total = total + self.cls_weight * (parts["ce_sketch"] + parts["ce_photo"])
        if self.delta_weight > 0:
            if labels is None:
                raise ValueError("delta_weight > 0 (fine-grained L_delta) needs labels (category ids)")
            parts["delta"] = relative_distance_loss(
                d_pos, d_neg, labels, temperature=self.delta_temperature, sort=self.delta_sort
            )
            total = total + self.delta_weight * parts["delta"]
        if self.ps_weight > 0:
            if ps_sketch is None or ps_positive is None or ps_negative is None:
                raise ValueError(
                    "ps_weight > 0 (fine-grained L_PS) needs ps_sketch, ps_positive and ps_negative: the "
                    "embeddings of patch_shuffle_triplet(sketches, photos, cfg.ps_grid)"
                )
            parts["ps"] = patch_shuffle_loss(ps_sketch, ps_positive, ps_negative, self.ps_margin)
            total = total + self.ps_weight * parts["ps"]
        parts["loss"] = total
        return parts
