"""CLIP-AT as a method family (docs/clip_at.md): prompted open_clip visual tower, a bi-encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sbir.config import Config, ModelConfig
from sbir.inference.gallery import Gallery
from sbir.inference.transforms import Geometry, ImageTransform
from sbir.methods.base import MethodFamily, TrainingLoss
from sbir.models.encoding import EmbeddingEncoding


class ClipATTrainingLoss(TrainingLoss):
    """Triplets from each batch (fine-grained: paired positive, same-class negative) and the weighted parts."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        from sbir.losses.clip_at import ClipATLoss

        self.criterion = ClipATLoss(config.model.clip_at)
        self.fine_grained = config.model.fine_grained

    def forward(self, model, batch, generator):
        from sbir.data.batches import clip_triplets, fine_grained_triplets
        from sbir.models.clip_at.objective import clip_at_losses

        if self.fine_grained:
            sketches, positives, negatives, labels = fine_grained_triplets(batch, generator)
        else:
            sketches, positives, negatives, labels, _ = clip_triplets(batch, generator)
        return clip_at_losses(model, self.criterion, sketches, positives, negatives, labels, generator)


class ClipATFamily(MethodFamily):
    name = "clip_at"
    title = "CLIP-AT"
    modes = ("ret",)
    default_mode = "ret"
    encoding = EmbeddingEncoding
    gallery = Gallery

    def build_model(self, cfg: ModelConfig, class_names: Sequence[str] | None = None, load_pretrained: bool = True):
        from sbir.models.clip_at import build_clip_at

        clip_cfg = cfg.clip_at if load_pretrained else cfg.clip_at.model_copy(update={"pretrained": None})
        return build_clip_at(clip_cfg, class_names)

    def image_transform(self, config: Config, model: nn.Module | None = None) -> ImageTransform:
        """Size and normalisation come from the backbone, so the model is built when not given."""
        if model is None:
            model = self.build_model(config.model, load_pretrained=False)
        return self.transform_for(model.image_size, model.mean, model.std, model.pad_fill)

    @staticmethod
    def transform_for(
        size: int, mean: tuple[float, float, float], std: tuple[float, float, float], pad_fill: int = 0
    ) -> ImageTransform:
        """Either modality resized on the long side (bicubic) and padded with ``pad_fill``, then the backbone's
        mean/std (docs/clip_at.md#preprocessing)."""
        geometry = Geometry("pad", "bicubic", fill=pad_fill)
        return ImageTransform(size, geometry, geometry, tuple(mean), tuple(std))  # type: ignore[arg-type]

    def encode(self, model: nn.Module, images: torch.Tensor, modality: str) -> EmbeddingEncoding:
        return EmbeddingEncoding(model.encode(images, modality))  # type: ignore[operator]

    def training_loss(self, config: Config) -> TrainingLoss:
        return ClipATTrainingLoss(config)

    def optimizer(self, model: nn.Module, config: Config) -> torch.optim.Optimizer:
        """Adam over the prompts (train.lr) and the tuned LayerNorms (train.lr_backbone, default train.lr)."""
        train = config.train
        groups = model.param_groups(train.lr, train.lr_backbone or train.lr)  # type: ignore[operator]
        return torch.optim.Adam(groups, lr=train.lr)
