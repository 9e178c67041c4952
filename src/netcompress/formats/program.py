"""Deployment programs with their spec in a JSON beside them, run at a fixed batch: ExecuTorch's .pte and LiteRT's
.tflite.

Neither format keeps free-form metadata its runtime hands back, so the model's spec (classes, input size,
preprocessing) and a SHA-256 of spec and program sit in a JSON file of the same stem (`m.json` beside `m.pte`),
which ships with the program. Both lower a graph whose batch is fixed at export; `FixedBatchProgram` runs any
number of images through it in chunks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from ..data.split import calibration_images
from ..errors import NetcompressError
from ..files import atomic_write, atomic_write_text
from ..spec import ModelSpec, spec_of
from .model_file import spec_from_dict


def checked_export(model: nn.Module, path: str | Path, suffix: str, what: str, int8: bool, calibration,
                   batch: int) -> tuple[Path, ModelSpec]:
    """The path and spec of a program export, or a NetcompressError for what cannot be exported."""
    path = Path(path)
    if path.suffix != suffix:
        raise NetcompressError(f"{path}: {what} end in {suffix}")
    if int8 and calibration is None:
        raise NetcompressError("int8 export needs calibration data: its training images set the activation ranges")
    if not 1 <= batch <= 4096:
        raise NetcompressError(f"batch = {batch}: use 1..4096")
    spec = spec_of(model)
    if not spec.input_size:
        raise NetcompressError("the model's input size is unknown: fit it on data first, or save it with input_size=")
    return path, spec


def calibrated(net: nn.Module, shape: tuple, quantizer, calibration, n: int) -> nn.Module:
    """`net` exported with a dynamic batch and PT2E observers from `quantizer`, run on `n` images of `calibration`
    in batches (the program's batch is fixed later, when it is lowered): ready for `convert_pt2e`."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    prepared = prepare_pt2e(torch.export.export(net, (torch.rand(shape),), dynamic_shapes=shapes).module(), quantizer)
    images = calibration_images(calibration, n)
    with torch.no_grad():
        for i in range(0, len(images), 32):
            prepared(images[i:i + 32])
    return prepared


def spec_file(path: str | Path) -> Path:
    """The JSON beside a program that holds its spec and checksum."""
    return Path(path).with_suffix(".json")


def write_program(path: Path, program: bytes, spec: ModelSpec) -> Path:
    """Write the program and its spec file, each atomically."""
    spec_json = json.dumps(spec.to_dict())
    atomic_write(path, lambda tmp: tmp.write_bytes(program))
    atomic_write_text(spec_file(path), json.dumps({"netcompress": spec.to_dict(), "program": path.name,
                                                   "checksum": _checksum(spec_json, program)}, indent=1))
    return path


def read_program_spec(path: Path, verify: bool) -> ModelSpec | None:
    """The spec from the JSON beside the program (None when there is none: a program made elsewhere); verify: the
    checksum of a netcompress export must match."""
    if not spec_file(path).is_file():
        return None
    try:
        sidecar = json.loads(spec_file(path).read_text(encoding="utf-8"))
        meta, stored = sidecar["netcompress"], sidecar.get("checksum")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise NetcompressError(f"{spec_file(path)}: not readable ({type(exc).__name__}); it is damaged, re-export "
                               f"{path.name}") from None
    spec = spec_from_dict(meta, str(spec_file(path)))
    if verify and stored is not None and _checksum(json.dumps(meta), path.read_bytes()) != stored:
        raise NetcompressError(f"{path}: checksum mismatch: the program or {spec_file(path).name} is damaged or was "
                               "edited; re-export it, or load it anyway with --no-verify (verify=False)")
    return spec


def _checksum(spec_json: str, program: bytes) -> str:
    """SHA-256 of the spec and the program: what a netcompress export vouches for."""
    return hashlib.sha256(spec_json.encode() + b"\0" + program).hexdigest()


class FixedBatchProgram(nn.Module):
    """A program behind the nn.Module call interface, so `predict` and `evaluate` run it like any model (tensors
    in, tensors out, on the CPU, in chunks of its fixed `batch`, the last one padded); `graph_file` marks it as a
    file only the runtimes that read it run. Subclasses implement `run_batch`."""

    def __init__(self, path: Path, batch: int):
        super().__init__()
        self.graph_file = Path(path)
        self.batch = batch

    def run_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of exactly `batch` images."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for chunk in x.detach().cpu().float().split(self.batch):
            padded = torch.cat([chunk, chunk.new_zeros((self.batch - len(chunk), *chunk.shape[1:]))])
            outputs.append(self.run_batch(padded.contiguous())[:len(chunk)].clone())
        return torch.cat(outputs)


def guessed_spec(path: Path, shape_in: list[int], shape_out: list[int], module: str) -> ModelSpec:
    """The spec of a program made elsewhere, from its input and output shapes: an image classifier's or an error."""
    if len(shape_in) != 4 or shape_in[2] != shape_in[3] or len(shape_out) != 2:
        raise NetcompressError(f"{path}: not a netcompress export (no {spec_file(path).name} beside it) and its "
                               f"input {shape_in} / output {shape_out} are not an image classifier's")
    return ModelSpec(None, {}, [str(i) for i in range(shape_out[1])], shape_in[2],
                     info={"imported_from": path.name, "module": module}, channels=shape_in[1])
