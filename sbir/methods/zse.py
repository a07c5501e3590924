"""ZSE-SBIR as a method family (docs/zse_sbir.md): a ViT with cross-attention and a relation head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sbir.config import Config, ModelConfig
from sbir.inference.gallery import RelationGallery
from sbir.inference.transforms import Geometry, ImageTransform
from sbir.methods.base import MethodFamily, TrainingLoss
from sbir.models.zse.model import ZSEEncoding


class ZSETrainingLoss(TrainingLoss):
    """Quadruplets from each batch (the release's independent ones, sampled from a P x K batch, or fine-grained
    pairs with a same-class negative photo); 2 x triplet + 4 x relation MSE (docs/zse_sbir.md#training)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        from sbir.losses.zse import ZSELossWeights

        train = config.train
        self.fine_grained = config.model.fine_grained
        self.independent = train.sampler == "quadruplets"
        self.weights = ZSELossWeights(
            triplet_weight=train.triplet_weight,
            relation_weight=train.relation_weight,
            margin=train.triplet_margin,
            triplet_feature=train.triplet_feature,
        )

    def forward(self, model, batch, generator):
        from sbir.data.batches import fine_grained_quadruplets, independent_quadruplets, zse_quadruplets
        from sbir.losses.zse import zse_loss

        if self.independent:  # the batch holds the release's quadruplets as planned
            sketch, sketch_neg, photo_pos, photo_neg = independent_quadruplets(batch)
        elif self.fine_grained:
            sketch, sketch_neg, photo_pos, photo_neg = fine_grained_quadruplets(batch, generator)
        else:
            sketch, sketch_neg, photo_pos, photo_neg = zse_quadruplets(batch, generator)
        return zse_loss(model, sketch, sketch_neg, photo_pos, photo_neg, self.weights)


class ZSEFamily(MethodFamily):
    name = "zse"
    title = "ZSE-SBIR"
    modes = ("ret", "rn", "rn_rerank")
    default_mode = "rn_rerank"
    encoding = ZSEEncoding
    gallery = RelationGallery
    explains = True
    exhaustive_modes = ("rn",)  # the relation head on every (sketch, photo) pair: an explicit request only
    rerank_mode = "rn_rerank"  # top-K by [Ret] from the index, re-scored by the relation head

    def build_model(self, cfg: ModelConfig, class_names: Sequence[str] | None = None, load_pretrained: bool = True):
        from sbir.models.zse import ZSESBIR

        model = ZSESBIR(cfg.zse)
        if load_pretrained:
            from sbir.models.zse.pretrained import load_configured_weights

            load_configured_weights(model)
        return model

    def load_release_checkpoint(self, model: nn.Module, path: str) -> dict[str, Any]:
        from sbir.models.zse import load_official_checkpoint

        return load_official_checkpoint(model, path)  # type: ignore[arg-type]

    def image_transform(self, config: Config, model: nn.Module | None = None) -> ImageTransform:
        return self.transform_for(
            config.model.zse.image_size, config.data.sketch_ink_threshold, config.data.sketch_ink_margin
        )

    @staticmethod
    def transform_for(size: int, ink_threshold: int = 300, ink_margin: int = 10) -> ImageTransform:
        """The release's preprocessing (docs/zse_sbir.md#preprocessing): photos stretched to a square (bicubic);
        sketches cropped to their ink, resized on the long side (bilinear) and padded with white; 0.5 / 0.5."""
        sketch = Geometry("pad", "bilinear", fill=255, ink_crop=True)
        photo = Geometry("stretch", "bicubic")
        return ImageTransform(size, sketch, photo, ink_threshold=ink_threshold, ink_margin=ink_margin)

    def encode(self, model: nn.Module, images: torch.Tensor, modality: str) -> ZSEEncoding:
        return model.encode(images, modality)  # type: ignore[operator]

    def explain(self, model: nn.Module, sketch: torch.Tensor, photo: torch.Tensor):
        from sbir.explain import explain_pair

        return explain_pair(model, sketch, photo)  # type: ignore[arg-type]

    def training_loss(self, config: Config) -> TrainingLoss:
        return ZSETrainingLoss(config)

    def optimizer(self, model: nn.Module, config: Config) -> torch.optim.Optimizer:
        """AdamW over all parameters, as the release trains."""
        return torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
