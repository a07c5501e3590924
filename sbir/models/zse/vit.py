"""ViT encoder of ZSE-SBIR with the released checkpoint's module names (``sa.model.*``).

Pre-LN blocks, a learnable [Ret] token, the learnable tokenizer (ConvStack) and optional EViT
token selection. Dropped tokens are tracked by their original patch position so later stages
can scatter them back into a fixed, spatially meaningful layout.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from sbir.config import ZSEConfig
from sbir.models.conv_stem import ConvStem


class Attention(nn.Module):
    """Fused-QKV multi-head self-attention; can return its attention probabilities."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(width, 3 * width)
        self.to_out = nn.Sequential(nn.Linear(width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, d = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if need_weights:
            attn = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
            attn = attn.softmax(dim=-1)
            out = attn @ v
        else:
            attn = None
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.to_out(out), attn


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        # Indices 0 and 3 are the Linear layers, as in the released state dict (mlp.net.{0,3}).
        self.net = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-LN transformer block with optional EViT selection between attention and MLP."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, dropout: float, keep_rate: float = 1.0) -> None:
        super().__init__()
        self.layer_norm_input = nn.LayerNorm(width, eps=1e-5)
        self.attention = Attention(width, heads, dropout)
        self.layer_norm_out = nn.LayerNorm(width, eps=1e-5)
        self.mlp = FeedForward(width, mlp_hidden, dropout)
        self.keep_rate = keep_rate

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        attn_out, attn = self.attention(self.layer_norm_input(x), need_weights or self.keep_rate < 1)
        x = x + attn_out
        if self.keep_rate < 1:
            x, positions = select_tokens(x, positions, attn, self.keep_rate)
        x = x + self.mlp(self.layer_norm_out(x))
        return x, positions, attn if need_weights else None


def select_tokens(
    x: torch.Tensor, positions: torch.Tensor, attn: torch.Tensor, keep_rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """EViT: keep the top ceil(rate*n) patches by head-averaged [Ret] attention, in original order."""
    n = x.shape[1] - 1
    keep = math.ceil(keep_rate * n)
    if keep >= n:
        return x, positions
    ret_attn = attn[:, :, 0, 1:].mean(dim=1)  # B x n
    idx = ret_attn.topk(keep, dim=1).indices.sort(dim=1).values  # restore order
    patches = x[:, 1:].gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return torch.cat([x[:, :1], patches], dim=1), positions.gather(1, idx)


class ConvStack(nn.Module):
    """The learnable tokenizer: stride-2 convs (k7 then k3), ReLU between, no bias, no norm."""

    def __init__(self, channels: list[int], width: int) -> None:
        super().__init__()
        dims = [3, *channels, width]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(itertools.pairwise(dims)):
            k, p = (7, 3) if i == 0 else (3, 1)
            layers.append(nn.Conv2d(c_in, c_out, k, stride=2, padding=p, bias=False))
            if i < len(dims) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.seq = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class Transformer(nn.Module):
    def __init__(self, cfg: ZSEConfig) -> None:
        super().__init__()
        keep = cfg.evit_keep or [1.0] * cfg.depth
        hidden = int(cfg.width * cfg.mlp_ratio)
        # Each stage is a one-element ModuleList so names read `layers.<i>.0.*` as in the release.
        self.layers = nn.ModuleList(
            nn.ModuleList([Block(cfg.width, cfg.heads, hidden, cfg.dropout, keep[i])]) for i in range(cfg.depth)
        )
        self.encoder_norm = nn.LayerNorm(cfg.width, eps=1e-5)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Tokens, their patch positions, and (when asked) the last block's attention with the positions of
        its rows: the tokens that block attended over, before its own token dropping."""
        last_attn = attn_positions = None
        for i, stage in enumerate(self.layers):
            want = need_weights and i == len(self.layers) - 1
            if want:
                attn_positions = positions
            x, positions, attn = stage[0](x, positions, want)
            if want:
                last_attn = attn
        return self.encoder_norm(x), positions, last_attn, attn_positions


@dataclass
class ViTOutput:
    tokens: torch.Tensor  # B x (1+k) x D, [Ret] first; k = kept patches
    positions: torch.Tensor  # B x k original patch index of each kept token
    last_attn: torch.Tensor | None  # B x heads x (1+m) x (1+m) of the last block, when asked
    attn_positions: torch.Tensor | None = None  # B x m patch index of each row of last_attn (before its dropping)


class VisionTransformer(nn.Module):
    """ViT with [Ret] token and the learnable tokenizer, named as ``sa.model`` in the release."""

    def __init__(self, cfg: ZSEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        if cfg.tokenizer_scope != "none":
            self.scale = ConvStack(cfg.tokenizer_channels, cfg.width)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embedding = nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, cfg.width))
        self.dropout = nn.Dropout(cfg.dropout)
        self.transformer = Transformer(cfg)
        nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.pos_embedding, std=0.02)
        self.apply(_init_weights)
        if cfg.stem == "conv_bn":  # after _init_weights: the stem keeps PyTorch's conv/BN initialisation
            self.embedding = ConvStem(cfg.width, cfg.patch_size, modalities=("sketch", "photo"))

    def uses_tokenizer(self, modality: str) -> bool:
        scope = self.cfg.tokenizer_scope
        return scope == "both" or (scope == "sketch_only" and modality == "sketch")

    def forward(self, images: torch.Tensor, modality: str, need_weights: bool = False) -> ViTOutput:
        if modality not in ("sketch", "photo"):
            raise ValueError(f"modality must be 'sketch' or 'photo', got {modality!r}")
        size = self.cfg.image_size
        if images.shape[-2:] != (size, size) or images.shape[1] != 3:
            raise ValueError(f"expected images of shape Bx3x{size}x{size}, got {tuple(images.shape)}")
        x = self.embedding(images, modality) if isinstance(self.embedding, ConvStem) else self.embedding(images)
        if self.uses_tokenizer(modality):
            x = (x + self.scale(images)) / 2
        x = x.flatten(2).transpose(1, 2)  # B x N x D
        b = x.shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1), x], dim=1) + self.pos_embedding
        x = self.dropout(x)
        positions = torch.arange(self.cfg.num_patches, device=x.device).expand(b, -1)
        tokens, positions, attn, attn_positions = self.transformer(x, positions, need_weights)
        return ViTOutput(tokens, positions, attn, attn_positions)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
