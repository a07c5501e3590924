"""Search spaces of a sweep: built-in ones by name, or a YAML mapping of config keys to distributions.

A space maps dotted config keys to one distribution each::

    model.clip_at.prompt_len: {choice: [1, 3, 5, 10]}
    train.lr: {loguniform: [1.0e-6, 1.0e-4]}
    model.zse.kernel_count: {randint: [5, 21]}      # low inclusive, high exclusive (as Ray Tune)
    model.clip_at.prompt_depth: {grid: [shallow, deep]}

Every key must be a config key and every value it can take must pass the config's own validation, so
a typo or an impossible range fails before a trial starts, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sbir.config import Config, ConfigError, load_config

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid")

BUILTIN: dict[str, dict[str, dict[str, Any]]] = {
    # CLIP-AT: how many prompt tokens, inserted at the input only or at every layer, and their learning rates.
    "clip_at_prompts": {
        "model.clip_at.prompt_len": {"choice": [1, 3, 5, 10]},
        "model.clip_at.prompt_depth": {"choice": ["shallow", "deep"]},
        "train.lr": {"loguniform": [1.0e-5, 1.0e-3]},
        "train.lr_backbone": {"loguniform": [1.0e-6, 1.0e-4]},
    },
    # ZSE-SBIR's kernel relation head: how many RBF kernels, how wide, and the learning rate. Trials are
    # validated with the relation head re-ranking ([Ret] alone never reads the kernels, so it cannot rank them).
    "zse_kernels": {
        "model.zse.relation_head": {"choice": ["kernel"]},
        "train.val_mode": {"choice": ["rn_rerank"]},
        "model.zse.kernel_count": {"randint": [5, 22]},
        "model.zse.kernel_sigma": {"loguniform": [0.02, 0.5]},
        "train.lr": {"loguniform": [1.0e-5, 1.0e-3]},
    },
}


class SearchSpaceError(ConfigError):
    """A search space that names an unknown key, an unknown distribution, or values the config refuses."""


@dataclass(frozen=True)
class Dimension:
    """One searched config key and its distribution."""

    key: str
    kind: str  # one of DISTRIBUTIONS
    values: tuple[Any, ...]  # the choices / grid points, or (low, high)

    def samples(self) -> list[Any]:
        """Values that bound what the distribution can give, to validate against the config."""
        if self.kind in ("choice", "grid"):
            return list(self.values)
        low, high = self.values
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def to_tune(self) -> Any:
        """The Ray Tune search primitive."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        low, high = self.values
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](low, high)


def _dimension(key: str, spec: Any) -> Dimension:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SearchSpaceError(
            f"search space: {key} must map to one distribution, e.g. {{choice: [1, 2]}}; got {spec!r}"
        )
    ((kind, values),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise SearchSpaceError(
            f"search space: {key}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}"
        )
    if not isinstance(values, list) or not values:
        raise SearchSpaceError(f"search space: {key}: {kind} needs a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise SearchSpaceError(f"search space: {key}: {kind} takes [low, high] numbers, got {values!r}")
        low, high = values
        if not low < high:
            raise SearchSpaceError(f"search space: {key}: {kind} needs low < high, got [{low}, {high}]")
        if kind == "loguniform" and low <= 0:
            raise SearchSpaceError(f"search space: {key}: loguniform needs low > 0, got {low}")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise SearchSpaceError(f"search space: {key}: randint takes integers, got {values!r}")
    return Dimension(key, kind, tuple(values))


def parse_space(tree: Any) -> list[Dimension]:
    if not isinstance(tree, dict) or not tree:
        raise SearchSpaceError("a search space is a non-empty mapping of config keys to distributions")
    return [_dimension(str(key), spec) for key, spec in tree.items()]


def load_space(source: str) -> list[Dimension]:
    """A built-in space by name, or a YAML file."""
    if source in BUILTIN:
        return parse_space(BUILTIN[source])
    path = Path(source)
    if not path.is_file():
        raise SearchSpaceError(f"search space {source!r} is neither a built-in ({', '.join(BUILTIN)}) nor a YAML file")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"search space {path}: invalid YAML ({exc})") from None
    return parse_space(tree)


def check_space(dimensions: list[Dimension], base: str | None, overrides: list[str]) -> Config:
    """Validate every searched value against the config (unknown keys, out-of-range values); return the base."""
    config = load_config(base, overrides)
    for dim in dimensions:
        if dim.key.split(".")[0] in ("run", "tracking", "serve", "tune"):
            raise SearchSpaceError(f"search space: {dim.key} is a runtime setting, not a hyperparameter")
        for value in dim.samples():
            try:
                load_config(
                    base, [*overrides, f"{dim.key}={yaml.safe_dump(value).strip().removesuffix('...').strip()}"]
                )
            except ConfigError as exc:
                raise SearchSpaceError(f"search space: {dim.key}={value!r} is not a valid value: {exc}") from None
    return config
