"""The method registry: one :class:`MethodFamily` per method, looked up by the config's ``model.method``.

>>> from sbir.methods import family_of
>>> family_of(config).build_model(config.model)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sbir.errors import ConfigError
from sbir.methods.base import MethodFamily, TrainingLoss

if TYPE_CHECKING:
    from sbir.config import Config, ModelConfig

_REGISTRY: dict[str, MethodFamily] = {}


def register(family: MethodFamily) -> MethodFamily:
    """Add a family under its name (a module-level call in the family's module)."""
    if family.name in _REGISTRY:
        raise ValueError(f"method family {family.name!r} is registered twice")
    _REGISTRY[family.name] = family
    return family


def get_family(name: str) -> MethodFamily:
    """The family registered as ``name``, or an error naming the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def family_of(config: Config | ModelConfig) -> MethodFamily:
    """The family of a config (the root config or its model section)."""
    model = getattr(config, "model", config)
    return get_family(model.method)


def registered() -> list[str]:
    return sorted(_REGISTRY)


def _register_builtins() -> None:
    from sbir.methods.clip_at import ClipATFamily
    from sbir.methods.zse import ZSEFamily

    for family in (ZSEFamily(), ClipATFamily()):
        register(family)


_register_builtins()

__all__ = ["MethodFamily", "TrainingLoss", "family_of", "get_family", "register", "registered"]
