"""The project's checkpoint format: ``model.safetensors`` + ``checkpoint.json``. No pickle.

The JSON holds everything needed to rebuild the model without outside files: the full config,
the class lists (seen / validation / unseen), the method and preset, metrics and free-form extras.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model
from torch import nn

from sbir.config import Config, ConfigError, build_config

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete or inconsistent."""


@dataclass
class CheckpointMeta:
    config: Config
    classes: dict[str, list[str]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.config.model.method

    @property
    def preset(self) -> str:
        return self.config.model.zse.preset if self.method == "zse" else self.config.model.clip_at.preset


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    config: Config,
    *,
    classes: dict[str, list[str]] | None = None,
    metrics: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write weights and metadata; the JSON is written last so a half-written checkpoint never looks complete."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta_path = directory / META_FILE
    meta_path.unlink(missing_ok=True)
    save_model(model, str(directory / WEIGHTS_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "method": config.model.method,
        "preset": CheckpointMeta(config).preset,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config.to_dict(),
        "classes": classes or {},
        "metrics": metrics or {},
        "extra": extra or {},
    }
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=False))
    tmp.replace(meta_path)
    logger.info("saved %s checkpoint to %s", config.model.method, directory)
    return directory


def read_checkpoint_meta(directory: str | Path) -> CheckpointMeta:
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{directory} is not a complete sbir checkpoint: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from exc
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format_version {version!r}, this sbir reads {FORMAT_VERSION}")
    try:
        config = build_config(meta["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{meta_path}: invalid config: {exc}") from exc
    return CheckpointMeta(config, meta.get("classes", {}), meta.get("metrics", {}), meta.get("extra", {}))


def load_checkpoint(directory: str | Path, device: str = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from the stored config and load its weights strictly."""
    from sbir.models import build_model

    directory = Path(directory)
    meta = read_checkpoint_meta(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    model = build_model(meta.config.model, class_names=meta.classes.get("seen"), load_pretrained=False)
    missing, unexpected = load_model(model, str(weights), strict=False, device=device)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: weights do not match the stored config (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    model.eval()
    return model, meta
