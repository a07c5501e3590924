"""What CLIP-AT trains: the ``ln_only`` / ``official_freeze`` filters and per-modality LayerNorm copies.

``ln_only`` (paper): visual LayerNorm affine parameters only (prompts are handled by the model).
``official_freeze`` (released code): the filter that freezes only parameters named exactly
``weight``/``bias`` on non-LayerNorm modules, applied to the visual tower. It leaves all LayerNorms,
the attention in-projections, the class/positional embeddings and the output projection trainable
(21,733,632 parameters for ViT-B/32, docs/clip_at.md#what-is-trained).
"""

from __future__ import annotations

import torch
from torch import nn

FREEZE_MODES = ("ln_only", "official_freeze", "none")


def layernorm_parameter_names(visual: nn.Module, prefix: str = "") -> list[str]:
    """Dotted names of every LayerNorm affine parameter in ``visual`` (weight, and bias if any)."""
    names = []
    for module_name, module in visual.named_modules():
        if isinstance(module, nn.LayerNorm):
            for param_name, _ in module.named_parameters(recurse=False):
                names.append(f"{prefix}{module_name}.{param_name}" if module_name else f"{prefix}{param_name}")
    return names


def official_trainable_names(visual: nn.Module, prefix: str = "") -> list[str]:
    """Names the released code leaves trainable: all but ``weight``/``bias`` of non-LayerNorm modules."""
    names = []
    for module_name, module in visual.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:  # e.g. fixed sin-cos positional embeddings stay fixed
                continue
            if isinstance(module, nn.LayerNorm) or param_name not in ("weight", "bias"):
                full = f"{module_name}.{param_name}" if module_name else param_name
                names.append(prefix + full)
    return names


def trainable_visual_names(visual: nn.Module, freeze: str) -> list[str]:
    """Names of the visual-tower parameters that ``freeze`` leaves trainable."""
    if freeze == "ln_only":
        params = dict(visual.named_parameters())
        return [n for n in layernorm_parameter_names(visual) if params[n].requires_grad]
    if freeze == "official_freeze":
        return official_trainable_names(visual)
    if freeze == "none":  # every visual weight: for random-init backbones (the synthetic demo), not the paper
        return [n for n, _ in visual.named_parameters()]
    raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {freeze!r}")


def _key(name: str) -> str:
    """ParameterDict keys cannot contain dots."""
    return name.replace(".", "__")


class LayerNormCopies(nn.Module):
    """A second, independent copy of the visual LayerNorm affine parameters (the photo copy).

    The live copy in the backbone serves sketches; :meth:`overrides` returns this copy keyed by
    the backbone's parameter names, for ``torch.func.functional_call`` on the photo pass.
    """

    def __init__(self, visual: nn.Module, prefix: str = "") -> None:
        super().__init__()
        params = dict(visual.named_parameters())
        self.names = layernorm_parameter_names(visual)
        self.prefix = prefix
        self.params = nn.ParameterDict({_key(name): nn.Parameter(params[name].detach().clone()) for name in self.names})

    def overrides(self) -> dict[str, torch.Tensor]:
        """``{prefix + backbone parameter name: copy}`` for functional_call."""
        return {self.prefix + name: self.params[_key(name)] for name in self.names}

    def numel(self) -> int:
        """Parameter count of one copy."""
        return sum(p.numel() for p in self.params.values())
