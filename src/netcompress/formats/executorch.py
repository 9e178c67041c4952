"""ExecuTorch programs (.pte) lowered to the XNNPACK delegate: export (fp32, or int8 by PT2E static quantization
calibrated on training images) and loading.

A .pte is what ExecuTorch runs on phones and boards (`executorch.runtime.Runtime.get().load_program("m.pte")`),
with no netcompress installed. XNNPACK is its fast CPU backend for convolutions, on x86 and Arm alike. The
model's spec sits beside it in `m.json` (see program.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..data.split import split_of
from ..errors import NetcompressError
from ..spec import attach, copy_model
from .program import (FixedBatchProgram, calibrated, checked_export, guessed_spec, read_program_spec,
                      write_program)

INSTALL = "pip install 'netcompress[executorch]'"


def _runtime():
    try:
        from executorch.runtime import Runtime
    except ImportError:
        raise NetcompressError(f"ExecuTorch programs need the executorch package: {INSTALL}") from None
    return Runtime.get()


def export_executorch(model: nn.Module, path: str | Path, *, int8: bool = False, calibration=None,
                      calibration_images: int = 256, batch: int = 1) -> Path:
    """Write `model` as an ExecuTorch program lowered to XNNPACK: input [batch, C, S, S] in 0..1, output the
    logits; its spec goes to `spec_file`.

    The batch is fixed: with a dynamic one, ExecuTorch 1.5's XNNPACK lowering under torch 2.14 plans its tensors
    for at most 15 images, whatever bound the export was given, and larger batches fail at run time.

    int8=True: PT2E static quantization with XNNPACK's quantizer (per-channel symmetric int8 weights, int8
    activations), ranges calibrated on `calibration_images` training images of `calibration` (a dataset folder,
    Split or torch Dataset).
    """
    path, spec = checked_export(model, path, ".pte", "ExecuTorch programs", int8, calibration, batch)
    _runtime()  # a clear message when executorch is missing, before minutes of work
    net = copy_model(model).eval().cpu()
    try:
        if int8:
            net = _quantized(net, spec.input_shape(2), split_of(calibration, "training"), calibration_images)
        program = _lowered(net, torch.rand(spec.input_shape(batch)))
    except NetcompressError:
        raise
    except Exception as exc:  # torch.export and the lowering raise many types for unsupported graphs
        raise NetcompressError(f"could not export {spec.arch or spec.info.module} to ExecuTorch "
                               f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]})") from exc
    settings = {"calibration_images": calibration_images, "quantizer": "xnnpack-pt2e"} if int8 else {}
    spec = spec.with_export("executorch_int8" if int8 else "executorch",
                            {"input_size": spec.input_size, "batch": batch, "delegate": "xnnpack", **settings})
    return write_program(path, program.buffer, spec)


def _quantized(net: nn.Module, shape: tuple, calibration, n: int) -> nn.Module:
    """`net` with PT2E int8 quantize/dequantize pairs from XNNPACK's quantizer, ranges observed on `n` images."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return convert_pt2e(calibrated(net, shape, quantizer, calibration, n))


def _lowered(net: nn.Module, example: torch.Tensor):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(net, (example,))
    return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()


def set_threads(threads: int) -> None:
    """XNNPACK's thread pool size, which ExecuTorch shares between every program in the process (0: leave it)."""
    if threads > 0:
        from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

        if _threadpool_get_thread_count() != threads:
            _unsafe_reset_threadpool(threads)


def load_method(path: str | Path):
    """The program's `forward`, ready to execute, with a NetcompressError for what ExecuTorch cannot load."""
    runtime = _runtime()
    try:
        return runtime.load_program(Path(path)).load_method("forward")
    except Exception as exc:  # the runtime raises RuntimeError/ValueError for damaged programs
        raise NetcompressError(f"{path}: ExecuTorch cannot load it ({type(exc).__name__}); re-export it with "
                               "`netcompress export MODEL --out FILE.pte`") from None


class ExecuTorchModel(FixedBatchProgram):
    """An ExecuTorch program as a module (see FixedBatchProgram)."""

    def __init__(self, path: Path, batch: int):
        super().__init__(path, batch)
        self.method = load_method(path)

    def run_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.execute([x])[0]


def load_executorch(path: str | Path, *, verify: bool = True) -> ExecuTorchModel:
    """An ExecuTorch-backed module with the spec from the JSON beside it, or one guessed from the program's input
    and output shapes when there is none. verify: check the checksum of a netcompress export."""
    path = Path(path)
    if not path.is_file():
        raise NetcompressError(f"ExecuTorch program {path} does not exist")
    spec = read_program_spec(path, verify)
    if spec is None:
        meta = load_method(path).metadata
        shape_in = list(meta.input_tensor_meta(0).sizes())
        spec = guessed_spec(path, shape_in, list(meta.output_tensor_meta(0).sizes()), "executorch")
        return attach(ExecuTorchModel(path, shape_in[0]), spec)
    settings = spec.info.exported.get("executorch_int8", spec.info.exported.get("executorch", {}))
    return attach(ExecuTorchModel(path, int(settings.get("batch", 1))), spec)
