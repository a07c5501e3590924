"""Learnable visual prompt tokens: one set per modality or one shared set, shallow or deep."""

from __future__ import annotations

import torch
from torch import nn

MODALITIES = ("sketch", "photo")


def check_modality(modality: str) -> str:
    """Return ``modality`` if it is 'sketch' or 'photo', else raise a ValueError."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return modality


class VisualPrompts(nn.Module):
    """Prompt tensors of shape ``layers x K x width`` (``layers`` = 1 for shallow prompting).

    ``sharing='per_modality'`` keeps separate ``sketch`` and ``photo`` sets; ``'shared'`` keeps a
    single ``shared`` set used by both. Initialised from normal(0, ``init_std``) as in the code.
    """

    def __init__(
        self,
        length: int,
        width: int,
        layers: int,
        depth: str = "shallow",
        sharing: str = "per_modality",
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"prompt_len must be >= 1, got {length}")
        if depth not in ("shallow", "deep"):
            raise ValueError(f"prompt_depth must be 'shallow' or 'deep', got {depth!r}")
        if sharing not in ("per_modality", "shared"):
            raise ValueError(f"prompt_sharing must be 'per_modality' or 'shared', got {sharing!r}")
        self.length = length
        self.depth = depth
        self.sharing = sharing
        num_layers = 1 if depth == "shallow" else layers
        names = MODALITIES if sharing == "per_modality" else ("shared",)
        self.sets = nn.ParameterDict(
            {name: nn.Parameter(torch.randn(num_layers, length, width) * init_std) for name in names}
        )

    def forward(self, modality: str) -> torch.Tensor:
        """The ``layers x K x width`` prompt tensor that ``modality`` uses."""
        check_modality(modality)
        return self.sets["shared" if self.sharing == "shared" else modality]
