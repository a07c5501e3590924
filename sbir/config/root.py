"""The root config that holds every section, and the names derived from it (setting, registered model)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from sbir.config.base import _Strict
from sbir.config.methods import ModelConfig
from sbir.config.sections import (
    DataConfig,
    EvalConfig,
    IndexConfig,
    RunConfig,
    ServeConfig,
    TrackingConfig,
    TrainConfig,
    TuneConfig,
)
from sbir.errors import ConfigError


class Config(_Strict):
    """The root configuration."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _check_sampler(self) -> Config:
        if self.train.sampler == "quadruplets" and (self.model.method != "zse" or self.model.fine_grained):
            raise ValueError(
                "train.sampler=quadruplets is the ZSE-SBIR release's category-level sampling; use "
                "class_balanced for CLIP-AT and for fine-grained training"
            )
        return self

    @property
    def setting(self) -> str:
        """The setting id (docs/settings.md#settings): sketchy25, sketchy21, tuberlin30, quickdraw30, fg_sketchy …"""
        if self.data.setting:
            return self.data.setting
        layout, split = self.data.layout, self.data.split
        if layout == "sketchy":
            base = {"zeroshot1": "sketchy25", "zeroshot0": "sketchy21"}.get(split, f"sketchy-{split}")
        elif layout in ("tuberlin", "quickdraw"):
            base = f"{layout}30" if split == "zeroshot" else f"{layout}-{split}"
        else:
            base = layout if split == "zeroshot1" else f"{layout}-{split}"
        if self.model.fine_grained:
            base = f"fg_{base}"
        return base

    @property
    def registered_model_name(self) -> str:
        """The name the run registers in the model registry: tracking.model_name, else sbir-<method>-<setting>."""
        return self.tracking.model_name or registered_model_name(self.model.method, self.setting)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def registered_model_name(method: str, setting: str) -> str:
    """The default registered-model name for a method and a benchmark setting, e.g. ``sbir-zse-sketchy25``.

    The name is lowercase and uses only ``[a-z0-9-]``. It is also safe in URLs and in ``models:/`` references.
    """
    parts = [re.sub(r"[^a-z0-9]+", "-", str(p).lower()).strip("-") for p in ("sbir", method, setting)]
    if not parts[1] or not parts[2]:
        raise ConfigError(f"a model name needs a method and a setting, got method={method!r} setting={setting!r}")
    return "-".join(parts)
