"""ONNX files: export (fp32, or int8 QDQ for ONNX Runtime calibrated on training images) and loading.

`torch.ao.quantization` is deprecated and PT2E moved to torchao; ONNX Runtime runs the exported
graph several times faster than eager PyTorch at batch 1 on a CPU, so the fp32 and int8 deployment
path is an .onnx file. Every exported file carries the model's JSON spec in its metadata
(`netcompress`), so evaluation knows the class names and input size.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from ..data.split import Split, calibration_images, split_of
from ..errors import NetcompressError
from ..files import atomic_write
from ..spec import ModelSpec, attach, copy_model, spec_of
from .model_file import spec_from_dict

META_KEY = "netcompress"
CHECKSUM_KEY = "netcompress_checksum"


def export_onnx(model: nn.Module, path: str | Path, *, int8: bool = False, calibration=None,
                calibration_images: int = 256, calibration_method: str = "minmax", quant_format: str = "qdq",
                reduce_range: bool = False, dynamic_size: bool = False, opset: int = 20) -> Path:
    """Write `model` as .onnx: input "input" [N, C, S, S] in 0..1 with a dynamic batch, output "logits".

    dynamic_size=True makes height and width dynamic too (for nets that pool globally); the file's
    spec records the size the model was trained at. int8=True: static int8 for ONNX Runtime, activation
    ranges calibrated on `calibration_images` training images of `calibration` (a dataset folder, Split or
    torch Dataset); quant_format "qdq" (QuantizeLinear/DequantizeLinear pairs around float operators, which
    ONNX Runtime fuses) or "qoperator" (QLinearConv and other int8 operators written out): which is faster
    depends on the model and the CPU, so `deploy` measures both. reduce_range: 7-bit weights. On an x86 CPU
    without VNNI instructions ONNX Runtime multiplies uint8 by int8 in pairs summed into 16 bits, which
    saturates with full-range weights (an EfficientNet-Lite0 student lost 8.5 points; with 7-bit weights 0.1);
    with VNNI there is no such overflow and 8 bits are more precise.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise NetcompressError(f"{path}: ONNX files end in .onnx")
    if not int8:
        return _export_fp32(model, path, opset, dynamic_size)
    if calibration is None:
        raise NetcompressError("int8 export needs calibration data: its training images set the activation ranges")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = _export_fp32(model, Path(tmp) / "fp32.onnx", opset, dynamic_size)
        return quantize_onnx_int8(fp32, path, split_of(calibration, "training"), calibration_images,
                                  method=calibration_method, quant_format=quant_format, reduce_range=reduce_range)


def _export_fp32(model: nn.Module, path: Path, opset: int, dynamic_size: bool) -> Path:
    import onnx

    spec = spec_of(model)
    if not spec.input_size:
        raise NetcompressError("the model's input size is unknown: fit it on data first, or save it with input_size=")
    model = copy_model(model).eval().cpu()
    example = torch.rand(spec.input_shape(2))
    dims = {0: torch.export.Dim("batch")}
    if dynamic_size:
        dims.update({2: torch.export.Dim("height", min=8), 3: torch.export.Dim("width", min=8)})
    try:
        program = torch.onnx.export(model, (example,), input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=(dims,), opset_version=opset,
                                    dynamo=True, external_data=False, verbose=False)
    except Exception as exc:  # the exporter raises many types for unsupported graphs
        raise NetcompressError(f"could not export {spec.arch or spec.info.module} to ONNX ({type(exc).__name__}: {exc})") from exc
    proto = program.model_proto
    _set_spec(proto, spec.with_export("onnx", {"input_size": spec.input_size, "dynamic_size": dynamic_size}))
    return atomic_write(Path(path), lambda tmp: onnx.save_model(proto, str(tmp)))


