"""Sketch–photo cross-attention of ZSE-SBIR, named as ``ca.encoder.*`` in the release.

Post-LN layers whose residual runs on the value input (always the branch's own tokens), with the
custom LayerNorm of the release (unbiased std, eps added to the std). Two wirings:
``q_own_k_other_v_own`` (released code) and ``q_other_kv_own`` (paper figure).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sbir.config import ZSEConfig


class ReleaseLayerNorm(nn.Module):
    """a * (x - mean) / (std_unbiased + eps) + b, parameters named ``a``/``b`` as in the release."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(width))
        self.b = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        return self.a * (x - mean) / (std + self.eps) + self.b


class SublayerNorm(nn.Module):
    """Holds the norm of one residual sub-layer (``sublayer.<i>.norm``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = ReleaseLayerNorm(width)


class MultiHeadAttention(nn.Module):
    """q, k, v, out projections as ``linears.{0,1,2,3}``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.linears = nn.ModuleList(nn.Linear(width, width) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = query.shape
        h = self.heads

        def split(x: torch.Tensor, proj: nn.Module) -> torch.Tensor:
            return proj(x).view(b, -1, h, d // h).transpose(1, 2)

        q, k, v = split(query, self.linears[0]), split(key, self.linears[1]), split(value, self.linears[2])
        scores = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attn = scores.softmax(dim=-1)
        out = (self.dropout(attn) @ v).transpose(1, 2).reshape(b, n, d)
        return self.linears[3](out), attn


class PositionwiseFeedForward(nn.Module):
    def __init__(self, width: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(width, d_ff)
        self.w_2 = nn.Linear(d_ff, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(self.w_1(x).relu()))


class CrossAttentionLayer(nn.Module):
    """Y = LN(X_v + Drop(MHA(q, k, v))); Z = LN(Y + Drop(FFN(Y)))."""

    def __init__(self, width: int, heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(width, heads, dropout)
        self.feed_forward = PositionwiseFeedForward(width, d_ff, dropout)
        self.sublayer = nn.ModuleList(SublayerNorm(width) for _ in range(2))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attn_out, attn = self.self_attn(query, key, value, key_mask)
        y = self.sublayer[0].norm(value + self.dropout(attn_out))
        z = self.sublayer[1].norm(y + self.dropout(self.feed_forward(y)))
        return z, attn


class CrossAttentionEncoder(nn.Module):
    """``layer1`` = sketch branch, ``layer2`` = photo branch, ``layers`` = the release's unused copy."""

    def __init__(self, cfg: ZSEConfig) -> None:
        super().__init__()
        self.wiring = cfg.ca_wiring
        proto = CrossAttentionLayer(cfg.width, cfg.ca_heads, cfg.ca_d_ff, cfg.dropout)
        self.layer1 = nn.ModuleList(copy.deepcopy(proto) for _ in range(cfg.ca_layers))
        self.layer2 = nn.ModuleList(copy.deepcopy(proto) for _ in range(cfg.ca_layers))
        if cfg.keep_dead_ca_copy:
            # Never called: kept only so the released checkpoint loads strictly.
            self.layers = nn.ModuleList(copy.deepcopy(proto) for _ in range(cfg.ca_layers))
        for layer in [*self.layer1, *self.layer2]:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def _branch(
        self,
        layer: CrossAttentionLayer,
        own: torch.Tensor,
        other: torch.Tensor,
        own_mask: torch.Tensor | None,
        other_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.wiring == "q_own_k_other_v_own":
            return layer(own, other, own, other_mask)
        return layer(other, own, own, own_mask)

    def forward(
        self,
        sketch: torch.Tensor,
        photo: torch.Tensor,
        sketch_mask: torch.Tensor | None = None,
        photo_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Both branches read the other branch's inputs of the same depth (pre-CA at layer 0)."""
        sketch_attn: list[torch.Tensor] = []
        photo_attn: list[torch.Tensor] = []
        for sk_layer, ph_layer in zip(self.layer1, self.layer2, strict=True):
            new_sketch, a_s = self._branch(sk_layer, sketch, photo, sketch_mask, photo_mask)
            new_photo, a_p = self._branch(ph_layer, photo, sketch, photo_mask, sketch_mask)
            sketch, photo = new_sketch, new_photo
            sketch_attn.append(a_s)
            photo_attn.append(a_p)
        return sketch, photo, sketch_attn, photo_attn


class CrossAttention(nn.Module):
    """Wrapper so parameter names read ``ca.encoder.*``."""

    def __init__(self, cfg: ZSEConfig) -> None:
        super().__init__()
        self.encoder = CrossAttentionEncoder(cfg)
