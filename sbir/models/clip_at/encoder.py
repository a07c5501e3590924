"""The prompted forward of an open_clip VisionTransformer (CLIP-AT token layout).

Layout (docs/clip_at.md#encoder): CLS + patch tokens get the positional embedding, then K prompt
vectors are **appended** without one; ``ln_pre``, the blocks, and the tower's own pooling on the
original tokens only (prompts excluded), ``ln_post`` and the projection. Deep prompting replaces
the prompt outputs of each block with that layer's fresh prompts before the next block.
"""

from __future__ import annotations

import torch
from open_clip.transformer import VisionTransformer
from torch import nn


class PromptedViT(nn.Module):
    """Wraps an open_clip ``VisionTransformer`` and runs it with visual prompts appended."""

    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        if not isinstance(visual, VisionTransformer):
            raise ValueError(f"PromptedViT needs an open_clip VisionTransformer, got {type(visual).__name__}")
        self.visual = visual

    @property
    def width(self) -> int:
        """Token width of the tower."""
        return int(self.visual.class_embedding.shape[-1])

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.visual.transformer.resblocks)

    @property
    def num_patches(self) -> int:
        """Patch tokens per image at the tower's input size."""
        grid_h, grid_w = self.visual.grid_size
        return int(grid_h * grid_w)

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """CLS + patch tokens with positional embedding (and patch dropout when training)."""
        visual = self.visual
        x = visual.conv1(images)  # B x W x gh x gw
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # B x N x W
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + visual.positional_embedding.to(x.dtype)
        return visual.patch_dropout(x)

    def forward(self, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Embed ``images`` (B x 3 x H x W) with ``prompts`` (layers x K x width) -> B x embed_dim.

        ``prompts`` with one layer is shallow prompting; with one slice per block it is deep.
        """
        visual = self.visual
        expected = tuple(visual.image_size)
        if images.ndim != 4 or tuple(images.shape[-2:]) != expected:
            raise ValueError(
                f"expected images of shape B x 3 x {expected[0]} x {expected[1]}, got {tuple(images.shape)}"
            )
        if prompts.ndim != 3 or prompts.shape[0] not in (1, self.num_layers):
            raise ValueError(
                f"prompts must be 1 x K x width (shallow) or {self.num_layers} x K x width (deep), "
                f"got {tuple(prompts.shape)}"
            )
        x = self._tokens(images)
        batch, num_tokens = x.shape[0], x.shape[1]
        prompts = prompts.to(x.dtype)
        x = torch.cat([x, prompts[0].unsqueeze(0).expand(batch, -1, -1)], dim=1)
        x = visual.ln_pre(x)

        transformer = visual.transformer
        if prompts.shape[0] == 1:
            x = transformer(x)
        else:
            batch_first = getattr(transformer, "batch_first", True)
            for i, block in enumerate(transformer.resblocks):
                if i > 0:
                    fresh = prompts[i].unsqueeze(0).expand(batch, -1, -1)
                    x = torch.cat([x[:, :num_tokens], fresh], dim=1)
                x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)

        x = x[:, :num_tokens]  # drop prompt outputs: CLS / avg / attentional pooling see original tokens only
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled
