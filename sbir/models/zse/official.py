"""Loading the released ZSE-SBIR checkpoint (``best_checkpoint.pth``) without pickle.

The file is a dict with a ``model`` state dict whose names and shapes are listed in
``resources/zse_official_state_dict.tsv``. The `official` preset at base size has exactly those
names, so loading is strict: any missing or unexpected key is an error naming the keys.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from sbir.models.zse.model import ZSESBIR


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's keys or shapes do not match the model built from the config."""


def official_state_dict_spec() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the released checkpoint."""
    text = (resources.files("sbir") / "resources" / "zse_official_state_dict.tsv").read_text()
    spec: dict[str, tuple[int, ...]] = {}
    for line in text.splitlines()[1:]:
        if line.strip():
            key, shape, _dtype = line.split("\t")
            spec[key] = tuple(int(s) for s in shape.split("x"))
    return spec


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read ``best_checkpoint.pth`` safely (weights_only) and return its model state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path}: expected a dict with a 'model' state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_official_checkpoint(model: ZSESBIR, source: str | Path | dict[str, torch.Tensor]) -> None:
    """Load released weights strictly into ``model``.

    Keys the config deliberately has no module for are skipped by rule, never silently:
    ``rn.*`` under the ``kernel`` head, the dead CA copy when ``keep_dead_ca_copy`` is false,
    and the tokenizer when ``tokenizer_scope`` is ``none``.
    """
    state = dict(source) if isinstance(source, dict) else read_official_state_dict(source)
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
