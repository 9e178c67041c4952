"""Storage quantization, with quantization-aware fine-tuning when asked: a few epochs in which the weights adapt
to the codec that stores them.

During that fine-tuning every forward pass sees each quantized weight as its exact round trip through the storage
codec (`QuantConfig.roundtrip`, per-tensor widths included), so what is trained is what the file will hold; the
gradient taken there updates the float weights (straight-through estimator, as a parametrization, so the ordinary
`fit` loop trains it). The fp32 model is the teacher, and the network stays in eval mode so BatchNorm keeps its
(folded) statistics.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..compress.bit_allocation import allocate_bits
from ..compress.quant_config import QuantConfig, prepared
from ..compress.quantize import QuantizedModel, quant_config, store
from ..data.split import calibration_images
from ..errors import NetcompressError
from ..spec import copy_model
from ..train.distill import DistillConfig
from ..train.fit import TrainConfig
from .finetune import Finetune


def quantize(model: nn.Module, config: QuantConfig | None = None, data=None, *, device: str | torch.device = "auto",
             progress: bool = True, **overrides) -> QuantizedModel:
    """Store `model` with a codec; `model` is left as it is.

    data: training images (a dataset folder, Split or torch Dataset), needed for `budget` and
    `finetune_epochs` (validated on the folder's validation split, where it has one). Keyword
    overrides replace config fields: quantize(m, codec="kbit", bits=4).
    """
    cfg = quant_config(config, overrides)
    if not cfg.needs_data:
        return store(model, cfg, progress=progress)
    if data is None:
        raise NetcompressError("budget and finetune_epochs need training data: pass data=")
    finetune = Finetune.on(data, qat_training(cfg), device=device, progress=progress)
    if cfg.budget is not None:
        cfg = allocate_bits(model, cfg, calibration_images(finetune.train, cfg.calibration), cfg.budget, progress)
    stored = finetune_quantized(model, cfg, finetune) if cfg.finetune_epochs else model
    return store(stored, cfg, progress=progress)


def qat_training(cfg: QuantConfig, base: TrainConfig = TrainConfig()) -> TrainConfig:
    """The fine-tuning of `cfg`: its epochs, learning rate and weight averaging, no weight decay, the network in eval
    mode."""
    return replace(base, epochs=max(1, cfg.finetune_epochs), lr=cfg.finetune_lr, weight_decay=0.0, eval_mode=True,
                   average_epochs=cfg.finetune_average)


def finetune_quantized(model: nn.Module, cfg: QuantConfig, finetune: Finetune) -> nn.Module:
    """A copy of `model` (BatchNorm folded where `cfg` folds it) trained through `cfg`'s codec with `finetune`'s
    training settings (`qat_training` applied), distilled from `model` itself with `finetune.distill` (default
    DistillConfig()); the best-validation epoch where `finetune` has validation data."""
    clean = prepared(model, cfg)
    student = copy_model(clean)
    for name, param in list(student.named_parameters()):
        if cfg.quantizes(name, param.data):
            owner, _, attribute = name.rpartition(".")
            parametrize.register_parametrization(student.get_submodule(owner), attribute, StoredAs(cfg, name))
    teaching = finetune.replace(teacher=copy_model(model).eval(), distill=finetune.distill or DistillConfig(),
                                run_dir=None)  # a parametrized module is no model file: no checkpoints
    tuned = teaching.run(student, config=qat_training(cfg, finetune.config or TrainConfig()))
    for module in list(tuned.modules()):
        if parametrize.is_parametrized(module):
            for attribute in list(module.parametrizations):
                parametrize.remove_parametrizations(module, attribute, leave_parametrized=False)
    clean.load_state_dict(tuned.state_dict())  # the prepared module's own layout: its tensors in their order
    return clean.eval()


class StoredAs(nn.Module):
    """A weight as the file will hold it in the forward pass; its gradient passes to the float weight unchanged."""

    def __init__(self, cfg: QuantConfig, name: str):
        super().__init__()
        self.cfg, self.name = cfg, name

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            stored = self.cfg.roundtrip(self.name, weight.detach().cpu())[0].to(weight.device, weight.dtype)
        return weight + (stored - weight).detach()
