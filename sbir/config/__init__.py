"""One typed, validated configuration for every sbir command.

The config is a tree of pydantic models (model, data, train, eval, index, serve, run, tracking). It loads from YAML,
accepts dotted ``key=value`` overrides from the command line, and rejects unknown keys and bad
values with errors that name the key and the allowed values. Method presets (``official`` /
``paper``) and size presets (``base`` / ``tiny``) fill in every switch the user did not set, so
any single switch can still be overridden on its own.

Every name is importable from ``sbir.config``; the modules split it by job: ``base`` (the strict section
base), ``methods`` (the model section and its presets), ``sections`` (the app sections), ``root`` (``Config``),
``loading`` (YAML, overrides, dump, absolute paths) and ``for_checkpoint`` (a stored checkpoint's config).
"""

from sbir.config.base import check_name
from sbir.config.for_checkpoint import RUNTIME_SECTIONS, config_for_checkpoint
from sbir.config.loading import (
    build_config,
    dump_config,
    format_validation_errors,
    load_config,
    parse_override,
    read_config_tree,
    with_absolute_paths,
    with_values,
)
from sbir.config.methods import CLIP_PRESETS, ZSE_PRESETS, ZSE_SIZES, ClipATConfig, ModelConfig, ZSEConfig
from sbir.config.root import Config, registered_model_name
from sbir.config.sections import (
    AutoscalingConfig,
    DataConfig,
    DeploymentConfig,
    EvalConfig,
    EvalTarget,
    IndexConfig,
    RunConfig,
    ServeConfig,
    TrackingConfig,
    TrainConfig,
    TuneConfig,
)
from sbir.errors import ConfigError

__all__ = [
    "CLIP_PRESETS",
    "RUNTIME_SECTIONS",
    "ZSE_PRESETS",
    "ZSE_SIZES",
    "AutoscalingConfig",
    "ClipATConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DeploymentConfig",
    "EvalConfig",
    "EvalTarget",
    "IndexConfig",
    "ModelConfig",
    "RunConfig",
    "ServeConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "ZSEConfig",
    "build_config",
    "check_name",
    "config_for_checkpoint",
    "dump_config",
    "format_validation_errors",
    "load_config",
    "parse_override",
    "read_config_tree",
    "registered_model_name",
    "with_absolute_paths",
    "with_values",
]
