"""A model ready for inference: its family, its image transform and its device, encoding bounded batches.

The one batch encoder of the project: validation, ``sbir eval``'s Ray Data actors, ``sbir index build``
and serving all encode through :class:`Encoder`. Images go to the model's device; encodings stay there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from sbir.errors import DeviceError
from sbir.inference.gallery import Gallery
from sbir.inference.saved_gallery import load_gallery
from sbir.inference.transforms import ImageTransform
from sbir.methods import MethodFamily, family_of
from sbir.models.encoding import Encoding

logger = logging.getLogger(__name__)


def resolve_device(setting: str | torch.device) -> torch.device:
    """``auto`` = the first CUDA device if there is one, else the CPU; ``cuda`` without a GPU is an error."""
    if isinstance(setting, torch.device):
        return setting
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {setting!r} was asked for, but this machine has no CUDA GPU; use cpu or auto")
    return torch.device(setting)


class Encoder:
    """Encodes images of either modality with one model, in batches of ``batch_size``, without gradients.

    The caller decides the model's mode (``eval()`` for inference); the encoder never changes it.
    """

    def __init__(
        self,
        model: nn.Module,
        family: MethodFamily,
        transform: ImageTransform,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.family = family
        self.transform = transform
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(
        cls, directory: str | Path, *, device: str | torch.device = "auto", batch_size: int = 64
    ) -> Encoder:
        """Load a project checkpoint in eval mode onto ``device`` with its method's transform."""
        from sbir.checkpoint import load_checkpoint

        target = resolve_device(device)
        model, meta = load_checkpoint(directory, device=target)
        family = family_of(meta.config)
        return cls(model, family, family.image_transform(meta.config, model), device=target, batch_size=batch_size)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, modality: str) -> Encoding:
        """Normalised images (N x 3 x S x S, any device) -> the family's encoding, on the model's device."""
        if len(images) == 0:
            raise ValueError(f"no {modality} images to encode")
        parts = [
            self.family.encode(self.model, images[i : i + self.batch_size].to(self.device), modality)
            for i in range(0, len(images), self.batch_size)
        ]
        return self.family.encoding.cat(parts)

    def encode_images(self, images: Sequence[Image.Image], modality: str) -> Encoding:
        """PIL images -> encoding (preprocessed with the method's transform)."""
        return self.encode(torch.stack([self.transform(image, modality) for image in images]), modality)

    def encode_bytes(self, data: Sequence[bytes], modality: str) -> Encoding:
        """Encoded image files (PNG, JPEG …) -> encoding."""
        return self.encode(torch.stack([self.transform.decode(item, modality) for item in data]), modality)

    def open_gallery(self, directory: str | Path, *, checkpoint_sha256: str | None = None) -> Gallery:
        """A saved gallery of this model's method, scored with this model (``checkpoint_sha256``: the weights
        it must have been built with)."""
        return load_gallery(
            directory,
            self.model,
            method=self.family.name,
            encoding=self.family.encoding,
            checkpoint_sha256=checkpoint_sha256,
        )
