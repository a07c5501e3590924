"""The application's arguments and what the ingress makes of them.

:class:`AppArgs` is the typed argument of the application builder (``serve.app:build_app``): Ray Serve
validates a Serve config's ``args`` (or ``serve run … key=value``) into it, and ``sbir serve`` builds it
directly. :func:`settings_from_args` turns it into the checked :class:`AppSettings` and the project config.
(No ``from __future__ import annotations`` here: Ray reads the builder's annotation at run time.)
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from sbir.config import Config, ServeConfig, load_config
from sbir.errors import SbirError
from serve.http import API_KEY_ENV


class AppArgsError(SbirError):
    exit_code = 2


class AppArgs(BaseModel):
    """What to serve and with which config; unknown keys are refused by name."""

    model_config = ConfigDict(extra="forbid")

    config: str | None = None  # a YAML file or preset name
    model: str | None = None  # path, run id, runs:/… or models:/name@alias (default serve.model, SBIR_MODEL)
    gallery: str | None = None  # saved gallery (default serve.gallery, SBIR_GALLERY, else the run's artifact)
    tracking_uri: str | None = None
    runs_dir: str | None = None
    overrides: list[str] = []  # dotted overrides; a comma-separated string from `serve run … overrides=a=1,b=2`

    @field_validator("overrides", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return [part for part in value.split(",") if part] if isinstance(value, str) else value or []

    @classmethod
    def parse(cls, args: "AppArgs | Mapping[str, Any]") -> "AppArgs":
        """Builder arguments from a mapping, with an error that names the bad keys."""
        if isinstance(args, AppArgs):
            return args
        try:
            return cls.model_validate(dict(args))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: "
                + ("unknown argument" if e["type"] == "extra_forbidden" else e["msg"])
                for e in exc.errors()
            )
            known = ", ".join(cls.model_fields)
            raise AppArgsError(f"invalid application argument(s): {problems}; known: {known}") from None


@dataclass(frozen=True)
class AppSettings:
    """What the ingress needs to know: the limits and defaults, and what to serve (and how to re-resolve it)."""

    serve: ServeConfig
    model: str
    gallery: str | None  # None: the `gallery` artifact of the model version's run
    tracking_uri: str | None
    runs_dir: str
    api_key: str | None


def settings_from_args(args: "AppArgs | Mapping[str, Any]") -> tuple[AppSettings, Config]:
    """The builder's arguments, checked and completed from the config and the environment."""
    parsed = AppArgs.parse(args)
    config = load_config(parsed.config, list(parsed.overrides))
    model = parsed.model or config.serve.model or os.environ.get("SBIR_MODEL")
    if not model:
        raise AppArgsError("no model to serve: pass model=<path|run id|models:/name@alias> (or serve.model)")
    gallery = parsed.gallery or config.serve.gallery.path or os.environ.get("SBIR_GALLERY") or None
    settings = AppSettings(
        serve=config.serve,
        model=str(model),
        gallery=str(gallery) if gallery else None,
        tracking_uri=parsed.tracking_uri or config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI"),
        runs_dir=str(parsed.runs_dir or config.run.dir),
        api_key=config.serve.api_key or os.environ.get(API_KEY_ENV) or None,
    )
    return settings, config
