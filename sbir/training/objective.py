"""One module whose ``forward(batch)`` is the training loss of the configured method, so DDP wraps one thing."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sbir.config import Config
from sbir.methods import family_of


class TrainingObjective(nn.Module):
    """Model plus its family's loss: P x K batch in, named loss parts (with ``'loss'``) out.

    Tuple sampling inside the batch uses a generator seeded per (seed, rank), so runs repeat.
    """

    def __init__(self, model: nn.Module, config: Config, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.loss = family_of(config).training_loss(config)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.loss(self.model, dict(batch), self.generator)
