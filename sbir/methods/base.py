"""The contract of a method family: everything method-specific, behind one interface.

Everything outside ``sbir.methods`` looks a family up once (``family_of(config)``) and asks it;
nothing else compares method names. Adding a method = one new module here plus its config section
(docs/architecture.md#adding-a-method).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from sbir.errors import SbirError

if TYPE_CHECKING:
    from sbir.config import Config, ModelConfig
    from sbir.inference.gallery import Gallery
    from sbir.inference.transforms import ImageTransform
    from sbir.models.encoding import Encoding

logger = logging.getLogger(__name__)


class TrainingLoss(nn.Module, ABC):
    """A method's training objective on one P x K batch: samples its tuples, returns named loss parts."""

    @abstractmethod
    def forward(
        self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Loss parts with the total under ``'loss'``."""


class MethodFamily(ABC):
    """One registered method: model, preprocessing, encoding, galleries, objective, optimiser, metadata."""

    name: ClassVar[str]  # the value of model.method; also the name of its config section
    title: ClassVar[str]  # for people: "ZSE-SBIR"
    modes: ClassVar[tuple[str, ...]]  # retrieval modes its galleries score
    default_mode: ClassVar[str]  # the mode of headline numbers and of search when none is asked for
    encoding: ClassVar[type[Encoding]]  # what `encode` returns (and saved galleries hold)
    gallery: ClassVar[type[Gallery]]  # the gallery implementation that scores its encodings
    explains: ClassVar[bool] = False  # whether `explain` produces attention/correspondence/synthesis images
    exhaustive_modes: ClassVar[tuple[str, ...]] = ()  # modes that score every gallery item (never served)
    rerank_mode: ClassVar[str | None] = None  # the two-stage mode: index candidates, re-scored by a second stage

    @property
    def served_modes(self) -> tuple[str, ...]:
        """The modes an endpoint answers: the indexed ones (an exhaustive mode scales with the gallery)."""
        return tuple(m for m in self.modes if m not in self.exhaustive_modes)

    @property
    def reranks(self) -> bool:
        """Whether an endpoint for this method needs a second, re-scoring stage after the index."""
        return self.rerank_mode is not None and self.rerank_mode in self.served_modes

    # ----------------------------------------------------------------- model
    @abstractmethod
    def build_model(
        self, cfg: ModelConfig, class_names: Sequence[str] | None = None, load_pretrained: bool = True
    ) -> nn.Module:
        """The configured model; ``load_pretrained=False`` skips weight files a checkpoint will overwrite."""

    def preset(self, cfg: ModelConfig) -> str:
        """The method preset a checkpoint records (``official``, ``paper`` …)."""
        return str(cfg.section.preset)

    def load_release_checkpoint(self, model: nn.Module, path: str) -> dict[str, Any]:
        """Load the authors' released weights into ``model``; returns the file's saved scalars."""
        raise SbirError(f"{self.title} has no released checkpoint to convert")

    # ----------------------------------------------------------------- inference
    @abstractmethod
    def image_transform(self, config: Config, model: nn.Module | None = None) -> ImageTransform:
        """The load-time preprocessing of this method's images."""

    @abstractmethod
    def encode(self, model: nn.Module, images: torch.Tensor, modality: str) -> Encoding:
        """Encode one batch of normalised images of one modality (the caller handles no_grad and devices)."""

    def retrieval_modes(self, requested: Sequence[str]) -> list[str]:
        """The requested modes this method scores, in order; the default mode when none applies."""
        modes = [m for m in requested if m in self.modes]
        skipped = [m for m in requested if m not in self.modes]
        if skipped:
            logger.info("%s scores %s only; skipping %s", self.title, ", ".join(self.modes), ", ".join(skipped))
        return modes or [self.default_mode]

    def explain(self, model: nn.Module, sketch: torch.Tensor, photo: torch.Tensor) -> Any:
        """The explanation of one (sketch, photo) pair; only families with ``explains`` have one."""
        raise SbirError(f"{self.title} has no explanation outputs")

    # ----------------------------------------------------------------- training
    @abstractmethod
    def training_loss(self, config: Config) -> TrainingLoss:
        """The objective the training loop minimises."""

    @abstractmethod
    def optimizer(self, model: nn.Module, config: Config) -> torch.optim.Optimizer:
        """The optimiser over the model's trainable parameters (the paper's recipe by default)."""
