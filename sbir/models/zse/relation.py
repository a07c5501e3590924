"""Relation stage of ZSE-SBIR: downsampling to relation tokens, the cosine kernel matrix, and heads.

Heads map the n x n sketch-token x photo-token cosine matrix S to a score r in (0, 1):
``mlp`` is the release's n^2 -> n^1.5 -> n -> 1 network; ``kernel`` is this project's RBF kernel
pooling (K-NRM style, docs/zse_sbir.md#kernel-relation-head) with K + 1 trainable parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbir.config import ZSEConfig


class Downsample(nn.Module):
    """Patch tokens (B x N x D, full positional layout) -> relation tokens (B x n x R).

    Holds ``weight``/``bias`` itself so the release's top-level ``conv2d.*`` names load unchanged.
    """

    def __init__(self, cfg: ZSEConfig) -> None:
        super().__init__()
        self.mode = cfg.downsample
        self.grid = cfg.grid
        proto: nn.Module
        if self.mode == "linear":
            proto = nn.Linear(cfg.width, cfg.relation_dim)
        else:
            proto = nn.Conv2d(cfg.width, cfg.relation_dim, kernel_size=2, stride=2)
        self.weight = nn.Parameter(proto.weight.detach().clone())
        self.bias = nn.Parameter(proto.bias.detach().clone())

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if self.mode == "linear":
            return F.linear(patches, self.weight, self.bias)
        b, _, d = patches.shape
        if self.mode == "reshape_scramble":
            # The release views B x N x D as B x D x g x g without a transpose: every output mixes all tokens.
            grid = patches.reshape(b, d, self.grid, self.grid)
        else:
            grid = patches.transpose(1, 2).reshape(b, d, self.grid, self.grid)
        return F.conv2d(grid, self.weight, self.bias, stride=2).flatten(2).transpose(1, 2)


def cosine_matrix(
    sketch: torch.Tensor,
    photo: torch.Tensor,
    sketch_mask: torch.Tensor | None = None,
    photo_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """S[b, i, j] = cos(s_i, p_j); zero vectors (and masked tokens) give 0, as the release's NaN -> 0."""
    s = F.normalize(sketch.float(), dim=-1)
    p = F.normalize(photo.float(), dim=-1)
    if sketch_mask is not None:
        s = s * sketch_mask.unsqueeze(-1)
    if photo_mask is not None:
        p = p * photo_mask.unsqueeze(-1)
    return s @ p.transpose(1, 2)


class MLPRelationHead(nn.Module):
    """Linear n^2 -> n^1.5 -> n -> 1 with ReLU and dropout, sigmoid out; ``rn.rn.{0,3,6}`` in the release."""

    def __init__(self, tokens: int, dropout: float) -> None:
        super().__init__()
        hidden = round(tokens**1.5)
        self.rn = nn.Sequential(
            nn.Linear(tokens * tokens, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, tokens),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(tokens, 1),
        )

    def forward(
        self, s: torch.Tensor, sketch_mask: torch.Tensor | None = None, photo_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # Row-major flattening: index n*i + j. Masked rows/columns are already 0 in S.
        return torch.sigmoid(self.rn(s.flatten(1))).squeeze(-1)


class KernelRelationHead(nn.Module):
    """RBF kernel pooling over S: f_k = sum_i log(sum_j phi_k(S_ij) + eps), r = sigmoid(w.f*scale + b).

    Initialised on the data: at the first training batch the bias is set so that the batch's mean logit is 0
    (scores near 0.5, where the sigmoid's gradient is largest). With a zero bias the eps floor of kernels far
    from every cosine puts the logit near -10 and the head starts saturated (docs/zse_sbir.md#kernel-relation-head).
    Under DDP the batch means are averaged over ranks, so every rank starts from the same bias.
    """

    def __init__(self, kernels: int, sigma: float, scale: float) -> None:
        super().__init__()
        self.register_buffer("mu", torch.linspace(-1.0, 1.0, kernels), persistent=False)
        self.sigma = sigma
        self.scale = scale
        self.weight = nn.Parameter(torch.full((kernels,), 1.0 / kernels))
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("initialised", torch.tensor(False))

    def pooled(
        self, s: torch.Tensor, sketch_mask: torch.Tensor | None = None, photo_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """B x K pooled kernel features (masked tokens excluded from both sums)."""
        phi = torch.exp(-((s.unsqueeze(-1) - self.mu) ** 2) / (2 * self.sigma**2))  # B x n x n x K
        if photo_mask is not None:
            phi = phi * photo_mask[:, None, :, None]
        per_row = torch.log(phi.sum(dim=2) + 1e-10)  # B x n x K
        if sketch_mask is not None:
            per_row = per_row * sketch_mask.unsqueeze(-1)
        return per_row.sum(dim=1) * self.scale

    @torch.no_grad()
    def _initialise(self, logits: torch.Tensor) -> None:
        mean = logits.mean()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(mean)
            mean /= torch.distributed.get_world_size()
        self.bias -= mean
        self.initialised.fill_(True)

    def forward(
        self, s: torch.Tensor, sketch_mask: torch.Tensor | None = None, photo_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = self.pooled(s, sketch_mask, photo_mask) @ self.weight + self.bias
        if self.training and not bool(self.initialised):
            self._initialise(logits)
            logits = self.pooled(s, sketch_mask, photo_mask) @ self.weight + self.bias
        return torch.sigmoid(logits)


def build_relation_head(cfg: ZSEConfig) -> nn.Module:
    if cfg.relation_head == "mlp":
        return MLPRelationHead(cfg.derived_anchors, cfg.dropout)
    return KernelRelationHead(cfg.kernel_count, cfg.kernel_sigma, cfg.kernel_scale)
