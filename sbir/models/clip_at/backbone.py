"""Loading an open_clip backbone for CLIP-AT: name/weights validation and the ViT-only check.

``pretrained`` is an open_clip tag (needs the internet or a warm Hugging Face cache), a local
checkpoint file, or ``None`` for random weights. Every failure is raised before or instead of a
long download attempt, with a message that says what to pass instead.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import open_clip
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import VisionTransformer
from torch import nn

from sbir.errors import ConfigError, SbirError

log = logging.getLogger(__name__)


class BackboneConfigError(ConfigError):
    """The configured open_clip model or weights cannot be used for CLIP-AT."""


class BackboneWeightsMissing(SbirError, FileNotFoundError):
    """A local backbone weights file that does not exist."""


class BackboneLoadError(SbirError, RuntimeError):
    """open_clip could not build the model or load its weights."""


TINY_MODEL_NAME = "sbir-tiny-vit"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
_SCHEMAS = ("hf-hub:", "local-dir:")
_CONFIG_DIR = Path(str(resources.files("sbir") / "resources" / "open_clip"))


def register_model_configs() -> None:
    """Make the package's open_clip model configs (e.g. ``sbir-tiny-vit``) known to open_clip.

    Idempotent: the config directory is added only once per process.
    """
    if TINY_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


register_model_configs()


@dataclass
class Backbone:
    """A built open_clip model plus what CLIP-AT reads from it once at load time."""

    model: nn.Module  # the full open_clip CLIP / CustomTextCLIP
    name: str
    pretrained: str | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    logit_scale: float  # exp() of the model's logit_scale, read once


def _unknown_model_error(name: str) -> ValueError:
    models = open_clip.list_models()
    close = difflib.get_close_matches(name, models, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return BackboneConfigError(
        f"unknown open_clip model {name!r}.{hint} See open_clip.list_models() for the "
        f"{len(models)} known names (e.g. ViT-B-32-quickgelu, ViT-B-16, {TINY_MODEL_NAME})."
    )


def check_vit_config(name: str) -> None:
    """Reject backbones whose visual tower is not an open_clip ViT, before anything is built.

    Only built-in (schema-less) names can be checked up front; schema names are checked after
    building by :func:`load_backbone`.
    """
    if name.startswith(_SCHEMAS):
        return
    cfg = open_clip.get_model_config(name.replace("/", "-"))
    if cfg is None:
        raise _unknown_model_error(name)
    vision = cfg.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        raise BackboneConfigError(
            f"backbone {name!r} has a timm visual tower ({vision['timm_model_name']}); CLIP-AT's visual "
            "prompts need an open_clip VisionTransformer tower (e.g. ViT-B-32-quickgelu, ViT-B-16)"
        )
    if isinstance(vision.get("layers"), list | tuple):
        raise BackboneConfigError(
            f"backbone {name!r} has a ResNet visual tower; CLIP-AT's visual prompts need an open_clip "
            "VisionTransformer tower (e.g. ViT-B-32-quickgelu, ViT-B-16)"
        )


def resolve_pretrained(name: str, pretrained: str | None) -> str | None:
    """Validate ``pretrained`` for ``name``: a known tag, an existing checkpoint file, or None.

    Returns the value to hand to open_clip (an absolute path for files).
    """
    if pretrained is None or pretrained == "":
        return None
    if name.startswith(_SCHEMAS):
        raise BackboneConfigError(
            f"backbone {name!r} uses an open_clip schema that brings its own weights; set pretrained to null"
        )
    path = Path(os.path.expanduser(pretrained))
    if path.is_file():
        return str(path.resolve())
    tags = open_clip.list_pretrained_tags_by_model(name.replace("/", "-"))
    if pretrained in tags:
        return pretrained
    if os.sep in pretrained or "/" in pretrained or path.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise BackboneWeightsMissing(
            f"pretrained checkpoint {pretrained!r} does not exist (or is not a file); give the path of an "
            f"open_clip state dict ({', '.join(CHECKPOINT_SUFFIXES)}), a tag, or null for random weights"
        )
    known = ", ".join(tags) if tags else "none"
    raise BackboneConfigError(
        f"pretrained={pretrained!r} is neither a known open_clip tag for {name!r} (known tags: {known}) "
        "nor an existing checkpoint file; use null for random weights"
    )


class _NoRandomWeightsWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _asked_for_random_weights(asked: bool) -> Iterator[None]:
    """Hide open_clip's root-logger warning about random weights when random weights are what was asked for."""
    if not asked:
        yield
        return
    root, hide = logging.getLogger(), _NoRandomWeightsWarning()
    root.addFilter(hide)
    try:
        yield
    finally:
        root.removeFilter(hide)


def load_backbone(name: str, pretrained: str | None) -> Backbone:
    """Build an open_clip model with a ViT visual tower and load its weights.

    Raises ValueError for unknown names, non-ViT towers and unknown tags, FileNotFoundError for
    missing checkpoint files, and RuntimeError (with advice) when weights cannot be obtained.
    """
    register_model_configs()
    check_vit_config(name)
    weights = resolve_pretrained(name, pretrained)
    try:
        with _asked_for_random_weights(weights is None):
            model = open_clip.create_model(name, pretrained=weights, device="cpu", precision="fp32")
    except (RuntimeError, OSError, KeyError) as exc:
        if weights is not None and Path(weights).is_file():
            raise BackboneLoadError(
                f"could not load checkpoint {weights!r} into open_clip model {name!r}: {exc}. `pretrained` "
                "expects a full open_clip CLIP state dict for this architecture (a CLIP-AT training "
                "checkpoint is loaded with ClipAT.load_state_dict instead)"
            ) from exc
        if weights is not None:
            raise BackboneLoadError(
                f"could not obtain pretrained weights {weights!r} for {name!r}: {exc}. Downloading needs "
                "internet access (or a warm Hugging Face cache); offline, pass a local checkpoint path as "
                "pretrained, or null for random weights"
            ) from exc
        raise BackboneLoadError(f"could not build open_clip model {name!r}: {exc}") from exc

    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise BackboneConfigError(
            f"backbone {name!r} has a {type(visual).__name__} visual tower; CLIP-AT's visual prompts need "
            "an open_clip VisionTransformer tower"
        )
    height, width = visual.image_size
    if height != width:
        raise BackboneConfigError(f"backbone {name!r} expects non-square {height}x{width} input; CLIP-AT needs square")
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean = tuple(float(v) for v in cfg.get("mean", OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", OPENAI_DATASET_STD))
    logit_scale = float(model.logit_scale.detach().exp().item())
    log.debug("open_clip backbone %s (pretrained=%s): %dpx, logit scale %.2f", name, weights, height, logit_scale)
    return Backbone(
        model=model,
        name=name,
        pretrained=weights,
        image_size=int(height),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        logit_scale=logit_scale,
    )


def normalization_stats(
    normalization: str, backbone: Backbone
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Mean/std for ``normalization``: 'model' (the open_clip model's own) or 'imagenet'."""
    if normalization == "model":
        return backbone.mean, backbone.std
    if normalization == "imagenet":
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)  # type: ignore[return-value]
    raise BackboneConfigError(f"normalization must be 'model' or 'imagenet', got {normalization!r}")
