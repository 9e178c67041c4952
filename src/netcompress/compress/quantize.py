"""Quantization for storage: a model's tensors written with a codec into a compact `.ncq` file.

Quantization here buys bytes on disk, not speed (the int8 runtime is ONNX Runtime, see
formats/onnx.py). `store(model, QuantConfig(...))` returns a `QuantizedModel`: the file's bytes,
ready to `.save()` or `.decode()` back into an fp32 module that computes what the file holds.
With `budget`, each tensor gets its own width by measured sensitivity (bit_allocation.py). The
public verb `quantize` (schedule/qat.py) first adapts the weights to the codec when asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import NetcompressError
from ..files import atomic_write
from ..formats import ncq
from .bit_allocation import allocate_bits
from .quant_config import QuantConfig, encode_model


@dataclass(frozen=True)
class QuantizedModel:
    """A model stored with a codec: the .ncq file's bytes and the config that made them."""

    data: bytes = field(repr=False)
    config: QuantConfig

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def save(self, path: str | Path) -> Path:
        """Write the .ncq file (atomically); it loads back with `netcompress.load`."""
        path = Path(path)
        if path.suffix != ".ncq":
            raise NetcompressError(f"{path}: quantized files end in .ncq (loaders pick the format by suffix)")
        return atomic_write(path, lambda tmp: Path(tmp).write_bytes(self.data))

    def decode(self, model: nn.Module | None = None) -> nn.Module:
        """The fp32 module the file holds (a user's own module needs a fresh instance as `model`)."""
        return ncq.decode_model(self.data, "<quantized model>", model)


def quant_config(config: QuantConfig | None, overrides: dict) -> QuantConfig:
    """`config` with keyword overrides (or a config made of them): quantize(m, codec="kbit", bits=4)."""
    try:
        return replace(config, **overrides) if config is not None else QuantConfig(**overrides)
    except TypeError as exc:
        raise NetcompressError(f"quantize: {exc}") from exc


def store(model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor | None = None, *,
          progress: bool = True) -> QuantizedModel:
    """`model` stored with `cfg`'s codec (left as it is); with `cfg.budget` (and no `tensor_bits` yet), each tensor's
    width is chosen first from the sensitivity measured on `calibration` images."""
    if cfg.budget is not None and cfg.tensor_bits is None:
        if calibration is None:
            raise NetcompressError("budget chooses each tensor's bits from their measured sensitivity: pass training "
                                   "data (data=)")
        cfg = allocate_bits(model, cfg, calibration, cfg.budget, progress)
    return QuantizedModel(encode_model(model, cfg), cfg)
