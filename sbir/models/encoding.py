"""What a model's encoder returns for a batch of images: a record of aligned tensors, one row per image.

Both families' encodings derive from :class:`Encoding`, so the inference layer can slice, move,
concatenate and serialise them (for Ray Data rows and saved galleries) without knowing the method.
Fields are tensors whose first dimension is the image; optional fields may be None for every row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Encoding:
    """Base of per-image encodings; subclasses are dataclasses of tensors (or None) with one row per image."""

    # Fields that are only produced on request (e.g. attention for explanations) and never serialised.
    transient: ClassVar[tuple[str, ...]] = ()

    def __len__(self) -> int:
        return int(next(v for v in self._values().values() if v is not None).shape[0])

    def _values(self) -> dict[str, torch.Tensor | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def device(self) -> torch.device:
        return next(v for v in self._values().values() if v is not None).device

    def select(self, index: torch.Tensor | slice) -> Self:
        """Rows by index or slice (None fields stay None)."""
        return type(self)(**{k: None if v is None else v[index] for k, v in self._values().items()})

    def to(self, device: torch.device | str) -> Self:
        return type(self)(**{k: None if v is None else v.to(device) for k, v in self._values().items()})

    @classmethod
    def cat(cls, parts: Sequence[Self]) -> Self:
        """Rows of several encodings in order; a field is kept only if every part has it."""
        if not parts:
            raise ValueError(f"cannot concatenate zero {cls.__name__} parts")

        def join(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else torch.cat(values)

        return cls(**{f.name: join(f.name) for f in fields(cls)})

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The serialisable fields as CPU NumPy arrays (transient and None fields left out)."""
        return {
            k: v.detach().cpu().numpy() for k, v in self._values().items() if v is not None and k not in self.transient
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        """Inverse of :meth:`to_arrays`; unknown keys are ignored, missing optional fields become None."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items() if k in names})

    def retrieval_embeddings(self) -> torch.Tensor:
        """L2-normalised float embeddings that the bi-encoder stage (``ret``, the ANN index) compares."""
        raise NotImplementedError


@dataclass
class EmbeddingEncoding(Encoding):
    """A bi-encoder's output: one embedding per image (unit norm for CLIP-AT)."""

    embedding: torch.Tensor  # B x E

    def retrieval_embeddings(self) -> torch.Tensor:
        return F.normalize(self.embedding.float(), dim=-1)
