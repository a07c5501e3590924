"""The model section: one section per method (ZSE-SBIR, CLIP-AT), each filled in from its presets.

A preset (``official`` / ``paper``) or size (``base`` / ``tiny``) sets every switch the user left out, so any
single switch can still be overridden on its own.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from sbir.config.base import _Strict

# --------------------------------------------------------------------------- ZSE-SBIR

ZSE_PRESETS: dict[str, dict[str, Any]] = {
    # The released code's behaviour (docs/zse_sbir.md#presets): loads best_checkpoint.pth strictly.
    "official": {
        "tokenizer_scope": "both",
        "ca_wiring": "q_own_k_other_v_own",
        "downsample": "reshape_scramble",
        "relation_head": "mlp",
        "keep_dead_ca_copy": True,
    },
    # The paper's description.
    "paper": {
        "tokenizer_scope": "sketch_only",
        "ca_wiring": "q_other_kv_own",
        "downsample": "spatial_2x2",
        "relation_head": "mlp",
        "keep_dead_ca_copy": False,
    },
}

ZSE_SIZES: dict[str, dict[str, Any]] = {
    # The paper's ViT-B/16 at 224 px.
    "base": {
        "image_size": 224,
        "patch_size": 16,
        "depth": 12,
        "width": 768,
        "heads": 12,
        "mlp_ratio": 4.0,
        "tokenizer_channels": [64, 128, 256],
        "ca_layers": 1,
        "ca_heads": 8,
        "ca_d_ff": 1024,
        "relation_dim": 512,
    },
    # Trains on a laptop CPU: 64 px, 8 px patches (8x8 grid, 16 relation tokens).
    "tiny": {
        "image_size": 64,
        "patch_size": 8,
        "depth": 4,
        "width": 64,
        "heads": 4,
        "mlp_ratio": 2.0,
        "tokenizer_channels": [16, 32],
        "ca_layers": 1,
        "ca_heads": 4,
        "ca_d_ff": 128,
        "relation_dim": 32,
    },
}


class ZSEConfig(_Strict):
    """ZSE-SBIR architecture: size, preset switches and relation head."""

    preset: Literal["official", "paper"] = "official"
    size: Literal["base", "tiny", "custom"] = "base"
    granularity: Literal["category", "fine_grained"] = Field(
        "category", description="fine_grained = instance-level retrieval: the paired photo is the one relevant photo"
    )
    # Sizes (filled from `size` when not given).
    image_size: int = Field(224, ge=16)
    patch_size: int = Field(16, ge=2)
    depth: int = Field(12, ge=1)
    width: int = Field(768, ge=8)
    heads: int = Field(12, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    tokenizer_channels: list[int] = Field(default_factory=lambda: [64, 128, 256])
    ca_layers: int = Field(1, ge=1)
    ca_heads: int = Field(8, ge=1)
    ca_d_ff: int = Field(1024, ge=1)
    relation_dim: int = Field(512, ge=1)
    anchors: int | None = Field(None, description="relation tokens; derived when null, checked when given")
    dropout: float = Field(0.1, ge=0, lt=1)
    stem: Literal["patch", "conv_bn"] = Field(
        "patch",
        description="patch = the ViT patch embedding (the paper); conv_bn replaces it with a conv-BatchNorm stem "
        "(sbir.models.conv_stem) for random-init tiny models, whose patch embedding cannot learn to read sketches",
    )
    # Preset switches (filled from `preset` when not given).
    tokenizer_scope: Literal["both", "sketch_only", "none"] = "both"
    ca_wiring: Literal["q_own_k_other_v_own", "q_other_kv_own"] = "q_own_k_other_v_own"
    downsample: Literal["reshape_scramble", "spatial_2x2", "linear"] = "reshape_scramble"
    relation_head: Literal["mlp", "kernel"] = "mlp"
    evit_keep: list[float] | None = Field(None, description="per-layer keep rates; null = keep all")
    keep_dead_ca_copy: bool = True
    # Weights: the released ZSE-SBIR checkpoint, or ImageNet ViT backbone weights (explicit key map).
    official_checkpoint: str | None = Field(None, description="path to the released best_checkpoint.pth")
    backbone_weights: str | None = Field(None, description="ViT weights file (.safetensors/.pth/.bin)")
    backbone_key_map: Literal["timm", "sbir"] = "timm"
    # Kernel relation head (a project extension, docs/zse_sbir.md#kernel-relation-head).
    kernel_count: int = Field(11, ge=2)
    kernel_sigma: float = Field(0.1, gt=0)
    kernel_scale: float = Field(0.01, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _apply_presets(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        preset = data.get("preset", "official")
        if preset in ZSE_PRESETS:
            for key, value in ZSE_PRESETS[preset].items():
                data.setdefault(key, value)
        size = data.get("size", "base")
        if size in ZSE_SIZES:
            for key, value in ZSE_SIZES[size].items():
                data.setdefault(key, value)
        return data

    @model_validator(mode="after")
    def _check_stem(self) -> ZSEConfig:
        weights = self.official_checkpoint or self.backbone_weights
        if self.stem == "conv_bn" and weights:
            raise ValueError(
                f"model.zse.stem=conv_bn replaces the patch embedding that {weights!r} holds; use stem=patch with "
                "pretrained weights, or drop official_checkpoint/backbone_weights"
            )
        return self

    @model_validator(mode="after")
    def _check_geometry(self) -> ZSEConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads or self.width % self.ca_heads:
            raise ValueError(f"width {self.width} must be divisible by heads and ca_heads")
        if self.tokenizer_scope != "none":
            stages = math.log2(self.patch_size)
            if not stages.is_integer():
                raise ValueError(f"the learnable tokenizer needs a power-of-two patch_size, got {self.patch_size}")
            if len(self.tokenizer_channels) != int(stages) - 1:
                raise ValueError(
                    f"tokenizer_channels needs {int(stages) - 1} entries for patch_size {self.patch_size} "
                    f"(one per stride-2 conv before the last), got {self.tokenizer_channels}"
                )
        if self.evit_keep is not None:
            if len(self.evit_keep) != self.depth:
                raise ValueError(f"evit_keep needs one keep rate per layer ({self.depth}), got {len(self.evit_keep)}")
            if any(not 0 < r <= 1 for r in self.evit_keep):
                raise ValueError("evit_keep rates must lie in (0, 1]")
            if any(r < 1 for r in self.evit_keep) and self.downsample != "linear":
                raise ValueError("token dropping (evit_keep < 1) requires downsample=linear")
        if self.downsample != "linear" and self.grid % 2:
            raise ValueError(f"downsample={self.downsample} needs an even token grid, got {self.grid}")
        if self.anchors is not None and self.anchors != self.derived_anchors:
            raise ValueError(f"anchors={self.anchors} does not match the geometry, which gives {self.derived_anchors}")
        return self

    @property
    def grid(self) -> int:
        """Patch tokens per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def derived_anchors(self) -> int:
        """Relation tokens per image: (grid/2)^2 after 2x2 downsampling, all patches under `linear`."""
        return self.num_patches if self.downsample == "linear" else (self.grid // 2) ** 2

    @property
    def ret_dim(self) -> int:
        return self.width

    @property
    def evit_active(self) -> bool:
        return self.evit_keep is not None and any(r < 1 for r in self.evit_keep)


# --------------------------------------------------------------------------- CLIP-AT

CLIP_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"margin": 0.3, "cls_weight": 0.5, "freeze": "ln_only", "normalization": "model"},
    "official": {
        "margin": 0.2,
        "cls_weight": 0.0,
        "freeze": "official_freeze",
        "normalization": "imagenet",
        "ln_sharing": "shared",
    },
}


