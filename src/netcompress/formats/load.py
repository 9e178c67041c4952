"""`save`, `load` and `export`: every model file format in one registry, read by the file's suffix and
written by the format's name.

A format is a `ModelFormat` subclass registered with `@register_format`: `suffixes` and `load` make
`load` read its files, `name` and `export` make it an export target (`export(model, name, path)`,
`netcompress export --format NAME`). Built in: .safetensors (netcompress model files), .ncq
(quantized), .onnx, OpenVINO's .xml, ExecuTorch's .pte and LiteRT's .tflite (read and written), checkpoints
(.bin/.pt/.pth/.pkl/.npz, told by their bytes).
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

import torch.nn as nn

from ..errors import NetcompressError
from ..spec import ModelSpec, attach, copy_model, index_class_names, spec_of
from .checkpoint import checkpoint_kind
from .course import import_course_checkpoint, layout_text
from .model_file import load_model, save_model
from .state_dict import load_state_dict
from .model_file import read_spec as read_file_spec
from .ncq import load_ncq
from .onnx import export_onnx, load_onnx
from .executorch import export_executorch, load_executorch
from .litert import export_litert, load_litert
from .program import spec_file
from .openvino import export_openvino, load_openvino, weights_file


class ModelFormat:
    """One kind of model file. Subclass it; to read it set `suffixes` and implement `load`; to write it (an export
    target) set `name` and implement `export`; then register it."""

    name: str = ""  # export target name; "" for a format that is only read
    suffixes: tuple[str, ...] = ()  # its files' lower-case suffixes, e.g. (".onnx",): `load` reads them, and an
    # --out file with one of them picks this export target
    takes_model: bool = False  # load(path, model=MyNet()) rebuilds the file onto a fresh instance of a user's module

    def load(self, path: Path, model: nn.Module | None, verify: bool) -> nn.Module:
        """The file as a module with its spec attached; `verify`: check its checksum where it has one."""
        raise NotImplementedError

    def export(self, model: nn.Module, path: Path, data=None, **options) -> Path:
        """Write `model` to `path` (atomically); `data`: a dataset folder, Split or torch Dataset for formats that
        calibrate on images; `options`: the format's own settings."""
        raise NotImplementedError

    def files(self, path: Path) -> list[Path]:
        """Every file an export to `path` wrote, which must ship together: what its size on disk counts."""
        return [path]

    # the int8 kinds it writes, by name, with the export options of each (`export(..., int8=True, **options)`);
    # `deploy` builds and measures every one
    int8_variants: dict[str, dict] = {"int8": {}}


_READERS: dict[str, ModelFormat] = {}
_EXPORTERS: dict[str, ModelFormat] = {}


def register_format(cls: type[ModelFormat]) -> type[ModelFormat]:
    """Class decorator: `load` reads the format's suffixes; with `export`, `export(model, name, path)` writes it."""
    fmt = cls()
    reads, writes = cls.load is not ModelFormat.load, cls.export is not ModelFormat.export
    if (reads and not cls.suffixes) or (writes and not cls.name) or not (reads or writes):
        raise ValueError(f"format {cls.__name__}: `load` needs suffixes, `export` a name, and it needs one of them")
    for suffix in cls.suffixes if reads else ():
        _READERS[suffix.lower()] = fmt
    if writes:
        _EXPORTERS[cls.name] = fmt
    return cls


def list_exporters() -> list[str]:
    """The export targets' names."""
    return list(_EXPORTERS)


def readable_suffixes() -> list[str]:
    return list(_READERS)


def get_exporter(name: str) -> ModelFormat:
    if name not in _EXPORTERS:
        raise NetcompressError(f"export format {name!r}: choose one of {', '.join(list_exporters())}")
    return _EXPORTERS[name]


def exporter_for(path: str | Path) -> ModelFormat | None:
    """The export target that writes files with `path`'s suffix, if one does."""
    suffix = Path(path).suffix.lower()
    return next((fmt for fmt in _EXPORTERS.values() if suffix in fmt.suffixes), None)


SEVEN_BIT = "7-bit weights"  # the int8 variant for x86 CPUs without VNNI (see export_onnx's reduce_range)


