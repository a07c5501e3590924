"""Model families: ZSE-SBIR (`sbir.models.zse`) and CLIP-AT (`sbir.models.clip_at`)."""

from __future__ import annotations

from torch import nn

from sbir.config import ModelConfig


def build_model(cfg: ModelConfig, class_names: list[str] | None = None, load_pretrained: bool = True) -> nn.Module:
    """Build the configured model. `load_pretrained=False` skips backbone weight files/tags
    (used when a project checkpoint is about to overwrite every weight anyway)."""
    if cfg.method == "zse":
        from sbir.models.zse import ZSESBIR

        model = ZSESBIR(cfg.zse)
        if load_pretrained:
            from sbir.models.zse.pretrained import load_configured_weights

            load_configured_weights(model)
        return model
    from sbir.models.clip_at import build_clip_at

    clip_cfg = cfg.clip_at if load_pretrained else cfg.clip_at.model_copy(update={"pretrained": None})
    return build_clip_at(clip_cfg, class_names)