class ClipATConfig(_Strict):
    """CLIP-AT: open_clip backbone, visual prompts, tuning mode and loss weights."""

    preset: Literal["paper", "official"] = "paper"
    granularity: Literal["category", "fine_grained"] = "category"
    backbone: str = "ViT-B-32-quickgelu"
    pretrained: str | None = Field("openai", description="open_clip tag, local checkpoint path, or null")
    stem: Literal["patch", "conv_bn"] = Field(
        "patch",
        description="patch = the backbone's patch embedding (the paper); conv_bn replaces it with a trainable "
        "conv-BatchNorm stem (sbir.models.conv_stem) for random-init tiny backbones, which cannot read sketches "
        "otherwise; needs pretrained: null",
    )
    prompt_len: int = Field(3, ge=1)
    prompt_depth: Literal["shallow", "deep"] = "shallow"
    prompt_sharing: Literal["per_modality", "shared"] | None = None
    prompt_init_std: float = Field(1.0, gt=0)
    freeze: Literal["ln_only", "official_freeze", "none"] = Field(
        "ln_only", description="ln_only = the paper; none trains the whole visual tower (random-init demo backbones)"
    )
    ln_sharing: Literal["per_modality", "shared"] | None = None
    normalization: Literal["model", "imagenet"] = "model"
    pad_fill: int = Field(0, ge=0, le=255)
    margin: float = Field(0.3, ge=0)
    cls_weight: float = Field(0.5, ge=0)
    cls_template: str = "a photo of a {}"
    cls_temperature: float | None = Field(None, gt=0, description="null = the model's own logit scale")
    delta_weight: float = Field(0.1, ge=0)
    delta_temperature: float = Field(1.0, gt=0)
    delta_sort: bool = False
    ps_weight: float = Field(1.0, ge=0)
    ps_grid: int = Field(2, ge=2)
    ps_margin: float | None = Field(None, ge=0, description="null = margin")

    @model_validator(mode="before")
    @classmethod
    def _apply_presets(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, value in CLIP_PRESETS.get(data.get("preset", "paper"), {}).items():
            data.setdefault(key, value)
        return data

    @model_validator(mode="after")
    def _resolve_sharing(self) -> ClipATConfig:
        default = "shared" if self.granularity == "fine_grained" else "per_modality"
        if self.prompt_sharing is None:
            object.__setattr__(self, "prompt_sharing", default)
        if self.ln_sharing is None:
            object.__setattr__(self, "ln_sharing", default)
        return self

    @model_validator(mode="after")
    def _check_stem(self) -> ClipATConfig:
        if self.stem == "conv_bn" and self.pretrained:
            raise ValueError(
                f"model.clip_at.stem=conv_bn replaces the backbone's patch embedding, so pretrained weights "
                f"({self.pretrained!r}) would be partly discarded; set model.clip_at.pretrained=null or stem=patch"
            )
        return self


class ModelConfig(_Strict):
    """Which method (a registered family, see sbir.methods) and every method's own section."""

    method: Literal["zse", "clip_at"] = "zse"
    zse: ZSEConfig = Field(default_factory=ZSEConfig)
    clip_at: ClipATConfig = Field(default_factory=ClipATConfig)

    @property
    def section(self) -> ZSEConfig | ClipATConfig:
        """The chosen method's own section (each section is named after its method)."""
        return getattr(self, self.method)

    @property
    def fine_grained(self) -> bool:
        """Whether the chosen method trains and evaluates instance-level (fine-grained) retrieval."""
        return getattr(self.section, "granularity", "category") == "fine_grained"