def seven_bit_options(target: str) -> dict:
    """The export options of a format's int8 variant with 7-bit weights."""
    options = [o for name, o in get_exporter(target).int8_variants.items() if name.endswith(SEVEN_BIT)]
    if not options:
        with_it = [n for n in list_exporters() if any(v.endswith(SEVEN_BIT) for v in _EXPORTERS[n].int8_variants)]
        raise NetcompressError(f"--reduce-range: 7-bit weights are for {', '.join(with_it)}, not {target}")
    return options[0]


def exported_bytes(target: str, path: str | Path) -> int:
    """Bytes on disk of an export to `path`: all its files (an OpenVINO IR's .xml and .bin)."""
    return sum(f.stat().st_size for f in get_exporter(target).files(Path(path)))


def graph_file(model: nn.Module) -> Path | None:
    """The graph file (.onnx, ...) a model loaded from one runs as, or None for a torch module: such a model has no
    torch layers to measure, quantize or export, and only the runtimes that read its file run it."""
    return getattr(model, "graph_file", None)


def load(path: str | Path, model: nn.Module | None = None, *, input_size: int | None = None,
         verify: bool | None = None) -> nn.Module:
    """Any model file as a module with its spec attached, in eval mode.

    .safetensors (netcompress model file), .ncq (quantized; decoded to fp32), .onnx (run by ONNX
    Runtime), and checkpoints told by their bytes whatever their name (.bin, .pt, .pth, .pkl, .npz):
    torch state_dicts read with weights_only, the course's 8/16-bit pickles read without running
    code, .npz arrays; a StudentNet rebuilt from the tensors, with the layout they do not show
    assumed (a warning says which), or `model`'s class. `model`: a fresh instance of your own
    module class, for files made from a module that is not registered; it is not changed. The
    course's files record no input size: give `input_size`. verify: check a netcompress file's checksum and that its weights are finite
    (default: yes, unless the environment sets NETCOMPRESS_NO_VERIFY=1); the course's files carry no
    checksum to check.
    """
    path = Path(path)
    fmt = _READERS.get(path.suffix.lower())
    if fmt is None and path.is_file() and checkpoint_kind(path) in ("torch", "pickle", "npz"):
        fmt = CourseCheckpoint()
    if fmt is None:
        raise NetcompressError(f"{path}: unknown model file type {path.suffix!r}; netcompress reads "
                               f"{', '.join(readable_suffixes())}")
    if model is not None and not fmt.takes_model:
        rebuilt = ", ".join(s for s, f in _READERS.items() if f.takes_model)
        raise NetcompressError(f"{path}: model= applies to {rebuilt} files; for a state_dict use "
                               "nc.load_state_dict(path, model)")
    if verify is None:
        verify = os.environ.get("NETCOMPRESS_NO_VERIFY") != "1"
    net = fmt.load(path, model, verify)
    return net if input_size is None else attach(net, spec_of(net).replace(input_size=input_size))


def read_spec(path: str | Path) -> ModelSpec:
    """A model file's spec: from its header alone where the format allows (.safetensors), else by loading it."""
    path = Path(path)
    return read_file_spec(path) if path.suffix.lower() == ".safetensors" else spec_of(load(path))


def export(model: nn.Module, target: str, path: str | Path, data=None, **options) -> Path:
    """Write `model` as a deployment file of a registered format (`list_exporters()`), e.g.
    export(model, "onnx", "m.onnx", data, int8=True): `data` calibrates formats that quantize on images;
    `options` are the format's own (ONNX: see `export_onnx`). The model is not changed."""
    fmt = get_exporter(target)
    if graph_file(model) is not None:
        raise NetcompressError(f"{graph_file(model)} is already a graph file; export a .safetensors or .ncq model")
    try:
        inspect.signature(fmt.export).bind(model, Path(path), data, **options)
    except TypeError as exc:  # an option this format does not take
        raise NetcompressError(f"export to {target}: {exc}") from None
    return fmt.export(model, Path(path), data, **options)


