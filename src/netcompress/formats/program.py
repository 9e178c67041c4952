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

from ..errors import NetcompressError
from ..files import atomic_write, atomic_write_text
from ..spec import ModelSpec
from .model_file import spec_from_dict


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
