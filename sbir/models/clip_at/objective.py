"""One CLIP-AT training objective evaluation: encode a triplet batch and weigh the loss parts.

Glue between :class:`ClipAT` and :class:`sbir.losses.clip_at.ClipATLoss`, so trainers only supply
tensors. All photo-side inputs go through the model in one batched photo pass.
"""

from __future__ import annotations

import torch

from sbir.losses.clip_at import ClipATLoss, patch_shuffle_triplet
from sbir.models.clip_at.model import ClipAT


def clip_at_losses(
    model: ClipAT,
    criterion: ClipATLoss,
    sketches: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Loss parts and ``'loss'`` for a batch of (sketch, positive photo, negative photo) images.

    ``model`` may be the bare :class:`ClipAT` or a wrapper (e.g. DDP) whose ``forward(images,
    modality)`` is ClipAT's; class logits are read from the unwrapped model. Category level:
    ``negatives`` are other-class photos; fine-grained: same-class non-paired photos and
    ``labels`` must be class-balanced for L_delta. ``generator`` drives the patch-shuffle draws.
    """
    core: ClipAT = getattr(model, "module", model)
    batch = sketches.shape[0]
    sketch_inputs = [sketches]
    photo_inputs = [positives, negatives]
    if criterion.ps_weight > 0:
        s_g1, p_g1, p_g2 = patch_shuffle_triplet(sketches, positives, criterion.ps_grid, generator)
        sketch_inputs.append(s_g1)
        photo_inputs += [p_g1, p_g2]
    sketch_emb = model(torch.cat(sketch_inputs), "sketch")
    photo_emb = model(torch.cat(photo_inputs), "photo")
    f_s = sketch_emb[:batch]
    f_p, f_n = photo_emb[:batch], photo_emb[batch : 2 * batch]
    kwargs: dict[str, torch.Tensor | None] = {"labels": labels}
    if criterion.cls_weight > 0:
        kwargs["sketch_logits"] = core.class_logits(f_s)
        kwargs["photo_logits"] = core.class_logits(f_p)
    if criterion.ps_weight > 0:
        kwargs["ps_sketch"] = sketch_emb[batch:]
        kwargs["ps_positive"] = photo_emb[2 * batch : 3 * batch]
        kwargs["ps_negative"] = photo_emb[3 * batch :]
    return criterion(f_s, f_p, f_n, **kwargs)
