"""A convolutional stem that replaces a ViT's patch embedding for small models trained from scratch.

A ViT's linear patch embedding, trained from random weights on a few thousand images, does not learn
to read sparse line drawings: tiny ViTs on the synthetic dataset stay at chance on sketches while a
small CNN learns them in a few hundred steps (docs/benchmarks.md, "Learnability"). Replacing the
patch embedding with stacked 3x3 conv - BatchNorm - ReLU - 2x2 max-pool stages ("early convolutions",
Xiao et al., NeurIPS 2021) gives the same token grid with a CNN's inductive bias. Not part of either
paper: their backbones are pretrained, and this stem is only offered for the random-init tiny sizes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_CHANNELS = 128


class ConvStem(nn.Module):
    """log2(patch_size) conv-BN-ReLU-maxpool stages, then a 1x1 conv to `width`: a patch_size-strided token grid.

    Input B x 3 x H x W, output B x width x H/patch_size x W/patch_size, like ``Conv2d(3, width, patch_size,
    stride=patch_size)``. With `modalities`, every stage keeps one BatchNorm per modality (weights and running
    statistics), and ``forward`` needs the modality: sketches and photos have very different pixel statistics,
    and shared running statistics, a mix of both, normalise either badly at evaluation time.
    """

    def __init__(self, width: int, patch_size: int, modalities: tuple[str, ...] = ()) -> None:
        super().__init__()
        stages = math.log2(patch_size) if patch_size >= 2 else 0.0
        if stages < 1 or not stages.is_integer():
            raise ValueError(f"the conv stem needs a power-of-two patch size of at least 2, got {patch_size}")
        self.patch_size = patch_size
        self.modalities = tuple(modalities)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels = 3
        for i in range(int(stages)):
            out = min(32 * 2**i, MAX_CHANNELS)
            self.convs.append(nn.Conv2d(channels, out, 3, padding=1, bias=False))
            if self.modalities:
                self.norms.append(nn.ModuleDict({m: nn.BatchNorm2d(out) for m in self.modalities}))
            else:
                self.norms.append(nn.BatchNorm2d(out))
            channels = out
        self.proj = nn.Conv2d(channels, width, 1)

    def forward(self, images: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        if self.modalities and modality not in self.modalities:
            raise ValueError(f"this stem normalises per modality {self.modalities}; got modality={modality!r}")
        x = images
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = conv(x)
            x = norm[modality](x) if isinstance(norm, nn.ModuleDict) else norm(x)
            x = F.max_pool2d(F.relu(x), 2)
        return self.proj(x)
