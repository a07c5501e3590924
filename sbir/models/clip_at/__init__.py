"""CLIP-AT: visual prompts and LayerNorm tuning on a frozen open_clip ViT (docs/clip_at.md).

Importing this package registers the package's open_clip model configs (``sbir-tiny-vit``).
"""

from sbir.models.clip_at.backbone import TINY_MODEL_NAME, Backbone, load_backbone, register_model_configs
from sbir.models.clip_at.encoder import PromptedViT
from sbir.models.clip_at.model import ClipAT, build_clip_at
from sbir.models.clip_at.objective import clip_at_losses
from sbir.models.clip_at.prompts import MODALITIES, VisualPrompts
from sbir.models.clip_at.text import TextClassifier, format_prompt, normalize_class_name
from sbir.models.clip_at.tuning import (
    LayerNormCopies,
    layernorm_parameter_names,
    official_trainable_names,
    trainable_visual_names,
)

__all__ = [
    "MODALITIES",
    "TINY_MODEL_NAME",
    "Backbone",
    "ClipAT",
    "LayerNormCopies",
    "PromptedViT",
    "TextClassifier",
    "VisualPrompts",
    "build_clip_at",
    "clip_at_losses",
    "format_prompt",
    "layernorm_parameter_names",
    "load_backbone",
    "normalize_class_name",
    "official_trainable_names",
    "register_model_configs",
    "trainable_visual_names",
]
