"""The ZSE-SBIR model, shaped for retrieval as well as training.

``encode`` runs the self-attention encoder once per image and returns a :class:`ZSEEncoding`
(the pre-CA [Ret] embedding plus every token the relation stage needs), so gallery photos can be
encoded once and cached. ``relate`` scores index-aligned sketch/photo pairs; ``score_matrix``
scores every sketch against every photo from cached encodings, in bounded pair batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sbir.config import ZSEConfig
from sbir.models.encoding import Encoding
from sbir.models.zse.cross_attention import CrossAttention
from sbir.models.zse.relation import Downsample, build_relation_head, cosine_matrix
from sbir.models.zse.vit import VisionTransformer


@dataclass
class ZSEEncoding(Encoding):
    """Per-image output of the self-attention stage, cacheable for retrieval."""

    ret: torch.Tensor  # B x D pre-CA [Ret] token (the `ret` retrieval embedding, unnormalised)
    tokens: torch.Tensor  # B x (1+N) x D, [Ret] then patches in original positions (dropped = 0)
    mask: torch.Tensor | None = None  # B x N keep mask under EViT, None when every patch is kept
    last_attn: torch.Tensor | None = None  # B x H x (1+k) x (1+k) last-block attention, when asked
    positions: torch.Tensor | None = None  # B x m patch index of each row of last_attn

    transient: ClassVar[tuple[str, ...]] = ("last_attn", "positions")

    def retrieval_embeddings(self) -> torch.Tensor:
        """L2-normalised pre-CA [Ret] embedding used by the `ret` mode and the ANN index."""
        return F.normalize(self.ret.float(), dim=-1)


@dataclass
class RelationOutput:
    """Scores and features for index-aligned (sketch_i, photo_i) pairs."""

    score: torch.Tensor  # B, relation score r in (0, 1)
    sketch_ret: torch.Tensor  # B x D post-CA [Ret] of the sketch branch
    photo_ret: torch.Tensor  # B x D post-CA [Ret] of the photo branch
    kernel: torch.Tensor  # B x n x n cosine matrix S
    sketch_attn: list[torch.Tensor]  # per CA layer, B x H x (1+N) x (1+N)
    photo_attn: list[torch.Tensor]


class _Holder(nn.Module):
    """Named container so parameter names follow the release (``sa.model.*``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


class ZSESBIR(nn.Module):
    """ViT + learnable tokenizer, sketch–photo cross-attention, and a relation network."""

    def __init__(self, cfg: ZSEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sa = _Holder(VisionTransformer(cfg))
        self.ca = CrossAttention(cfg)
        self.conv2d = Downsample(cfg)
        self.rn = build_relation_head(cfg)

    # ----------------------------------------------------------------- encoding
    def encode(self, images: torch.Tensor, modality: str, need_weights: bool = False) -> ZSEEncoding:
        """Self-attention stage for one modality; dropped EViT tokens are scattered back as zeros."""
        out = self.sa.model(images, modality, need_weights)
        tokens, positions = out.tokens, out.positions
        n = self.cfg.num_patches
        mask = None
        if positions.shape[1] < n:
            b, _, d = tokens.shape
            full = tokens.new_zeros(b, n, d)
            full.scatter_(1, positions.unsqueeze(-1).expand(-1, -1, d), tokens[:, 1:])
            mask = torch.zeros(b, n, dtype=torch.bool, device=tokens.device)
            mask.scatter_(1, positions, True)
            tokens = torch.cat([tokens[:, :1], full], dim=1)
        return ZSEEncoding(
            ret=tokens[:, 0],
            tokens=tokens,
            mask=mask,
            last_attn=out.last_attn,
            positions=out.attn_positions if need_weights else None,
        )

    # ----------------------------------------------------------------- relation
    def cross_attend(
        self, sketch: ZSEEncoding, photo: ZSEEncoding
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Cross-attention for aligned pairs: post-CA sketch and photo sequences and per-layer attention.

        EViT-dropped tokens are masked as keys; the [Ret] slot is always kept.
        """
        return self.ca.encoder(sketch.tokens, photo.tokens, _with_ret(sketch.mask), _with_ret(photo.mask))

    def relate(self, sketch: ZSEEncoding, photo: ZSEEncoding) -> RelationOutput:
        """Cross-attention + relation head for aligned pairs (sketch row i with photo row i)."""
        if len(sketch) != len(photo):
            raise ValueError(f"relate needs aligned pairs, got {len(sketch)} sketches and {len(photo)} photos")
        s, p, s_attn, p_attn = self.cross_attend(sketch, photo)
        s_rel = self.conv2d(s[:, 1:])
        p_rel = self.conv2d(p[:, 1:])
        # Under `linear` downsampling relation tokens keep patch positions, so the EViT masks apply.
        sk_tok_mask = sketch.mask if self.cfg.downsample == "linear" else None
        ph_tok_mask = photo.mask if self.cfg.downsample == "linear" else None
        kernel = cosine_matrix(s_rel, p_rel, sk_tok_mask, ph_tok_mask)
        score = self.rn(kernel, sk_tok_mask, ph_tok_mask)
        return RelationOutput(score, s[:, 0], p[:, 0], kernel, s_attn, p_attn)

    @torch.no_grad()
    def score_matrix(
        self,
        sketch: ZSEEncoding,
        photo: ZSEEncoding,
        pair_batch: int = 1024,
        precision: str = "fp32",
    ) -> torch.Tensor:
        """Exhaustive relation scores, Q x G, from cached encodings (`rn` retrieval mode)."""
        q, g = len(sketch), len(photo)
        out = torch.empty(q, g, dtype=torch.float32, device=photo.device)  # scored where the model runs
        photos_per_step = max(1, min(g, pair_batch))
        sketches_per_step = max(1, pair_batch // photos_per_step)
        for q0 in range(0, q, sketches_per_step):
            q1 = min(q, q0 + sketches_per_step)
            q_idx = torch.arange(q0, q1, device=photo.device)
            for g0 in range(0, g, photos_per_step):
                g1 = min(g, g0 + photos_per_step)
                g_idx = torch.arange(g0, g1, device=photo.device)
                sk = sketch.select(q_idx.repeat_interleave(g1 - g0))
                ph = photo.select(g_idx.repeat(q1 - q0))
                out[q0:q1, g0:g1] = self.pair_scores(sk, ph, precision).view(q1 - q0, g1 - g0)
        return out

    @torch.no_grad()
    def pair_scores(self, sketch: ZSEEncoding, photo: ZSEEncoding, precision: str = "fp32") -> torch.Tensor:
        """Relation scores of aligned pairs.

        ``fp16`` mimics the release's test precision: on CUDA the relation stage runs under fp16
        autocast; on CPU it runs in fp32 and the scores are rounded to fp16, which reproduces the
        heavy score ties that matter for ranking (docs/metrics.md#ties).
        """
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        if precision == "fp16" and sketch.tokens.device.type == "cuda":
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                return self.relate(sketch, photo).score.half().float()
        score = self.relate(sketch, photo).score.float()
        return score.half().float() if precision == "fp16" else score

    # ----------------------------------------------------------------- convenience
    def forward(self, sketch: torch.Tensor, photo: torch.Tensor) -> RelationOutput:
        """Encode aligned sketch/photo images and relate them (training and tests)."""
        return self.relate(self.encode(sketch, "sketch"), self.encode(photo, "photo"))


def _with_ret(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Extend a B x N patch mask with an always-kept [Ret] slot in front."""
    if mask is None:
        return None
    return torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
