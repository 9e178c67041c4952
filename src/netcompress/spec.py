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

import torch
import torch.nn as nn

from .errors import NetcompressError
from .models import create_model, model_kwargs
from .models.surgery import apply_overrides

SPEC_ATTRIBUTE = "netcompress_spec"
DEFAULT_PREPROCESSING = {"resize": "shorter-side", "crop": "center", "range": "0-1"}


@dataclass(frozen=True)
class PruningRecord:
    """How a model was pruned: enough for the next step of the same schedule to continue where this one stopped."""

    method: str
    step: int = 1
    rate: float | None = None  # the fraction of channels kept per step (None: pruned to a latency)
    kept: float | None = None  # rate^step
    latency: dict | None = None  # the latency target (LatencyTarget's fields) of latency pruning
    cuts: tuple[dict, ...] = ()  # latency pruning: {"layer", "removed"} for every step so far
    start: dict = field(default_factory=dict)  # the model's architecture_kwargs() before the first step

    @classmethod
    def from_dict(cls, d: dict) -> PruningRecord:
        start = d.get("start") or ({"widths": d["original_widths"]} if d.get("original_widths") else {})
        return cls(d["method"], d.get("step", 1), d.get("rate"), d.get("kept"), d.get("latency"),
                   tuple(d.get("cuts", ())), start)


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about how the model was made, beside its architecture. Typed where it drives
    behaviour (pruning, sparsity); `extra` keeps any other entry a file carries, as it was."""

    module: str | None = None  # a user's own module: its class, "package.Class"
    pruned: PruningRecord | None = None
    sparse: bool = False  # unstructured pruning: fine-tuning keeps its zeros
    lowrank: dict | None = None  # the factorization's config, rank selection and layers
    quantized: dict | None = None  # the storage codec of the .ncq file it was decoded from
    data: dict | None = None  # how the training splits were made (a carved validation split, say)
    distilled_from: str | dict | None = None
    val_accuracy: float | None = None  # of the best epoch of its training
    epoch: int | None = None
    imported_from: str | None = None  # a course checkpoint or another format's file name
    exported: dict = field(default_factory=dict)  # per export (EXPORT_KEYS: "onnx", "openvino_int8", ...): its settings
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> ModelInfo:
        """From a file's JSON (files of every version: unknown entries stay in `extra`)."""
        if isinstance(d, ModelInfo):
            return d
        if not isinstance(d, dict):
            raise NetcompressError(f"info = {d!r} must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)} - {"pruned", "exported", "extra"}
        exported = {k: d[k] for k in EXPORT_KEYS if k in d}
        pruned = d.get("pruned")
        return cls(**{k: d[k] for k in known if k in d},
                   pruned=PruningRecord.from_dict(pruned) if isinstance(pruned, dict) and pruned else None,
                   exported={**d.get("exported", {}), **exported},
                   extra={k: v for k, v in d.items() if k not in known | {"pruned", "exported", "extra"}
                          and k not in EXPORT_KEYS})

    def to_dict(self) -> dict:
        """As a file stores it: the entries that are set, `extra` and the exports at the top level."""
        found = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("exported", "extra"):
                found.update(value)
            elif value not in (None, False):
                found[f.name] = dataclasses.asdict(value) if f.name == "pruned" else value
        if "pruned" in found:
            found["pruned"] = {k: v for k, v in found["pruned"].items() if v not in (None, (), [], {})}
        return found

    def replace(self, **changes) -> ModelInfo:
        return dataclasses.replace(self, **changes)


EXPORT_KEYS = ("onnx", "onnx_int8", "openvino", "openvino_int8", "executorch", "executorch_int8", "litert",
               "litert_int8")  # exports' settings: at the top level of info


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
    info: ModelInfo = field(default_factory=ModelInfo)  # how it was made
    overrides: dict = field(default_factory=dict)  # layer name -> replacement layer (pruned or factorized)
    channels: int = 3  # 3: RGB, 1: grayscale

    def __post_init__(self):
        object.__setattr__(self, "info", ModelInfo.from_dict(self.info))

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

    def with_info(self, **changes) -> "ModelSpec":
        """This spec with some ModelInfo fields changed."""
        return self.replace(info=self.info.replace(**changes))

    def with_export(self, target: str, settings: dict) -> "ModelSpec":
        """This spec noting that it was exported to `target` ("onnx", "onnx_int8") with `settings`."""
        return self.with_info(exported={**self.info.exported, target: settings})

    def to_dict(self) -> dict:
        """As model files store it (JSON)."""
        return {**dataclasses.asdict(dataclasses.replace(self, info=ModelInfo())), "info": self.info.to_dict()}

    def build(self, base: nn.Module | None = None) -> nn.Module:
        """A new module of this architecture (random or base weights) with the spec attached.

        base: a fresh instance of a user's own module class (required when arch is None); it is
        copied, never changed. Registered models never fetch pretrained weights here: the file
        being loaded holds the weights.
        """
        if base is not None:
            net = copy.deepcopy(base)
        elif self.arch is None:
            module = self.info.module or "the original module class"
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
    return ModelSpec(None, {}, [], 0, info=ModelInfo(module=f"{cls.__module__}.{cls.__qualname__}"))


def attach(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Attach `spec` to `model` (a module netcompress made or copied) and return the module."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"expected a ModelSpec, got {type(spec).__name__}")
    setattr(model, SPEC_ATTRIBUTE, spec)
    return model


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy (weights, buffers and spec): verbs work on copies and never change their argument."""
    return copy.deepcopy(model)


def example_input_for(model: nn.Module, example_input=None):
    """`example_input`, or a random batch of one at the model's recorded input size (a clear error if unknown)."""
    if example_input is not None:
        return example_input
    spec = spec_of(model)
    if not spec.input_size:
        raise NetcompressError("pass example_input=torch.randn(1, 3, S, S): the model's input size is not known yet")
    return torch.rand(spec.input_shape())


def with_input_of(spec: ModelSpec, example_input) -> ModelSpec:
    """A spec that learned its input size and channels from an example batch, where it did not know them."""
    if spec.input_size or example_input is None or example_input.dim() != 4 or \
            example_input.shape[-1] != example_input.shape[-2]:
        return spec
    return spec.replace(input_size=int(example_input.shape[-1]), channels=int(example_input.shape[1]))


@torch.no_grad()
def index_class_names(model: nn.Module, spec: ModelSpec) -> list[str]:
    """"0", "1", ... for each output of `model` on one input of `spec`'s shape (a model with no class names)."""
    was_training = model.training
    try:
        weights = next(model.parameters(), None)
        device = weights.device if weights is not None else torch.device("cpu")
        out = model.eval()(torch.zeros(spec.input_shape(), device=device))
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise NetcompressError(f"the model outputs shape {list(out.shape)}, not [batch, classes]: pass class_names")
    return [str(i) for i in range(out.shape[1])]
