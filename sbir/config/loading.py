"""A config from YAML (a file or a built-in preset) and dotted ``key=value`` overrides, validated; and back.

Validation errors become one ConfigError naming each bad key. Paths can be made absolute, so a stored
config still points at the same files from another directory or machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sbir.config.root import Config
from sbir.errors import ConfigError
from sbir.presets import preset_path


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
    return key.split("."), value


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def format_validation_errors(exc: ValidationError) -> str:
    """A pydantic error as one line per bad key (``  key: message``), unknown keys named as such."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc or '<root>'}: {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    """Validate a config tree with dotted overrides applied on top."""
    tree: dict[str, Any] = dict(data or {})
    for item in overrides or []:
        path, value = parse_override(item)
        _set_path(tree, path, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(exc)) from None


def with_values(config: Config, values: Mapping[str, Any]) -> Config:
    """The config with dotted keys set to values (a sweep trial's hyperparameters), validated again."""
    tree = config.to_dict()
    for key, value in values.items():
        _set_path(tree, key.split("."), value)
    return build_config(tree)


def read_config_tree(source: str | Path | None) -> dict[str, Any]:
    """The raw sections of a YAML file or built-in preset (not validated yet); {} for no source."""
    if source is None:
        return {}
    path = Path(source)
    if not path.exists():
        path = preset_path(str(source))
    try:
        with path.open(encoding="utf-8") as stream:  # a stream, so YAML errors name the file
            loaded = yaml.safe_load(stream)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config from a YAML file or a built-in preset name, then apply overrides."""
    return build_config(read_config_tree(source), overrides)


def _absolute(value: str | None, must_exist: bool = False) -> str | None:
    """A local path made absolute; URIs (s3://, http://) and, with `must_exist`, names that are not files, kept."""
    if value is None or "://" in value:
        return value
    path = Path(value).expanduser()
    if must_exist and not path.exists():
        return value
    return str(path.resolve())


def with_absolute_paths(config: Config) -> Config:
    """The config with every local path resolved against the current directory, so what a checkpoint or
    MLflow stores still points at the same files from another directory or machine (URIs stay URIs)."""
    tree = config.to_dict()
    for key in ("root", "prepared", "pairs_file"):
        tree["data"][key] = _absolute(tree["data"][key])
    for key in ("dir", "storage"):
        tree["run"][key] = _absolute(tree["run"][key])
    for target in tree["eval"]["targets"]:
        target["root"], target["prepared"] = _absolute(target["root"]), _absolute(target["prepared"])
    zse = tree["model"]["zse"]
    zse["official_checkpoint"], zse["backbone_weights"] = (
        _absolute(zse["official_checkpoint"]),
        _absolute(zse["backbone_weights"]),
    )
    clip = tree["model"]["clip_at"]
    clip["pretrained"] = _absolute(clip["pretrained"], must_exist=True)  # an open_clip tag stays a tag
    return Config.model_validate(tree)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
