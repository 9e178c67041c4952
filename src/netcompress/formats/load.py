"""`save` and `load`: one entry point for every model file, the format picked by the file's suffix."""

from __future__ import annotations

import os
from pathlib import Path

import torch.nn as nn

from ..errors import NetcompressError
from ..spec import attach, copy_model, index_class_names, spec_of
from .course import import_course_checkpoint, load_course_pkl
from .model_file import load_model, save_model
from .ncq import load_ncq
from .onnx import load_onnx

LOADERS = {
    ".safetensors": lambda path, base, verify: load_model(path, base, verify=verify),
    ".ncq": lambda path, base, verify: load_ncq(path, base, verify=verify),
    ".onnx": lambda path, base, verify: load_onnx(path, verify=verify),
    ".bin": lambda path, base, verify: import_course_checkpoint(path),  # the course's files carry no checksum
    ".pt": lambda path, base, verify: import_course_checkpoint(path),
    ".pth": lambda path, base, verify: import_course_checkpoint(path),
    ".pkl": lambda path, base, verify: load_course_pkl(path),
}


def load(path: str | Path, model: nn.Module | None = None, *, input_size: int | None = None,
         verify: bool | None = None) -> nn.Module:
    """Any model file as a module with its spec attached, in eval mode.

    .safetensors (netcompress model file), .ncq (quantized; decoded to fp32), .onnx (run by ONNX
    Runtime), .bin/.pt/.pth (the course's StudentNet state_dict, read with weights_only) and .pkl
    (the course's 8/16-bit pickle, read without running code). `model`: a fresh instance of your
    own module class, for files made from a module that is not registered; it is not changed. The
    course's files record no input size: give `input_size` (any other state_dict: `load_state_dict`).
    verify: check a netcompress file's checksum and that its weights are finite (default: yes, unless
    the environment sets NETCOMPRESS_NO_VERIFY=1); the course's files carry no checksum to check.
    """
    path = Path(path)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise NetcompressError(f"{path}: unknown model file type {path.suffix!r}; netcompress reads "
                               f"{', '.join(LOADERS)}")
    if model is not None and path.suffix.lower() not in (".safetensors", ".ncq"):
        raise NetcompressError(f"{path}: model= applies to .safetensors and .ncq files; for a state_dict use "
                               "nc.load_state_dict(path, model)")
    if verify is None:
        verify = os.environ.get("NETCOMPRESS_NO_VERIFY") != "1"
    net = loader(path, model, verify)
    return net if input_size is None else attach(net, spec_of(net).replace(input_size=input_size))


def save(model: nn.Module, path: str | Path, *, class_names: list[str] | None = None, input_size: int | None = None,
         sparse: bool = False) -> Path:
    """Write `model` as a .safetensors model file with its spec (architecture, replaced layers, classes, input size).

    A module netcompress has not seen needs `input_size` unless a verb already recorded it (fit, or
    prune/factorize given an example_input); `class_names` default to the output indices "0", "1", ... Load it back with `load(path, model=YourModule())`.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise NetcompressError(f"{path}: model files end in .safetensors (use quantize(...).save() for .ncq and "
                               "export_onnx for .onnx)")
    spec = spec_of(model)
    if class_names is not None or input_size is not None:
        spec = spec.replace(class_names=list(class_names or spec.class_names), input_size=input_size or spec.input_size)
    if not spec.input_size:
        raise NetcompressError(f"{path}: the model's input size is unknown; pass save(model, path, input_size=N), "
                               "or an example_input to the verb that made it, or fit it on data first")
    if not spec.class_names:  # as torchvision and timm do: the indices of the classifier's outputs
        spec = spec.replace(class_names=index_class_names(model, spec))
    if spec is not spec_of(model):
        model = attach(copy_model(model), spec)
    return save_model(model, path, sparse=sparse)