def save(model: nn.Module, path: str | Path, *, class_names: list[str] | None = None, input_size: int | None = None,
         sparse: bool = False) -> Path:
    """Write `model` as a .safetensors model file with its spec (architecture, replaced layers, classes, input size).

    A module netcompress has not seen needs `input_size` unless a verb already recorded it (fit, or
    prune/factorize given an example_input); `class_names` default to the output indices "0", "1", ... Load it back with `load(path, model=YourModule())`.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise NetcompressError(f"{path}: model files end in .safetensors (use quantize(...).save() for .ncq and "
                               "export(model, 'onnx', path) for .onnx)")
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


# ---- the built-in formats ----------------------------------------------------------------------------------------

@register_format
class Safetensors(ModelFormat):
    suffixes, takes_model = (".safetensors",), True

    def load(self, path, model, verify):
        return load_model(path, model, verify=verify)


@register_format
class Quantized(ModelFormat):
    suffixes, takes_model = (".ncq",), True

    def load(self, path, model, verify):
        return load_ncq(path, model, verify=verify)


@register_format
class Onnx(ModelFormat):
    """fp32, or static int8 (QDQ or QOperator) for ONNX Runtime with int8=True and `data` to calibrate on."""

    name, suffixes = "onnx", (".onnx",)
    int8_variants = {"int8 qdq": {"quant_format": "qdq"}, "int8 qoperator": {"quant_format": "qoperator"},
                     f"int8 qdq {SEVEN_BIT}": {"quant_format": "qdq", "reduce_range": True}}

    def load(self, path, model, verify):
        return load_onnx(path, verify=verify)

    def export(self, model, path, data=None, **options):
        return export_onnx(model, path, calibration=data, **options)


@register_format
class OpenVinoIR(ModelFormat):
    """OpenVINO IR (.xml, weights in the .bin beside it): fp32, or int8 through NNCF with int8=True and `data`
    to calibrate on (the `openvino` extra)."""

    name, suffixes = "openvino", (".xml",)
    int8_variants = {"int8": {}, f"int8 {SEVEN_BIT}": {"overflow_fix": "enable"}}

    def load(self, path, model, verify):
        return load_openvino(path, verify=verify)

    def export(self, model, path, data=None, **options):
        return export_openvino(model, path, calibration=data, **options)

    def files(self, path):
        return [path, weights_file(path)]


@register_format
class ExecuTorchProgram(ModelFormat):
    """ExecuTorch program (.pte, XNNPACK delegate; its spec in the .json beside it): fp32, or PT2E int8 with
    int8=True and `data` to calibrate on (the `executorch` extra)."""

    name, suffixes = "executorch", (".pte",)

    def load(self, path, model, verify):
        return load_executorch(path, verify=verify)

    def export(self, model, path, data=None, **options):
        return export_executorch(model, path, calibration=data, **options)

    def files(self, path):
        return [path, spec_file(path)]


@register_format
class LiteRTFile(ModelFormat):
    """LiteRT flatbuffer (.tflite, run by LiteRT's interpreter with XNNPACK; its spec in the .json beside it): fp32,
    or full-integer int8 (PT2E) with int8=True and `data` to calibrate on (the `litert` extra)."""

    name, suffixes = "litert", (".tflite",)

    def load(self, path, model, verify):
        return load_litert(path, verify=verify)

    def export(self, model, path, data=None, **options):
        return export_litert(model, path, calibration=data, **options)

    def files(self, path):
        return [path, spec_file(path)]


@register_format
class CourseCheckpoint(ModelFormat):
    """A state_dict in any kind `checkpoint_kind` tells by its bytes (torch file, the course's 8/16-bit pickle,
    .npz): a StudentNet rebuilt from its tensors, or with `model=` the user's own class. Also what `load` reads
    a file of an unregistered suffix as, when its bytes are one of those kinds."""

    suffixes, takes_model = (".bin", ".pt", ".pth", ".pkl", ".npz"), True

    def load(self, path, model, verify):  # the course's files carry no checksum
        if model is not None:
            return load_state_dict(path, model)
        net = import_course_checkpoint(path)
        warnings.warn(f"{path}: the file does not record where the model downsamples, its activations or its "
                      f"preprocessing; assumed {layout_text(spec_of(net).kwargs)}. If it was "
                      "saved from another layout its outputs are wrong: load it with your own class, "
                      "nc.load(path, model=YourNet())", stacklevel=3)
        return net
