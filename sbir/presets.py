"""Built-in configuration presets shipped as YAML inside the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from sbir.errors import ConfigError

_PRESET_DIR = Path(str(resources.files("sbir") / "resources" / "presets"))


def available_presets() -> list[str]:
    return sorted(p.stem for p in _PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """Path of a built-in preset, or a ConfigError naming the choices."""
    path = _PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{name!r} is neither a config file nor a built-in preset; presets: {', '.join(available_presets())}"
        )
    return path
