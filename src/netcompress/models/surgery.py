"""Module surgery recorded as JSON: replace named layers by layers of other shapes.

A pruned or factorized network is its base architecture plus some layers of new shapes (or, for
a factorized layer, an nn.Sequential of thinner layers). `record_changes` notes those layers while
a verb changes a module, `apply_overrides` rebuilds them on a fresh base, so model files hold the
exact architecture of any module, registered or the user's own, without pickling module objects.
"""

from __future__ import annotations

import torch.nn as nn

from ..errors import NetcompressError

LAYERS = {"Conv2d": nn.Conv2d, "BatchNorm2d": nn.BatchNorm2d, "Linear": nn.Linear}
SIZES = {"Conv2d": ("in_channels", "out_channels", "groups"), "BatchNorm2d": ("num_features",),
         "Linear": ("in_features", "out_features")}


def describe(module: nn.Module) -> dict | None:
    """The constructor arguments of a supported layer (or a Sequential of them), or None for anything else."""
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
    if type(module) is nn.Sequential:
        layers = [describe(m) for m in module]
        return None if any(d is None for d in layers) else {"type": "Sequential", "layers": layers}
    return None


def build(desc: dict) -> nn.Module:
    args = {k: v for k, v in desc.items() if k not in ("type", "resized")}
    if desc.get("type") == "Sequential":
        return nn.Sequential(*(build(d) for d in args["layers"]))
    layer = LAYERS.get(desc.get("type"))
    if layer is None:
        raise NetcompressError(f"model file names an unknown layer type {desc.get('type')!r}; upgrade netcompress")
    return layer(**args)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_overrides(model: nn.Module, overrides: dict[str, dict]) -> nn.Module:
    """Replace the named layers of `model` (in place) by the recorded ones; returns `model`."""
    for name, desc in overrides.items():
        try:
            model.get_submodule(name)
        except AttributeError as exc:
            raise NetcompressError(f"model file overrides layer {name!r}, which the architecture lacks: "
                                   "is the base module the one the file was made from?") from exc
        if desc.get("resized"):
            resize(model.get_submodule(name), desc, name)
        else:
            set_submodule(model, name, build(desc))
    return model


def resize(layer: nn.Module, desc: dict, name: str) -> None:
    """Give `layer` the recorded sizes and fresh tensors of those shapes, keeping its class: a pruner
    resizes layers in place, and a subclass (e.g. a Conv2d that pads like TensorFlow's SAME) must stay
    what it is."""
    template = build(desc)
    if desc["type"] not in SIZES or not isinstance(layer, type(template)):
        raise NetcompressError(f"model file resizes layer {name!r} (a {type(layer).__name__}) into a {desc['type']}: "
                               "is the base module the one the file was made from?")
    for attr in SIZES[desc["type"]]:
        setattr(layer, attr, getattr(template, attr))
    for key, tensor in (*template.named_parameters(recurse=False), *template.named_buffers(recurse=False)):
        setattr(layer, key, tensor)


def record_changes(overrides: dict[str, dict], before: nn.Module, after: nn.Module) -> dict[str, dict]:
    """`overrides` updated with every layer of `after` whose type or shape differs from `before`'s.

    A layer inside a replaced Sequential is recorded as part of that Sequential. A change to a
    layer type that cannot be described (anything but Conv2d, BatchNorm2d, Linear and Sequentials
    of them) is refused: the file could not rebuild it.
    """
    old = dict(before.named_modules())
    out = dict(overrides)
    for name, module in after.named_modules():
        if not name:
            continue
        previous = old.get(name)
        leaf = type(module) is not nn.Sequential
        changed = previous is None or type(previous) is not type(module) or (leaf and describe(previous) != describe(module))
        if not changed:
            continue
        owner = next((o for o in out if name.startswith(o + ".")), name)
        desc = describe(after.get_submodule(owner))
        if desc is None:
            raise NetcompressError(f"layer {owner!r} ({type(module).__name__}) changed in a way a model file cannot "
                                   "record; only Conv2d, BatchNorm2d, Linear and Sequentials of them can change")
        if owner == name and leaf and previous is not None and type(previous) is type(module):
            desc = {**desc, "resized": True}  # changed in place: rebuild it in place, keeping its class
        out[owner] = desc
    return out
