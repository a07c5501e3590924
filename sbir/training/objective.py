"""One module whose ``forward(batch)`` is the training loss of either method, so DDP wraps one thing."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sbir.config import Config
from sbir.data.batches import clip_triplets, fine_grained_triplets, zse_quadruplets
from sbir.losses.zse import ZSELossWeights, zse_loss


class TrainingObjective(nn.Module):
    """Model plus its loss: P x K batch in, named loss parts (with ``'loss'``) out.

    Tuple sampling inside the batch uses a generator seeded per (seed, rank), so runs repeat.
    """

    def __init__(self, model: nn.Module, config: Config, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.method = config.model.method
        self.generator = torch.Generator().manual_seed(seed)
        train = config.train
        if self.method == "zse":
            self.weights = ZSELossWeights(
                triplet_weight=train.triplet_weight,
                relation_weight=train.relation_weight,
                margin=train.triplet_margin,
                triplet_feature=train.triplet_feature,
            )
        else:
            from sbir.losses.clip_at import ClipATLoss

            self.criterion = ClipATLoss(config.model.clip_at)
            self.fine_grained = config.model.clip_at.granularity == "fine_grained"

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.method == "zse":
            sketch, sketch_neg, photo_pos, photo_neg = zse_quadruplets(batch, self.generator)
            return zse_loss(self.model, sketch, sketch_neg, photo_pos, photo_neg, self.weights)
        from sbir.models.clip_at.objective import clip_at_losses

        if self.fine_grained:
            sketches, positives, negatives, labels = fine_grained_triplets(batch, self.generator)
        else:
            sketches, positives, negatives, labels, _ = clip_triplets(batch, self.generator)
        return clip_at_losses(self.model, self.criterion, sketches, positives, negatives, labels, self.generator)
