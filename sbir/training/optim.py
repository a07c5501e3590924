"""Optimiser and learning-rate schedule from the config (the papers' recipes are the defaults)."""

from __future__ import annotations

import math

import torch
from torch import nn

from sbir.config import Config
from sbir.methods import family_of


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """The method's optimiser (ZSE-SBIR: AdamW; CLIP-AT: Adam with prompt and LayerNorm groups)."""
    return family_of(config).optimizer(model, config)


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config) -> torch.optim.lr_scheduler.LRScheduler:
    """Constant (the papers) or cosine decay to zero over all optimiser steps; stepped once per optimiser step."""
    total = config.train.epochs * config.train.steps_per_epoch
    if config.train.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
