"""The CLIP-AT model: a frozen open_clip ViT with visual prompts, tuned LayerNorms and a text classifier.

``encode(images, modality)`` gives L2-normalised retrieval embeddings (a bi-encoder: gallery photos
can be indexed). Sketch and photo differ only in their prompt set and, with
``ln_sharing='per_modality'``, in their LayerNorm affine copy; the photo copy is swapped in with
``torch.func.functional_call`` so the backbone's state-dict layout stays open_clip's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sbir.config import ClipATConfig
from sbir.models.clip_at.backbone import Backbone, load_backbone, normalization_stats
from sbir.models.clip_at.encoder import PromptedViT
from sbir.models.clip_at.prompts import VisualPrompts, check_modality
from sbir.models.clip_at.text import TextClassifier
from sbir.models.clip_at.tuning import LayerNormCopies, layernorm_parameter_names, trainable_visual_names
from sbir.models.conv_stem import ConvStem

log = logging.getLogger(__name__)


def _square_patch(patch_size: int | tuple[int, int]) -> int:
    height, width = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    if height != width:
        raise ValueError(f"stem=conv_bn needs square patches, the backbone has {height}x{width}")
    return int(height)


class ClipAT(nn.Module):
    """CLIP-AT (Sain et al., CVPR 2023) for category-level or fine-grained zero-shot SBIR.

    Submodules: ``encoder`` (prompted open_clip ViT; ``encoder.visual`` is the open_clip tower),
    ``prompts``, ``photo_ln`` (photo LayerNorm copy, or None when shared) and ``classifier``
    (frozen text tower + cached class embeddings).
    """

    def __init__(self, cfg: ClipATConfig, backbone: Backbone) -> None:
        super().__init__()
        self.cfg = cfg
        clip = backbone.model
        visual = clip.visual
        clip.visual = None  # the text tower keeps the rest; the visual tower lives in the encoder
        if cfg.stem == "conv_bn":
            if backbone.pretrained:
                raise ValueError("stem=conv_bn needs a random-init backbone (pretrained=null)")
            visual.conv1 = ConvStem(visual.conv1.out_channels, _square_patch(visual.patch_size))
        self.encoder = PromptedViT(visual)
        self.backbone_name = backbone.name
        self.pretrained = backbone.pretrained
        self._image_size = backbone.image_size
        self._mean, self._std = normalization_stats(cfg.normalization, backbone)
        self.embed_dim = int(visual.output_dim)

        self.prompts = VisualPrompts(
            length=cfg.prompt_len,
            width=self.encoder.width,
            layers=self.encoder.num_layers,
            depth=cfg.prompt_depth,
            sharing=cfg.prompt_sharing or "per_modality",
            init_std=cfg.prompt_init_std,
        )
        self.photo_ln = LayerNormCopies(visual, prefix="visual.") if cfg.ln_sharing == "per_modality" else None

        scale = backbone.logit_scale if cfg.cls_temperature is None else 1.0 / cfg.cls_temperature
        tokenizer = open_clip.get_tokenizer(backbone.name)
        self.classifier = TextClassifier(clip, tokenizer, cfg.cls_template, scale, self.embed_dim)
        self._apply_freeze()

    # ------------------------------------------------------------------ tuning

    def _apply_freeze(self) -> None:
        """Freeze everything, then enable prompts, the LN copies and the ``cfg.freeze`` visual set."""
        visual = self.encoder.visual
        trainable = set(trainable_visual_names(visual, self.cfg.freeze))
        if self.cfg.stem == "conv_bn":  # never pretrained, so always trained whatever the freeze mode
            trainable |= {name for name, _ in visual.named_parameters() if name.startswith("conv1.")}
        for param in self.parameters():
            param.requires_grad_(False)
        for name, param in visual.named_parameters():
            param.requires_grad_(name in trainable)
        for param in self.prompts.parameters():
            param.requires_grad_(True)
        if self.photo_ln is not None:
            for param in self.photo_ln.parameters():
                param.requires_grad_(True)
        self._trainable_visual_names = sorted(trainable)

    def trainable_parameter_names(self) -> list[str]:
        """Names (``named_parameters`` style) of every trainable parameter."""
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def trainable_parameter_count(self) -> int:
        """Number of trainable scalars (prompts + tuned backbone parameters + LN copies)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def layernorm_parameter_count(self) -> int:
        """LayerNorm affine scalars in one copy of the visual tower (39,936 for ViT-B/32)."""
        params = dict(self.encoder.visual.named_parameters())
        return sum(params[n].numel() for n in layernorm_parameter_names(self.encoder.visual))

    def param_groups(self, lr_prompt: float, lr_backbone: float) -> list[dict[str, Any]]:
        """Optimiser groups: ``prompts`` at ``lr_prompt``, every other trainable tensor at ``lr_backbone``.

        Empty groups are left out; each group carries a ``name`` key for logging.
        """
        prompt_ids = {id(p) for p in self.prompts.parameters()}
        prompts = [p for p in self.prompts.parameters() if p.requires_grad]
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in prompt_ids]
        groups = [
            {"name": "prompts", "params": prompts, "lr": lr_prompt},
            {"name": "backbone", "params": rest, "lr": lr_backbone},
        ]
        return [g for g in groups if g["params"]]

    # ------------------------------------------------------------------ properties

    @property
    def image_size(self) -> int:
        """Square input side the visual tower expects (224 for ViT-B/32)."""
        return self._image_size

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel normalisation mean for ``cfg.normalization``."""
        return self._mean

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel normalisation std for ``cfg.normalization``."""
        return self._std

    @property
    def pad_fill(self) -> int:
        """Grey level (0-255) used to pad images to a square (``cfg.pad_fill``)."""
        return self.cfg.pad_fill

    @property
    def cls_scale(self) -> float:
        """The constant classifier logit scale (1 / temperature)."""
        return self.classifier.scale

    @property
    def class_names(self) -> list[str]:
        return list(self.classifier.class_names)

    # ------------------------------------------------------------------ forward

    def encode(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        """Embed normalised images (B x 3 x S x S) as ``modality`` ('sketch'/'photo') -> B x E, unit norm."""
        check_modality(modality)
        prompts = self.prompts(modality)
        if modality == "photo" and self.photo_ln is not None:
            out = functional_call(self.encoder, self.photo_ln.overrides(), (images, prompts), strict=False)
        else:
            out = self.encoder(images, prompts)
        return F.normalize(out, dim=-1)

    def forward(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        """Same as :meth:`encode` (so DDP wrappers see the trainable forward)."""
        return self.encode(images, modality)

    def class_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Classifier logits over the current classes: ``scale * cos(f, t_j)``, B x C."""
        return self.classifier(embeddings)

    def set_classes(self, names: Sequence[str]) -> None:
        """(Re)compute the cached text embeddings for ``names``; '_' in names becomes a space."""
        self.classifier.set_classes(names)

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone_name}, pretrained={self.pretrained}, freeze={self.cfg.freeze}, "
            f"prompt_sharing={self.cfg.prompt_sharing}, ln_sharing={self.cfg.ln_sharing}"
        )


def build_clip_at(cfg: ClipATConfig, class_names: Sequence[str] | None = None) -> ClipAT:
    """Build CLIP-AT from its config: load the open_clip backbone, add prompts, apply the freeze.

    ``class_names`` (the seen training classes) primes the text classifier; it can be set later
    with :meth:`ClipAT.set_classes`.
    """
    backbone = load_backbone(cfg.backbone, cfg.pretrained)
    model = ClipAT(cfg, backbone)
    if class_names:
        model.set_classes(class_names)
    log.debug(
        "CLIP-AT %s: %d trainable parameters (freeze=%s, prompts=%s/%s x %d, ln=%s)",
        cfg.backbone,
        model.trainable_parameter_count(),
        cfg.freeze,
        cfg.prompt_sharing,
        cfg.prompt_depth,
        cfg.prompt_len,
        cfg.ln_sharing,
    )
    return model
