"""Frozen-text-encoder classifier: cached, L2-normalised prompt embeddings of the class names.

The embeddings of ``template.format(name)`` are computed once (no grad) and kept as a
non-persistent buffer, so logits cost one matrix product and the text tower never trains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def normalize_class_name(name: str) -> str:
    """Class folder name -> natural text: underscores become spaces, whitespace is collapsed."""
    return " ".join(name.replace("_", " ").split())


def format_prompt(template: str, name: str) -> str:
    """Fill ``template`` ('{}' or '{class}' placeholder) with the normalised class name."""
    template = template.replace("{class}", "{}")
    if template.count("{}") != 1:
        raise ValueError(f"cls_template must contain exactly one '{{}}' placeholder, got {template!r}")
    return template.replace("{}", normalize_class_name(name))


class TextClassifier(nn.Module):
    """Cosine classifier over frozen CLIP text embeddings of the class prompts.

    ``text_model`` is the open_clip model (its visual tower may be removed); it must provide
    ``encode_text(tokens, normalize=True)``. ``scale`` multiplies the cosines (1 / temperature).
    """

    def __init__(
        self,
        text_model: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        template: str,
        scale: float,
        embed_dim: int,
        chunk: int = 256,
    ) -> None:
        super().__init__()
        format_prompt(template, "x")  # validate early
        if scale <= 0:
            raise ValueError(f"the classifier logit scale must be positive, got {scale}")
        self.text_model = text_model
        self.tokenizer = tokenizer
        self.template = template
        self.chunk = chunk
        self.class_names: list[str] = []
        # Both are saved with the model: a checkpoint rebuilt from a random text tower (load_pretrained=False)
        # must classify with the text embeddings and logit scale it was trained with, not recompute them.
        self.register_buffer("logit_scale", torch.tensor(float(scale)))
        self.register_buffer("class_embeddings", torch.zeros(0, embed_dim))
        for param in self.text_model.parameters():
            param.requires_grad_(False)

    @property
    def scale(self) -> float:
        """The constant logit scale (1 / temperature) the cosines are multiplied by."""
        return float(self.logit_scale)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (len(texts) x E) from the frozen text tower, in eval mode."""
        device = self.class_embeddings.device
        was_training = self.text_model.training
        self.text_model.eval()
        try:
            out = []
            for start in range(0, len(texts), self.chunk):
                tokens = self.tokenizer(list(texts[start : start + self.chunk])).to(device)
                out.append(self.text_model.encode_text(tokens).float())
        finally:
            self.text_model.train(was_training)
        return F.normalize(torch.cat(out), dim=-1)

    def set_classes(self, names: Sequence[str]) -> None:
        """Compute and cache the prompt embeddings for ``names`` (the seen training classes)."""
        names = list(names)
        if not names:
            raise ValueError("set_classes needs at least one class name")
        if len(set(names)) != len(names):
            raise ValueError("set_classes got duplicate class names")
        prompts = [format_prompt(self.template, name) for name in names]
        self.class_embeddings = self.embed_texts(prompts)
        self.class_names = names
        log.debug("CLIP-AT classifier: %d classes, e.g. %r", len(names), prompts[0])

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Logits ``scale * cos(embedding, class text)``: B x C."""
        if not self.class_names:
            raise RuntimeError("no classes set: call set_classes(names) (or pass class_names to build_clip_at)")
        text = self.class_embeddings.to(embeddings.dtype)
        return self.scale * F.normalize(embeddings, dim=-1) @ text.t()
