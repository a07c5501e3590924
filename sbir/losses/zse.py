"""ZSE-SBIR training loss: 2 * triplet (L2, margin 1) on [Ret] tokens + 4 * MSE(r, 0.99 / 0.01).

A training item is a quadruplet (sketch, same-class sketch_neg, photo_pos, other-class photo_neg).
Pairs are related index-aligned: (sketch_i, photo_pos_i) should score 0.99 and
(sketch_neg_i, photo_neg_i) 0.01, as in the released code (docs/zse_sbir.md#training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sbir.models.zse import ZSESBIR

POSITIVE_TARGET = 0.99
NEGATIVE_TARGET = 0.01


@dataclass(frozen=True)
class ZSELossWeights:
    triplet_weight: float = 2.0
    relation_weight: float = 4.0
    margin: float = 1.0
    triplet_feature: str = "post_ca"  # post_ca | pre_ca | both


def l2_triplet(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean of max(0, margin + ||a - p|| - ||a - n||) on raw (unnormalised) features."""
    d_pos = (anchor - positive).norm(dim=-1)
    d_neg = (anchor - negative).norm(dim=-1)
    return F.relu(margin + d_pos - d_neg).mean()


def zse_loss(
    model: ZSESBIR,
    sketch: torch.Tensor,
    sketch_neg: torch.Tensor,
    photo_pos: torch.Tensor,
    photo_neg: torch.Tensor,
    weights: ZSELossWeights = ZSELossWeights(),
) -> dict[str, torch.Tensor]:
    """Loss parts and total for a batch of quadruplets (each tensor B x 3 x H x W)."""
    b = sketch.shape[0]
    sketches = model.encode(torch.cat([sketch, sketch_neg]), "sketch")
    photos = model.encode(torch.cat([photo_pos, photo_neg]), "photo")
    rel = model.relate(sketches, photos)  # rows 0..b-1: (sketch, photo_pos); b..2b-1: (sketch_neg, photo_neg)
    triplet = sketch.new_zeros(())
    if weights.triplet_feature in ("post_ca", "both"):
        triplet = triplet + l2_triplet(rel.sketch_ret[:b], rel.photo_ret[:b], rel.photo_ret[b:], weights.margin)
    if weights.triplet_feature in ("pre_ca", "both"):
        triplet = triplet + l2_triplet(sketches.ret[:b], photos.ret[:b], photos.ret[b:], weights.margin)
    target = torch.cat([rel.score.new_full((b,), POSITIVE_TARGET), rel.score.new_full((b,), NEGATIVE_TARGET)])
    relation = F.mse_loss(rel.score, target)
    total = weights.triplet_weight * triplet + weights.relation_weight * relation
    return {"loss": total, "triplet": triplet.detach(), "relation": relation.detach()}
