"""Quantization for storage: a model's tensors written with a codec into a compact `.ncq` file.

Quantization here buys bytes on disk, not speed (the int8 runtime is ONNX Runtime, see
formats/onnx.py). `quantize(model, QuantConfig(...))` returns a `QuantizedModel`: the file's bytes,
ready to `.save()` or `.decode()` back into an fp32 module that computes what the file holds.
With `budget`, each tensor gets its own width by measured sensitivity (bit_allocation.py); with
`finetune_epochs`, the weights first adapt to the codec (qat.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch.nn as nn

from ..data.split import calibration_images, split_of
from ..errors import NetcompressError
from ..files import atomic_write
from ..formats import ncq
from .bit_allocation import allocate_bits
from .qat import finetune_quantized
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


def quantize(model: nn.Module, config: QuantConfig | None = None, data=None, *, progress: bool = True,
             **overrides) -> QuantizedModel:
    """Store `model` with a codec; `model` is left as it is.

    data: training images (a dataset folder, Split or torch Dataset), needed for `budget` and
    `finetune_epochs`. Keyword overrides replace config fields: quantize(m, codec="kbit", bits=4).
    """
    try:
        cfg = replace(config or QuantConfig(), **overrides)
    except TypeError as exc:
        raise NetcompressError(f"quantize: {exc}") from exc
    if cfg.needs_data and data is None:
        raise NetcompressError("budget and finetune_epochs need training data: pass data=")
    stored = model
    if cfg.needs_data:
        train = split_of(data, "training")
        if cfg.budget is not None:
            cfg = allocate_bits(model, cfg, calibration_images(train, cfg.calibration), cfg.budget, progress)
        if cfg.finetune_epochs:
            stored = finetune_quantized(model, cfg, train, progress=progress)
    return QuantizedModel(encode_model(stored, cfg), cfg)
