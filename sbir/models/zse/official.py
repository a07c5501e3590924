"""Loading the released ZSE-SBIR checkpoint (``best_checkpoint.pth``) without pickle.

The file is a dict with a ``model`` state dict whose names and shapes are listed in
``resources/zse_official_state_dict.tsv``. The `official` preset at base size has exactly those
names, so loading is strict: any missing or unexpected key is an error naming the keys.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from sbir.errors import CheckpointError
from sbir.models.zse.model import ZSESBIR


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys or shapes do not match the model built from the config."""


def _release_globals() -> list:
    """The non-tensor globals a release-style file holds, and nothing else.

    The release's ``train.py`` saves ``map_all`` and ``precision_100`` from ``np.nanmean``: NumPy float64
    scalars, pickled as ``<numpy core>.multiarray.scalar`` plus ``numpy.dtype``. NumPy 2 names its core
    ``numpy._core``; files written under NumPy 1 say ``numpy.core``. Both names map to the same function.
    """
    from numpy._core.multiarray import scalar

    dtype_classes = [type(np.dtype(name)) for name in ("float32", "float64")]  # a dtype's state is built on its class
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtype_classes]


_GENERIC = ("Weights only load failed", "Please file an issue", "WeightsUnpickler error", "Check the documentation")


def _reason(exc: Exception) -> str:
    """The line of a torch.load error that names the problem (the rest is generic advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith(_GENERIC)]
    return (specific or lines or [type(exc).__name__])[0]


def official_state_dict_spec() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the released checkpoint."""
    text = (resources.files("sbir") / "resources" / "zse_official_state_dict.tsv").read_text()
    spec: dict[str, tuple[int, ...]] = {}
    for line in text.splitlines()[1:]:
        if line.strip():
            key, shape, _dtype = line.split("\t")
            spec[key] = tuple(int(s) for s in shape.split("x"))
    return spec


def read_official_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, float | int]]:
    """Read ``best_checkpoint.pth`` safely (weights_only): its model state dict and the scalars saved beside it
    (``epoch``, ``map_all``, ``precision_100`` in the release), as plain Python numbers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"official checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_release_globals()):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle payload, a truncated zip, another format
        raise CheckpointError(
            f"{path}: not a readable released checkpoint (weights-only load refused it: {_reason(exc)})"
        ) from exc
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"{path}: expected a dict with a 'model' state dict of tensors")
    info = {k: v.item() if isinstance(v, np.generic) else v for k, v in payload.items() if k != "model"}
    info = {k: v for k, v in info.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {k.removeprefix("module."): v for k, v in state.items()}, info


def load_official_checkpoint(model: ZSESBIR, source: str | Path | dict[str, torch.Tensor]) -> dict[str, float | int]:
    """Load released weights strictly into ``model``; returns the file's saved scalars (epoch, metrics).

    Keys the config deliberately has no module for are skipped by rule, never silently:
    ``rn.*`` under the ``kernel`` head, the dead CA copy when ``keep_dead_ca_copy`` is false,
    and the tokenizer when ``tokenizer_scope`` is ``none``.
    """
    state, info = (dict(source), {}) if isinstance(source, dict) else read_official_checkpoint(source)
    cfg = model.cfg
    skipped_prefixes = []
    if cfg.relation_head != "mlp":
        skipped_prefixes.append("rn.")
    if not cfg.keep_dead_ca_copy:
        skipped_prefixes.append("ca.encoder.layers.")
    if cfg.tokenizer_scope == "none":
        skipped_prefixes.append("sa.model.scale.")
    state = {k: v for k, v in state.items() if not k.startswith(tuple(skipped_prefixes))}
    own = model.state_dict()
    own = {k: v for k, v in own.items() if not k.startswith(tuple(skipped_prefixes))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" … (+{len(keys) - 8})" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointMismatchError(
            "checkpoint does not match the model config (the release needs model.zse.size=base): " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=not skipped_prefixes)
    return info
