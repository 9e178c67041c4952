"""LiteRT (TensorFlow Lite) files (.tflite): export through litert-torch (fp32, or full-integer int8 by PT2E static
quantization calibrated on training images) and loading with LiteRT's interpreter (XNNPACK on the CPU).

A .tflite is what LiteRT runs on Android, iOS, Linux boards and microcontrollers
(`ai_edge_litert.interpreter.Interpreter("m.tflite")`) with no netcompress installed. The int8 file is integer
end to end, its input and output included: a caller quantizes the 0..1 image with the input's scale and zero
point and dequantizes the logits with the output's, as `LiteRTModel` does. The model's spec sits beside it in
`m.json` (see program.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..data.split import split_of
from ..errors import NetcompressError
from ..spec import attach, copy_model
from .program import (FixedBatchProgram, calibrated, checked_export, guessed_spec, read_program_spec,
                      write_program)

INSTALL = "pip install 'netcompress[litert]'"


def export_litert(model: nn.Module, path: str | Path, *, int8: bool = False, calibration=None,
                  calibration_images: int = 256, batch: int = 1) -> Path:
    """Write `model` as a LiteRT flatbuffer: input [batch, C, S, S] in 0..1 (int8: quantized, see the module's
    docstring), output the logits; its spec goes to the JSON beside it. The batch is fixed, as LiteRT files are.

    int8=True: PT2E static quantization with LiteRT's quantizer (per-channel symmetric int8 weights, int8
    activations), ranges calibrated on `calibration_images` training images of `calibration` (a dataset folder,
    Split or torch Dataset), converted to integer kernels.
    """
    path, spec = checked_export(model, path, ".tflite", "LiteRT files", int8, calibration, batch)
    litert_torch = _converter()  # a clear message when litert-torch is missing, before minutes of work
    net, config = copy_model(model).eval().cpu(), None
    quiet, litert_torch.progress.console.quiet = litert_torch.progress.console.quiet, True
    try:
        if int8:
            net, config = _quantized(net, spec.input_shape(2), split_of(calibration, "training"), calibration_images)
        program = bytes(litert_torch.convert(net, (torch.rand(spec.input_shape(batch)),),
                                             quant_config=config).model_content())
    except NetcompressError:
        raise
    except Exception as exc:  # torch.export and the converter raise many types for unsupported graphs
        raise NetcompressError(f"could not export {spec.arch or spec.info.module} to LiteRT "
                               f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]})") from exc
    finally:
        litert_torch.progress.console.quiet = quiet
    settings = {"calibration_images": calibration_images, "quantizer": "litert-pt2e"} if int8 else {}
    spec = spec.with_export("litert_int8" if int8 else "litert",
                            {"input_size": spec.input_size, "batch": batch, **settings})
    return write_program(path, program, spec)


def _converter():
    try:
        import litert_torch
    except ImportError:
        raise NetcompressError(f"LiteRT export needs the litert-torch package: {INSTALL}") from None
    return litert_torch


def _quantized(net: nn.Module, shape: tuple, calibration, n: int):
    """`net` with PT2E int8 quantize/dequantize pairs from LiteRT's quantizer, ranges observed on `n` images, and
    the converter's setting that turns the pairs into integer kernels."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return (convert_pt2e(calibrated(net, shape, quantizer, calibration, n), fold_quantize=False),
            QuantConfig(pt2e_quantizer=quantizer))


class Interpreter:
    """LiteRT's interpreter on one file with float tensors in and out: an integer file's input is quantized and
    its output dequantized with their own scales."""

    def __init__(self, path: str | Path, threads: int = 1):
        try:
            from ai_edge_litert.interpreter import Interpreter as LiteRTInterpreter
        except ImportError:
            raise NetcompressError(f"LiteRT files need the ai-edge-litert package: {INSTALL}") from None
        try:
            self.interpreter = LiteRTInterpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # a damaged or foreign flatbuffer
            raise NetcompressError(f"{path}: LiteRT cannot load it ({str(exc).strip()[:200]}); re-export it with "
                                   "`netcompress export MODEL --out FILE.tflite`") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    @property
    def input_shape(self) -> list[int]:
        return [int(d) for d in self.input["shape"]]

    @property
    def output_shape(self) -> list[int]:
        return [int(d) for d in self.output["shape"]]

    def feed(self, x: np.ndarray) -> np.ndarray:
        """The array the file's input takes: `x` as it is, or quantized to the input's integer type."""
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return np.ascontiguousarray(x, dtype=np.float32)
        scale, zero = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)

    def invoke(self, fed: np.ndarray) -> np.ndarray:
        """Run one batch already `feed`-ed; the raw output."""
        self.interpreter.set_tensor(self.input["index"], fed)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.invoke(self.feed(x))
        if self.output["dtype"] == np.float32:
            return out
        scale, zero = self.output["quantization"]
        return (out.astype(np.float32) - zero) * scale


class LiteRTModel(FixedBatchProgram):
    """A LiteRT file as a module (see FixedBatchProgram)."""

    def __init__(self, path: Path, batch: int, interpreter: Interpreter | None = None):
        super().__init__(path, batch)
        self.interpreter = interpreter or Interpreter(path)

    def run_batch(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.interpreter(x.numpy()).copy())


def load_litert(path: str | Path, *, verify: bool = True) -> LiteRTModel:
    """A LiteRT-backed module with the spec from the JSON beside it, or one guessed from the file's input and output
    shapes when there is none. verify: check the checksum of a netcompress export."""
    path = Path(path)
    if not path.is_file():
        raise NetcompressError(f"LiteRT file {path} does not exist")
    spec = read_program_spec(path, verify)
    interpreter = Interpreter(path)
    if spec is None:
        spec = guessed_spec(path, interpreter.input_shape, interpreter.output_shape, "litert")
    return attach(LiteRTModel(path, interpreter.input_shape[0], interpreter), spec)
