"""ONNX export and the int8 runtime: ONNX Runtime static quantization (QDQ) calibrated on training images.

`torch.ao.quantization` is deprecated and PT2E moved to torchao; ONNX Runtime runs the exported
graph several times faster than eager PyTorch at batch 1 on a CPU, so the fp32 and int8 deployment
path is an .onnx file. Every exported file carries the model's JSON spec in its metadata
(`netcompress`), so evaluation knows the class names and input size.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from .artifact import ModelSpec
from .data import Split
from .errors import NetcompressError
from .files import atomic_write

META_KEY = "netcompress"


def export_onnx(model: nn.Module, spec: ModelSpec, path: str | Path, opset: int = 20) -> Path:
    """fp32 .onnx with a dynamic batch dimension (input "input" [N, 3, S, S] in 0..1, output "logits")."""
    import onnx

    model = model.eval().cpu()
    example = torch.rand(2, 3, spec.input_size, spec.input_size)
    try:
        program = torch.onnx.export(model, (example,), input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                                    dynamo=True, external_data=False, verbose=False)
    except Exception as exc:  # the exporter raises many types for unsupported graphs
        raise NetcompressError(f"could not export {spec.arch} to ONNX ({type(exc).__name__}: {exc})") from exc
    proto = program.model_proto
    _set_spec(proto, spec)
    return atomic_write(Path(path), lambda tmp: onnx.save_model(proto, str(tmp)))


class CalibrationReader:
    """ONNX Runtime CalibrationDataReader over `n` images of a split, spread evenly over its sorted files
    (Food-11 files are sorted by label, so every class is represented)."""

    def __init__(self, split: Split, n: int, input_name: str = "input", batch_size: int = 32):
        from .bit_allocation import calibration_images

        images = calibration_images(split, n).numpy()
        self.batches = iter([{input_name: images[i:i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self.batches, None)


def quantize_onnx_int8(fp32_path: str | Path, out_path: str | Path, calibration: Split, n: int = 256,
                       method: str = "minmax", per_channel: bool = True) -> Path:
    """Static int8 QDQ model: per-channel int8 weights, uint8 activations (the U8S8 pair that ONNX
    Runtime's x86 kernels are fastest with), activation ranges from `n` calibration images."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise NetcompressError(f"calibration method {method!r}: choose one of {', '.join(methods)}")
    spec = read_onnx_spec(fp32_path)
    reader = type("Reader", (CalibrationReader, CalibrationDataReader), {})(calibration, n)
    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
        proto = onnx.load(str(out))
    if spec is not None:
        spec.info = {**spec.info, "onnx_int8": {"calibration_images": n, "method": method, "per_channel": per_channel}}
        _set_spec(proto, spec)
    return atomic_write(Path(out_path), lambda t: onnx.save_model(proto, str(t)))


class OnnxModel(nn.Module):
    """An ONNX Runtime session behind the nn.Module call interface, so `predict_logits` and
    `latency_ms` run it like any model (tensors in, tensors out, on the CPU)."""

    def __init__(self, path: str | Path, threads: int = 0):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise NetcompressError(f"{path}: ONNX Runtime cannot load it ({exc}); re-export it with "
                                   "`netcompress export MODEL --out FILE.onnx`") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.path = Path(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().cpu().float().contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def read_onnx_spec(path: str | Path) -> ModelSpec | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    raw = {p.key: p.value for p in proto.metadata_props}.get(META_KEY)
    return ModelSpec(**json.loads(raw)) if raw else None


def load_onnx(path: str | Path, threads: int = 0) -> tuple[OnnxModel, ModelSpec]:
    """(ORT-backed model, spec); a file from elsewhere gets a spec guessed from its input and output shapes."""
    path = Path(path)
    if not path.exists():
        raise NetcompressError(f"ONNX file {path} does not exist")
    model = OnnxModel(path, threads)
    raw = model.session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw:
        return model, ModelSpec(**json.loads(raw))
    shape_in, shape_out = model.session.get_inputs()[0].shape, model.session.get_outputs()[0].shape
    if not (len(shape_in) == 4 and isinstance(shape_in[2], int) and isinstance(shape_out[-1], int)):
        raise NetcompressError(f"{path}: not a netcompress export and its input {shape_in} / output {shape_out} "
                               "are not a fixed-size image classifier's; pass a file from `netcompress export`")
    return model, ModelSpec("onnx", {}, [str(i) for i in range(shape_out[-1])], shape_in[2],
                            info={"imported_from": path.name})


def _set_spec(proto, spec: ModelSpec) -> None:
    for p in list(proto.metadata_props):
        if p.key == META_KEY:
            proto.metadata_props.remove(p)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(asdict(spec))
