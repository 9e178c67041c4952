"""What a model is, beyond its weights: the spec that travels with every module netcompress returns.

A spec names the registered architecture and its exact keyword arguments (or, for a user's own
module, nothing: the user passes a fresh instance as the base), the layers that pruning or
factorization replaced (`overrides`), the class names and the input size. Saved as JSON next to
the tensors, it rebuilds the exact network with no pickle. Modules carry it as an attribute, the
way timm models carry `pretrained_cfg`, so users never pass (model, spec) pairs by hand.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch.nn as nn

from .errors import NetcompressError
from .models import create_model, model_kwargs
from .models.surgery import apply_overrides

SPEC_ATTRIBUTE = "netcompress_spec"
DEFAULT_PREPROCESSING = {"resize": "shorter-side", "crop": "center", "range": "0-1"}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild and feed a model, stored as JSON in the model file.

    arch None means a user's own module: `build` then needs a fresh instance as its base.
    """

    arch: str | None
    kwargs: dict
    class_names: list[str]
    input_size: int
    preprocessing: dict = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    info: dict = field(default_factory=dict)  # free-form provenance: metrics, how it was made
    overrides: dict = field(default_factory=dict)  # layer name -> replacement layer (pruned or factorized)
    channels: int = 3  # 3: RGB, 1: grayscale

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """The shape of a batch of inputs: (batch, channels, size, size)."""
        if not self.input_size:
            raise NetcompressError("the model's input size is not known yet: pass an example input, or fit or save "
                                   "it with its input size")
        return batch, self.channels, self.input_size, self.input_size

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def with_info(self, **entries) -> "ModelSpec":
        return self.replace(info={**self.info, **entries})

    def build(self, base: nn.Module | None = None) -> nn.Module:
        """A new module of this architecture (random or base weights) with the spec attached.

        base: a fresh instance of a user's own module class (required when arch is None); it is
        copied, never changed. Registered models never fetch pretrained weights here: the file
        being loaded holds the weights.
        """
        if base is not None:
            net = copy.deepcopy(base)
        elif self.arch is None:
            module = self.info.get("module", "the original module class")
            raise NetcompressError(f"this model is a user-defined module ({module}), not a registered architecture; "
                                   f"pass a fresh instance as the base, e.g. nc.load(path, model=MyNet())")
        else:
            kwargs = {**self.kwargs, **({"pretrained": False} if self.kwargs.get("pretrained") else {})}
            net = create_model(self.arch, **kwargs)
        return attach(apply_overrides(net, self.overrides), self)


def new_model(arch: str, class_names: list[str], input_size: int, channels: int = 3, **kwargs) -> nn.Module:
    """Build a registered model for `class_names` and `channels`-channel images, spec attached (None-valued
    kwargs keep their defaults)."""
    full = model_kwargs(arch, **kwargs, num_classes=len(class_names), in_channels=channels)
    spec = ModelSpec(arch, full, list(class_names), input_size, channels=channels)
    net = create_model(arch, **full)
    return attach(net, spec)


def spec_of(model: nn.Module) -> ModelSpec:
    """The spec a module carries; a module netcompress has not seen gets one that says it is the user's own."""
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if spec is not None:
        return spec
    cls = type(model)
    return ModelSpec(None, {}, [], 0, info={"module": f"{cls.__module__}.{cls.__qualname__}"})


def attach(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Attach `spec` to `model` (a module netcompress made or copied) and return the module."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"expected a ModelSpec, got {type(spec).__name__}")
    setattr(model, SPEC_ATTRIBUTE, spec)
    return model


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy (weights, buffers and spec): verbs work on copies and never change their argument."""
    return copy.deepcopy(model)
