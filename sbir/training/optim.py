"""Optimiser and learning-rate schedule from the config (the papers' recipes are the defaults)."""

from __future__ import annotations

import math

import torch
from torch import nn

from sbir.config import Config


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """ZSE-SBIR: AdamW over all parameters. CLIP-AT: Adam over prompts (lr) and LayerNorms (lr_backbone)."""
    train = config.train
    if config.model.method == "zse":
        return torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    groups = model.param_groups(train.lr, train.lr_backbone or train.lr)
    return torch.optim.Adam(groups, lr=train.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config) -> torch.optim.lr_scheduler.LRScheduler:
    """Constant (the papers) or cosine decay to zero over all optimiser steps; stepped once per optimiser step."""
    total = config.train.epochs * config.train.steps_per_epoch
    if config.train.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