class CalibrationReader:
    """ONNX Runtime CalibrationDataReader over `n` images of a split, spread evenly over its sorted files
    (Food-11 files are sorted by label, so every class is represented)."""

    def __init__(self, split: Split, n: int, input_name: str = "input", batch_size: int = 32):
        images = calibration_images(split, n).numpy()
        self.batches = iter([{input_name: images[i:i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self.batches, None)


def quantize_onnx_int8(fp32_path: str | Path, out_path: str | Path, calibration: Split, n: int = 256,
                       method: str = "minmax", per_channel: bool = True, quant_format: str = "qdq",
                       reduce_range: bool = False) -> Path:
    """Static int8 model (QDQ or QOperator, see `export_onnx`): per-channel int8 weights, uint8 activations (the
    U8S8 pair that ONNX Runtime's x86 kernels are fastest with), activation ranges from `n` calibration images."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    if method not in methods:
        raise NetcompressError(f"calibration method {method!r}: choose one of {', '.join(methods)}")
    if quant_format not in formats:
        raise NetcompressError(f"quant_format {quant_format!r}: choose one of {', '.join(formats)}")
    spec = read_onnx_spec(fp32_path)
    reader = type("Reader", (CalibrationReader, CalibrationDataReader), {})(calibration, n)
    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        quantize_static(str(pre), str(out), reader, quant_format=formats[quant_format], per_channel=per_channel,
                        reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
        proto = onnx.load(str(out))
    if spec is not None:
        _set_spec(proto, spec.with_export("onnx_int8", {"calibration_images": n, "method": method,
                                                       "per_channel": per_channel, "quant_format": quant_format,
                                                       "reduce_range": reduce_range}))
    return atomic_write(Path(out_path), lambda t: onnx.save_model(proto, str(t)))


def ort_session(path: str | Path, threads: int, *, spinning: bool = True):
    """An ONNX Runtime CPU session with the settings that serve one image fastest: `threads` intra-op threads
    (0: ONNX Runtime's default, every core), sequential execution, every graph optimization (EXTENDED made int8
    slower than none); spinning=False keeps idle threads from burning a core (what latency measurements use)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise NetcompressError(f"{path}: ONNX Runtime cannot load it ({exc}); re-export it with "
                               "`netcompress export MODEL --out FILE.onnx`") from exc


class OnnxModel(nn.Module):
    """An ONNX Runtime session behind the nn.Module call interface, so `predict` and `evaluate` run it like any
    model (tensors in, tensors out, on the CPU). It has no torch layers: `graph_file` says so (see
    `formats.load.graph_file`), and the runtimes that read .onnx files run the file itself."""

    def __init__(self, path: str | Path, threads: int = 0):  # 0: ONNX Runtime's default (every core)
        super().__init__()
        self.session = ort_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.graph_file = Path(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().cpu().float().contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def layer_graph(layer: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """One layer of a latency table as a one-node ONNX graph, written with onnx.helper (an exporter run per layer
    would cost more than the measurement): nn.Identity, nn.Linear (Gemm), or nn.Sequential(Conv2d, ReLU) (Conv+Relu)
    with numeric padding, run on `x`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def arrays(module: nn.Module) -> list:
        return [numpy_helper.from_array(module.weight.detach().numpy(), "w"),
                numpy_helper.from_array(module.bias.detach().numpy(), "b")]

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if isinstance(layer, nn.Identity):
        nodes, weights = [helper.make_node("Identity", ["x"], ["y"])], []
    elif isinstance(layer, nn.Linear):
        nodes, weights = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], arrays(layer)
    else:
        conv = layer[0]
        ph, pw = conv.padding
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=list(conv.kernel_size),
                                  strides=list(conv.stride), pads=[ph, pw, ph, pw], dilations=list(conv.dilation),
                                  group=conv.groups),
                 helper.make_node("Relu", ["c"], ["y"])]
        weights = arrays(conv)
    graph = helper.make_graph(nodes, "layer", inputs, outputs, weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8  # what opset 17 needs; runtimes refuse IR versions newer than they know
    onnx.save_model(proto, str(path))
    return path


def read_onnx_spec(path: str | Path) -> ModelSpec | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    raw = {p.key: p.value for p in proto.metadata_props}.get(META_KEY)
    return spec_from_dict(json.loads(raw), str(path)) if raw else None


def load_onnx(path: str | Path, threads: int | None = None, *, verify: bool = True) -> OnnxModel:
    """An ONNX Runtime-backed module with its spec; a file from elsewhere gets one guessed from its input and
    output shapes. verify: check the checksum of a netcompress export. threads: ONNX Runtime's intra-op
    threads (default: as many as torch uses)."""
    path = Path(path)
    if not path.is_file():
        raise NetcompressError(f"ONNX file {path} does not exist")
    model = OnnxModel(path, torch.get_num_threads() if threads is None else threads)
    try:
        props = dict(model.session.get_modelmeta().custom_metadata_map)
        raw = props.get(META_KEY)
        meta = json.loads(raw) if raw else None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        raise NetcompressError(f"{path}: its netcompress metadata is not readable ({type(exc).__name__}); the file is "
                               "damaged, re-export it") from None
    if meta is not None:
        spec = spec_from_dict(meta, str(path))
        if verify and CHECKSUM_KEY in props and _checksum(raw, _graph(path)) != props[CHECKSUM_KEY]:
            raise NetcompressError(f"{path}: checksum mismatch: the file is damaged or was edited; re-export it, or "
                                   "load it anyway with --no-verify (verify=False)")
        return attach(model, spec)
    shape_in, shape_out = model.session.get_inputs()[0].shape, model.session.get_outputs()[0].shape
    if not (len(shape_in) == 4 and isinstance(shape_in[2], int) and isinstance(shape_out[-1], int)):
        raise NetcompressError(f"{path}: not a netcompress export and its input {shape_in} / output {shape_out} "
                               "are not a fixed-size image classifier's; pass a file from `netcompress export`")
    return attach(model, ModelSpec(None, {}, [str(i) for i in range(shape_out[-1])], shape_in[2],
                                   info={"imported_from": path.name, "module": "onnx"}))


def _graph(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own types for damaged files
        raise NetcompressError(f"{path}: not a readable ONNX file ({type(exc).__name__}); re-export it") from None


def _checksum(spec_json: str, proto) -> str:
    """SHA-256 of the spec and the graph (nodes and weights): what a netcompress export vouches for."""
    return hashlib.sha256(spec_json.encode() + proto.graph.SerializeToString(deterministic=True)).hexdigest()


def _set_spec(proto, spec: ModelSpec) -> None:
    for p in list(proto.metadata_props):
        if p.key in (META_KEY, CHECKSUM_KEY):
            proto.metadata_props.remove(p)
    spec_json = json.dumps(spec.to_dict())
    for key, value in ((META_KEY, spec_json), (CHECKSUM_KEY, _checksum(spec_json, proto))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
