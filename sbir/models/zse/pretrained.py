"""Loading configured ZSE-SBIR weights: the released checkpoint or an ImageNet ViT backbone.

Backbone files are mapped onto ``sa.model.*`` with an explicit key map; any key the map does not
account for (missing or unexpected) is an error. The classifier head is the only key dropped by rule,
and the learnable tokenizer starts from random init as in the release.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from sbir.errors import ConfigError
from sbir.models.zse.model import ZSESBIR
from sbir.models.zse.official import CheckpointMismatchError, load_official_checkpoint

logger = logging.getLogger(__name__)

# timm `vit_base_patch16_224` names -> this project's (= the release's) names under sa.model.
_TIMM_RULES: list[tuple[str, str]] = [
    (r"^cls_token$", "cls"),
    (r"^pos_embed$", "pos_embedding"),
    (r"^patch_embed\.proj\.(weight|bias)$", r"embedding.\1"),
    (r"^blocks\.(\d+)\.norm1\.(weight|bias)$", r"transformer.layers.\1.0.layer_norm_input.\2"),
    (r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", r"transformer.layers.\1.0.attention.to_qkv.\2"),
    (r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$", r"transformer.layers.\1.0.attention.to_out.0.\2"),
    (r"^blocks\.(\d+)\.norm2\.(weight|bias)$", r"transformer.layers.\1.0.layer_norm_out.\2"),
    (r"^blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$", r"transformer.layers.\1.0.mlp.net.0.\2"),
    (r"^blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$", r"transformer.layers.\1.0.mlp.net.3.\2"),
    (r"^norm\.(weight|bias)$", r"transformer.encoder_norm.\1"),
]
_DROPPED = re.compile(r"^(head|fc_norm|head_drop)\.")  # classification head: not part of the encoder


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch file (weights_only; never unpickles objects)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatchError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    payload = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
    if not isinstance(payload, dict):
        raise CheckpointMismatchError(f"{path}: expected a state dict")
    return payload


def map_backbone_keys(state: dict[str, torch.Tensor], scheme: str) -> dict[str, torch.Tensor]:
    """Rename backbone keys to ``sa.model.*`` names; unknown keys raise, head keys are dropped."""
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        key = key.removeprefix("module.")
        if scheme == "sbir":
            name = key.removeprefix("sa.model.")
        elif _DROPPED.match(key):
            continue
        else:
            for pattern, repl in _TIMM_RULES:
                if re.match(pattern, key):
                    name = re.sub(pattern, repl, key)
                    break
            else:
                unknown.append(key)
                continue
        mapped[f"sa.model.{name}"] = value
    if unknown:
        raise CheckpointMismatchError(f"backbone keys with no mapping ({scheme}): {', '.join(sorted(unknown)[:10])}")
    return mapped


def load_backbone_weights(model: ZSESBIR, path: str | Path, scheme: str = "timm") -> None:
    """Load ViT weights into the encoder; every encoder key but the tokenizer must be provided."""
    mapped = map_backbone_keys(read_weights(path), scheme)
    own = {k: v for k, v in model.state_dict().items() if k.startswith("sa.model.")}
    expected = {k for k in own if not k.startswith("sa.model.scale.")}
    missing = sorted(expected - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    wrong = sorted(k for k in set(mapped) & set(own) if mapped[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointMismatchError(
            f"{path}: backbone does not fit model.zse (missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {wrong[:5]})"
        )
    model.load_state_dict(mapped, strict=False)
    logger.info("loaded backbone weights from %s (%d tensors)", path, len(mapped))


def load_configured_weights(model: ZSESBIR) -> None:
    """Apply `official_checkpoint` or `backbone_weights` from the config, if set."""
    cfg = model.cfg
    if cfg.official_checkpoint and cfg.backbone_weights:
        raise ConfigError("set either model.zse.official_checkpoint or model.zse.backbone_weights, not both")
    if cfg.official_checkpoint:
        load_official_checkpoint(model, cfg.official_checkpoint)
    elif cfg.backbone_weights:
        load_backbone_weights(model, cfg.backbone_weights, cfg.backbone_key_map)
