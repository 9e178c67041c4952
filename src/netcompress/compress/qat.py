"""Quantization-aware fine-tuning: a few epochs in which the weights adapt to the codec that stores them.

Every forward pass runs with each quantized weight replaced by its exact round trip through the
storage codec (`encode_tensor` -> `decode_tensor`, per-tensor widths included), so what is trained
is what the file will hold; the gradient taken there updates the float weights (straight-through
estimator). The fp32 model is the teacher (distillation loss, labels mixed in), and the network
stays in eval mode so BatchNorm keeps its (folded) statistics.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from tqdm import tqdm

from ..data.augment import AugmentConfig, iterate_batches
from ..data.split import Split
from ..runtime import bars_off
from ..spec import copy_model
from ..train.distill import kd_loss
from .quant_config import QuantConfig, prepared


def finetune_quantized(model: nn.Module, cfg: QuantConfig, train: Split, batch_size: int = 64,
                       temperature: float = 4.0, alpha: float = 0.9, seed: int = 0, progress: bool = True) -> nn.Module:
    """A copy of `model` fine-tuned through `cfg`'s codec for `cfg.finetune_epochs` at `cfg.finetune_lr`."""
    epochs = cfg.finetune_epochs
    teacher = copy_model(model).cpu().eval()
    student = prepared(model, cfg)
    params = dict(student.named_parameters())
    quantized = [n for n, p in params.items() if cfg.quantizes(n, p.data)]
    steps = epochs * math.ceil(len(train) / batch_size)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.finetune_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    gen = torch.Generator().manual_seed(seed)
    cpu = torch.device("cpu")
    bar = tqdm(total=steps, desc="quantization-aware fine-tuning", unit="step", disable=bars_off(progress), leave=False)
    for _ in range(epochs):
        for batch in iterate_batches(train, batch_size, device=cpu, shuffle=True, augment=AugmentConfig(),
                                     generator=gen):
            x, y = batch.images, batch.labels
            with torch.no_grad():
                target = teacher(x)
                floats = {n: params[n].data.clone() for n in quantized}
                for n in quantized:
                    params[n].data.copy_(cfg.roundtrip(n, floats[n])[0])
            loss = kd_loss(student(x), target, y, temperature, alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for n in quantized:
                    params[n].data.copy_(floats[n])
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    return student.eval()
