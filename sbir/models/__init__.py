"""Model families: ZSE-SBIR (`sbir.models.zse`) and CLIP-AT (`sbir.models.clip_at`); built through `sbir.methods`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from sbir.config import ModelConfig


def build_model(cfg: ModelConfig, class_names: Sequence[str] | None = None, load_pretrained: bool = True) -> nn.Module:
    """Build the configured model through its registered family (see ``MethodFamily.build_model``)."""
    from sbir.methods import family_of

    return family_of(cfg).build_model(cfg, class_names, load_pretrained)
