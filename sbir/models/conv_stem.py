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

from torch import nn

MAX_CHANNELS = 128


class ConvStem(nn.Sequential):
    """log2(patch_size) conv-BN-ReLU-maxpool stages, then a 1x1 conv to `width`: a patch_size-strided token grid.

    Input B x 3 x H x W, output B x width x H/patch_size x W/patch_size, like ``Conv2d(3, width, patch_size,
    stride=patch_size)``.
    """

    def __init__(self, width: int, patch_size: int) -> None:
        stages = math.log2(patch_size) if patch_size >= 2 else 0.0
        if stages < 1 or not stages.is_integer():
            raise ValueError(f"the conv stem needs a power-of-two patch size of at least 2, got {patch_size}")
        layers: list[nn.Module] = []
        channels = 3
        for i in range(int(stages)):
            out = min(32 * 2**i, MAX_CHANNELS)
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = out
        layers.append(nn.Conv2d(channels, width, 1))
        super().__init__(*layers)
        self.patch_size = patch_size
