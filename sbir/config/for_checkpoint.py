"""The config to evaluate or serve a stored checkpoint with: its own model, the user's runtime sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sbir.config.loading import build_config, read_config_tree
from sbir.config.root import Config
from sbir.errors import ConfigError

# Where and how a command runs: always the user's (command line, config file, environment), never a stored
# checkpoint's, which is data and may come from anywhere (docs/config.md#evaluating-a-checkpoint).
RUNTIME_SECTIONS = ("run", "tracking", "serve", "tune")


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` on `base`, section by section (lists and values of `top` replace those of `base`)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _differences(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in _differences(a.get(key), b.get(key), f"{prefix}.{key}")]
    return [] if a == b else [f"{prefix}={b!r} (the checkpoint's is {a!r})"]


def config_for_checkpoint(
    stored: Config, source: str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """The config to evaluate or serve a checkpoint with.

    The checkpoint's own config, with the user's file and overrides on top. The model section is the
    checkpoint's: a file or override that changes it is an error (it would not describe these weights).
    The runtime sections (``run``, ``tracking``, ``serve``) come only from the user's file, overrides and defaults.
    """
    tree = {k: v for k, v in stored.to_dict().items() if k not in RUNTIME_SECTIONS}
    config = build_config(_merge(tree, read_config_tree(source)), overrides)
    changed = _differences(stored.model.model_dump(mode="json"), config.model.model_dump(mode="json"), "model")
    if changed:
        raise ConfigError(
            "a checkpoint's model cannot change, but the config sets "
            + "; ".join(changed[:4])
            + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else "")
            + "; leave the model section out of -c and the overrides"
        )
    return config
