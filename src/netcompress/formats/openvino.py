"""OpenVINO IR files (.xml with its .bin): export (fp32, or int8 through NNCF post-training quantization
calibrated on training images) and loading.

An IR is what OpenVINO deployments read (`openvino.Core().read_model("m.xml")`), with no netcompress
installed. It is converted from the fp32 ONNX export, so one exporter serves both targets, and NNCF
quantizes the OpenVINO model itself (its OpenVINO backend), so no torch quantization API is involved. The
model's spec (classes, input size, preprocessing) and a SHA-256 of both files live in the IR's rt_info
under `netcompress`, where OpenVINO users read them with `model.get_rt_info(["netcompress", "spec"])`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from ..data.split import calibration_images, split_of
from ..errors import NetcompressError
from ..files import atomic_write
from ..spec import ModelSpec, attach, spec_of
from .model_file import spec_from_dict
from .onnx import export_onnx

SPEC_KEY = ["netcompress", "spec"]
CHECKSUM_KEY = ["netcompress", "checksum"]
PENDING = "netcompress-checksum-pending"  # what the checksum field holds while the checksum is computed
INSTALL = "pip install 'netcompress[openvino]'"


def import_openvino():
    """The openvino module (imported with its telemetry off, see `telemetry_off`)."""
    with telemetry_off():
        try:
            import openvino
        except ImportError:
            raise NetcompressError(f"OpenVINO IR files need the openvino package: {INSTALL}") from None
    return openvino


@contextmanager
def telemetry_off():
    """OpenVINO's converter and NNCF send usage events to Google Analytics unless the user opted out, each from a
    forked process they wait on for up to 3 s: 36 forks for one fp32 and one int8 export, forks that can deadlock
    once LiteRT's converter has started JAX's threads, reporting runs nobody asked to report. Both decide again
    each time they initialize (at import, and OpenVINO's converter on every call) and both skip CI jobs, the one
    switch they share: so CI is set while netcompress calls them, and restored after."""
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["CI"]
        else:
            os.environ["CI"] = before


def weights_file(path: Path) -> Path:
    """The .bin that holds an IR's weights: OpenVINO reads it from beside the .xml, by the same stem."""
    return Path(path).with_suffix(".bin")


def export_openvino(model: nn.Module, path: str | Path, *, int8: bool = False, calibration=None,
                    calibration_images: int = 300, overflow_fix: str = "first_layer_only",
                    dynamic_size: bool = False) -> Path:
    """Write `model` as an OpenVINO IR: `path` (.xml) and its weights beside it (.bin); input [N, C, S, S] in 0..1
    with a dynamic batch, output the logits.

    int8=True: NNCF post-training quantization (int8 weights and activations, OpenVINO's CPU preset), activation
    ranges from `calibration_images` training images of `calibration` (a dataset folder, Split or torch Dataset);
    overflow_fix (NNCF's): "enable" gives every layer 7-bit weights, which CPUs without VNNI need to multiply
    without saturating (see `export_onnx`'s reduce_range), "first_layer_only" (NNCF's default) or "disable".
    dynamic_size: height and width dynamic too, as for ONNX.
    """
    path = Path(path)
    if path.suffix != ".xml":
        raise NetcompressError(f"{path}: OpenVINO IR files end in .xml (the weights go beside it, in .bin)")
    if int8 and calibration is None:
        raise NetcompressError("int8 export needs calibration data: its training images set the activation ranges")
    ov = import_openvino()
    spec = spec_of(model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "fp32.onnx", dynamic_size=dynamic_size)
        with telemetry_off():
            ov_model = ov.convert_model(str(_without_metadata(onnx_path)))
        if int8:
            ov_model = quantize_openvino_int8(ov_model, split_of(calibration, "training"), calibration_images,
                                              overflow_fix)
            spec = spec.with_export("openvino_int8", {"calibration_images": calibration_images,
                                                      "quantizer": "nncf", "overflow_fix": overflow_fix})
        else:
            spec = spec.with_export("openvino", {"input_size": spec.input_size, "dynamic_size": dynamic_size})
        ov_model.set_rt_info(json.dumps(spec.to_dict()), SPEC_KEY)
        ov_model.set_rt_info(PENDING, CHECKSUM_KEY)
        xml = Path(tmp) / "model.xml"
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        text, weights = xml.read_bytes(), weights_file(xml).read_bytes()
        if text.count(PENDING.encode()) != 1:
            raise NetcompressError(f"{path}: OpenVINO wrote the checksum field {text.count(PENDING.encode())} times")
        signed = text.replace(PENDING.encode(), _checksum(text, weights).encode())
        atomic_write(weights_file(path), lambda t: shutil.copyfile(weights_file(xml), t))
        return atomic_write(path, lambda t: t.write_bytes(signed))


def _without_metadata(onnx_path: Path) -> Path:
    """The ONNX file without netcompress's metadata, which the converter would copy into the IR as a second,
    stale spec and checksum."""
    import onnx

    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    onnx.save_model(proto, str(onnx_path))
    return onnx_path


def quantize_openvino_int8(ov_model, calibration, n: int = 300, overflow_fix: str = "first_layer_only"):
    """An int8 copy of an OpenVINO model by NNCF post-training quantization: activation ranges (and NNCF's bias
    correction) from `n` images of a Split, spread evenly over its classes."""
    try:
        with telemetry_off():
            import nncf
    except ImportError:
        raise NetcompressError(f"int8 OpenVINO export needs NNCF: {INSTALL}") from None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    fixes = {fix.value: fix for fix in OverflowFix}
    if overflow_fix not in fixes:
        raise NetcompressError(f"overflow_fix {overflow_fix!r}: choose one of {', '.join(fixes)}")
    images = calibration_images(calibration, n).numpy()
    dataset = nncf.Dataset([images[i:i + 1] for i in range(len(images))])
    try:
        with telemetry_off():
            return nncf.quantize(ov_model, dataset, subset_size=len(images),
                                 preset=nncf.QuantizationPreset.PERFORMANCE,
                                 advanced_parameters=AdvancedQuantizationParameters(overflow_fix=fixes[overflow_fix]))
    except Exception as exc:  # NNCF raises its own types for graphs it cannot quantize
        raise NetcompressError(f"NNCF could not quantize the model ({type(exc).__name__}: {exc})") from exc


def _checksum(xml: bytes, weights: bytes) -> str:
    """SHA-256 of the .xml (its checksum field holding PENDING; the spec is in it) and the .bin."""
    return hashlib.sha256(xml + b"\0" + weights).hexdigest()


class OpenVinoModel(nn.Module):
    """A compiled OpenVINO model behind the nn.Module call interface, so `predict` and `evaluate` run the IR like
    any model (tensors in, tensors out, on the CPU); `graph_file` marks it as a file only runtimes that read it run.
    It computes in fp32, as the file says, where a CPU with bf16 units would otherwise round to bf16."""

    def __init__(self, ov_model, path: Path, threads: int = 0):  # 0: OpenVINO's default (every core)
        super().__init__()
        ov = import_openvino()
        self.compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                  "INFERENCE_PRECISION_HINT": "f32"})
        self.graph_file = Path(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compiled(x.detach().cpu().float().contiguous().numpy())
        return torch.from_numpy(out[self.compiled.output(0)].copy())


def read_ir(path: str | Path):
    """An IR as an openvino.Model, with a NetcompressError for what OpenVINO cannot read."""
    path = Path(path)
    if not path.is_file():
        raise NetcompressError(f"OpenVINO IR file {path} does not exist")
    if not weights_file(path).is_file():
        raise NetcompressError(f"{path}: its weights {weights_file(path).name} are not beside it; copy both files")
    ov = import_openvino()
    try:
        return ov.Core().read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NetcompressError(f"{path}: OpenVINO cannot read it ({first}); re-export it with "
                               "`netcompress export MODEL --out FILE.xml`") from None


def load_openvino(path: str | Path, threads: int | None = None, *, verify: bool = True) -> OpenVinoModel:
    """An OpenVINO-backed module with its spec; an IR from elsewhere gets one guessed from its input and output
    shapes. verify: check the checksum of a netcompress export. threads: OpenVINO's inference threads (default: as
    many as torch uses)."""
    path = Path(path)
    ov_model = read_ir(path)
    spec = None
    if ov_model.has_rt_info(SPEC_KEY):
        raw = ov_model.get_rt_info(SPEC_KEY).astype(str)
        try:
            spec = spec_from_dict(json.loads(raw), str(path))
        except (ValueError, RecursionError) as exc:
            raise NetcompressError(f"{path}: its netcompress metadata is not readable ({type(exc).__name__}); the file "
                                   "is damaged, re-export it") from None
        if verify and ov_model.has_rt_info(CHECKSUM_KEY):
            _verify(path, ov_model.get_rt_info(CHECKSUM_KEY).astype(str))
    model = OpenVinoModel(ov_model, path, torch.get_num_threads() if threads is None else threads)
    return attach(model, spec if spec is not None else _guessed_spec(ov_model, path))


def _verify(path: Path, stored: str) -> None:
    text = path.read_bytes()
    if text.count(stored.encode()) != 1 or \
            _checksum(text.replace(stored.encode(), PENDING.encode()), weights_file(path).read_bytes()) != stored:
        raise NetcompressError(f"{path}: checksum mismatch: the .xml or its .bin is damaged or was edited; re-export "
                               "it, or load it anyway with --no-verify (verify=False)")


def _guessed_spec(ov_model, path: Path) -> ModelSpec:
    shape_in, shape_out = ov_model.inputs[0].partial_shape, ov_model.outputs[0].partial_shape
    if not (shape_in.rank.is_static and len(shape_in) == 4 and shape_in[2].is_static
            and shape_out.rank.is_static and shape_out[len(shape_out) - 1].is_static):
        raise NetcompressError(f"{path}: not a netcompress export and its input {shape_in} / output {shape_out} are "
                               "not a fixed-size image classifier's; pass a file from `netcompress export`")
    classes = shape_out[len(shape_out) - 1].get_length()
    return ModelSpec(None, {}, [str(i) for i in range(classes)], shape_in[2].get_length(),
                     info={"imported_from": path.name, "module": "openvino"})
