"""Module surgery recorded as JSON: replace named layers by layers of other shapes.

A pruned (or factorized) torchvision model is its registered architecture plus a few layers of
new shapes. `layer_overrides` records those layers, `apply_overrides` rebuilds them, so model
files hold the exact architecture without pickling module objects.
"""

from __future__ import annotations

import torch.nn as nn

from .errors import NetcompressError


def describe(module: nn.Module) -> dict | None:
    """The constructor arguments of a supported layer, or None for anything else."""
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": list(module.kernel_size), "stride": list(module.stride),
                "padding": list(module.padding) if not isinstance(module.padding, str) else module.padding,
                "dilation": list(module.dilation), "groups": module.groups, "bias": module.bias is not None,
                "padding_mode": module.padding_mode}
    if isinstance(module, nn.BatchNorm2d):
        return {"type": "BatchNorm2d", "num_features": module.num_features, "eps": module.eps,
                "momentum": module.momentum, "affine": module.affine,
                "track_running_stats": module.track_running_stats}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    return None


def build(desc: dict) -> nn.Module:
    args = {k: v for k, v in desc.items() if k != "type"}
    if desc.get("type") == "Sequential":
        return nn.Sequential(*(build(d) for d in args["layers"]))
    layer = {"Conv2d": nn.Conv2d, "BatchNorm2d": nn.BatchNorm2d, "Linear": nn.Linear}.get(desc.get("type"))
    if layer is None:
        raise NetcompressError(f"model file names an unknown layer type {desc.get('type')!r}; upgrade netcompress")
    return layer(**args)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_overrides(model: nn.Module, overrides: dict[str, dict]) -> nn.Module:
    for name, desc in overrides.items():
        try:
            model.get_submodule(name)
        except AttributeError as exc:
            raise NetcompressError(f"model file overrides layer {name!r}, which the architecture lacks") from exc
        set_submodule(model, name, build(desc))
    return model


def layer_overrides(reference: nn.Module, changed: nn.Module) -> dict[str, dict]:
    """Layers of `changed` whose constructor arguments differ from the same-named layers of `reference`."""
    ref = dict(reference.named_modules())
    out = {}
    for name, module in changed.named_modules():
        desc = describe(module)
        if desc is not None and (name not in ref or describe(ref[name]) != desc):
            out[name] = desc
    return out
