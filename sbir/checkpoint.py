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

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from sbir.config import RUNTIME_SECTIONS, Config, ConfigError, build_config
from sbir.errors import CheckpointError
from sbir.files import sha256_file, write_atomic

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"


# Config keys that moved since format 1 was first written: old checkpoints are read with them renamed.
_MOVED_KEYS = {("serve", "index_type"): ("index", "kind")}


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
    def seen_classes(self) -> list[str]:
        """Every class the model has seen: its training classes and the validation classes that chose it."""
        return [*self.classes.get("seen", []), *self.classes.get("val", [])]

    @property
    def preset(self) -> str:
        from sbir.methods import family_of

        return family_of(self.config).preset(self.config.model)


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
    write_atomic(meta_path, json.dumps(meta, indent=2, sort_keys=False))
    logger.debug("saved %s checkpoint to %s", config.model.method, directory)
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
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format_version {version!r}, this sbir reads {FORMAT_VERSION}")
    try:
        config = build_config(_moved_keys_renamed(meta["config"]))
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{meta_path}: invalid config: {exc}") from exc
    return CheckpointMeta(config, meta.get("classes", {}), meta.get("metrics", {}), meta.get("extra", {}))


def _moved_keys_renamed(tree: dict[str, Any]) -> dict[str, Any]:
    """The stored config with keys that have since moved put where the current schema expects them, and
    without its runtime sections: where and how a command runs never comes from a checkpoint."""
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for (old_section, old_key), (new_section, new_key) in _MOVED_KEYS.items():
        section = tree.get(old_section)
        if isinstance(section, dict) and old_key in section:
            value = section.pop(old_key)
            tree.setdefault(new_section, {}).setdefault(new_key, value)
            logger.debug("checkpoint config: %s.%s read as %s.%s", old_section, old_key, new_section, new_key)
    return {k: v for k, v in tree.items() if k not in RUNTIME_SECTIONS}


def check_checkpoint(directory: str | Path) -> CheckpointMeta:
    """Read a checkpoint's metadata and check its weights file is complete, without building the model.

    Cheap (the safetensors header only), so commands can reject a bad checkpoint before starting Ray.
    """
    from safetensors import safe_open

    meta = read_checkpoint_meta(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    try:
        with safe_open(str(weights), "pt") as handle:
            handle.keys()
    except Exception as exc:  # truncated, empty or not safetensors at all
        raise CheckpointError(f"{weights}: not a readable weights file ({exc})") from exc
    return meta


def weights_sha256(directory: str | Path) -> str:
    """SHA-256 of a checkpoint's weights file: the identity galleries and reports refer to."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    return sha256_file(path)


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from the stored config and load its weights strictly, onto ``device``."""
    meta = read_checkpoint_meta(directory)
    return load_weights(directory, meta, device), meta


def load_weights(directory: str | Path, meta: CheckpointMeta, device: str | torch.device = "cpu") -> nn.Module:
    """The model ``meta`` describes with the directory's weights loaded strictly, onto ``device``: for a caller
    that has read the metadata already (:func:`check_checkpoint`), so it is not read again."""
    from sbir.methods import family_of

    directory = Path(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    model = family_of(meta.config).build_model(meta.config.model, meta.classes.get("seen"), load_pretrained=False)
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except Exception as exc:  # a truncated or foreign file: safetensors raises its own error types
        raise CheckpointError(f"{weights}: not a readable weights file ({type(exc).__name__}: {exc})") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: weights do not match the stored config (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    model.to(device)
    model.eval()
    return model
