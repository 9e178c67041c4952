"""How a model is stored: the quantization config, and the .ncq bytes of a model under it."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..errors import NetcompressError
from ..formats import ncq
from ..spec import spec_of
from ..version import __version__
from .codecs import encode_tensor, fold_batchnorm, get_codec, list_codecs, roundtrip_tensor

STORAGE_FIELDS = ("codec", "bits", "entropy", "fold_bn", "min_elements", "tensor_bits")


@dataclass(frozen=True)
class QuantConfig:
    """How to store a model.

    codec: a registered codec (see `list_codecs()`): fp16 | int8-minmax (the course's, every float
    tensor) | int8-channel (= kbit, 8 bits) | kbit (per-channel affine, MSE-searched range) |
    kmeans (weight sharing, Deep Compression). Tensors with fewer than 2 dims (biases, BatchNorm
    vectors: 2.5% of StudentNet's numbers) or under `min_elements` stay fp16. Measured on
    StudentNet at 4 bits: keeping the four tensors under 1,024 elements (first conv, first
    depthwise and pointwise convs) in fp16 cost 2.1 kB (+1.5%) and halved the change in the logits
    (relative L2 0.33 -> 0.18). `fold_bn` folds each BatchNorm into the conv before it, leaving
    constant (4-byte) BN tensors (None: the codec's default; see `folds_batchnorm`). Both are
    resolved where they are used, never stored resolved, so `dataclasses.replace(cfg, codec=...)` never
    carries one codec's default over to another. `tensor_bits` overrides `bits` per
    tensor name. `budget` (bytes) chooses `tensor_bits` from the sensitivity measured on
    `calibration` training images; `finetune_epochs` > 0 trains through the codec first
    (distilled from the fp32 model, AdamW at `finetune_lr`, cosine). Both need training data.
    """

    codec: str = "int8-minmax"
    bits: int | None = None  # None: the codec's own width (its fixed width, else 8); see `width`
    entropy: bool = False
    fold_bn: bool | None = None
    min_elements: int = 1024
    tensor_bits: dict | None = None
    budget: int | None = None
    calibration: int = 256
    finetune_epochs: int = 0
    finetune_lr: float = 3e-4
    finetune_average: float = 0.0  # > 0: QAT keeps a moving average of the weights over about this many epochs

    def __post_init__(self):
        codec = get_codec(self.codec)
        if self.bits is not None and codec.fixed_bits is not None and self.bits not in (codec.fixed_bits, 8):
            raise NetcompressError(f"bits = {self.bits}: codec {self.codec} is always {codec.fixed_bits}-bit; "
                                   "use codec kbit or kmeans for other widths")
        if codec.fixed_bits is None:
            for b in [self.width, *(self.tensor_bits or {}).values()]:
                if not 2 <= b <= 8:
                    raise NetcompressError(f"bits = {b}: codec {self.codec} takes 2 to 8 bits")
        if (self.tensor_bits or self.budget is not None) and codec.fixed_bits is not None:
            raise NetcompressError(f"per-tensor bits (budget) need a codec of variable width "
                                   f"({', '.join(n for n in list_codecs() if get_codec(n).fixed_bits is None)}), "
                                   f"not {self.codec}")
        if self.budget is not None and self.budget < 1:
            raise NetcompressError(f"budget = {self.budget}: a file size in bytes must be positive")
        if self.calibration < 1:
            raise NetcompressError(f"calibration = {self.calibration}: use at least 1 image (a few hundred is typical)")
        if self.finetune_epochs < 0 or not self.finetune_lr > 0 or not 0 <= self.finetune_average < float("inf"):
            raise NetcompressError(f"finetune_epochs = {self.finetune_epochs}, finetune_lr = {self.finetune_lr}, "
                                   f"finetune_average = {self.finetune_average}: epochs must be >= 0, the learning "
                                   "rate > 0 and the averaged epochs >= 0")
        if self.min_elements < 0:
            raise NetcompressError(f"min_elements = {self.min_elements} must be >= 0")

    @property
    def width(self) -> int:
        """Bits per code: the codec's fixed width, else `bits` (8 when not given)."""
        return get_codec(self.codec).fixed_bits or self.bits or 8

    @property
    def folds_batchnorm(self) -> bool:
        return get_codec(self.codec).fold_bn if self.fold_bn is None else self.fold_bn

    @property
    def needs_data(self) -> bool:
        return self.budget is not None or self.finetune_epochs > 0

    def bits_for(self, name: str) -> int:
        return (self.tensor_bits or {}).get(name, self.width)

    def encode(self, name: str, t: torch.Tensor) -> bytes:
        """The record of state_dict entry `name`."""
        return encode_tensor(t, self.codec, self.bits_for(name), self.min_elements)

    def roundtrip(self, name: str, t: torch.Tensor, bits: int | None = None) -> tuple[torch.Tensor, int]:
        """(tensor as the file holds it, record bytes), at `bits` or the configured width."""
        return roundtrip_tensor(t, self.codec, bits or self.bits_for(name), self.min_elements)

    def quantizes(self, name: str, t: torch.Tensor) -> bool:
        """Does the codec itself store this tensor (rather than raw, constant or fp16)?"""
        return self.encode(name, t)[0] == get_codec(self.codec).kind

    def storage(self) -> dict:
        """The fields a .ncq file records: enough to read it, nothing about how it was chosen."""
        resolved = {**asdict(self), "bits": self.width, "fold_bn": self.folds_batchnorm}
        return {k: v for k, v in resolved.items() if k in STORAGE_FIELDS}


def prepared(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """A copy of `model` in eval mode, BatchNorm folded when the config asks: what the codec stores."""
    copy_ = copy.deepcopy(model).cpu().eval()
    if cfg.folds_batchnorm:
        spec, seeded = spec_of(model), torch.Generator().manual_seed(0)
        example = (torch.rand(1, spec.channels, spec.input_size, spec.input_size, generator=seeded)
                   if spec.input_size else None)
        fold_batchnorm(copy_, example)
    return copy_


def encode_model(model: nn.Module, cfg: QuantConfig) -> bytes:
    """The whole .ncq file of `model` (its spec attached) under `cfg` (per-tensor widths as given)."""
    net = prepared(model, cfg)
    meta = {"netcompress": __version__, "spec": spec_of(model).to_dict(), "quant": cfg.storage()}
    return ncq.pack(meta, [cfg.encode(k, t) for k, t in net.state_dict().items()], cfg.entropy)
