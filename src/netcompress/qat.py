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

from .artifact import ModelSpec
from .augment import AugmentConfig, iterate_batches
from .data import Split
from .distill import kd_loss
from .quantize import AFFINE, KMEANS, MINMAX8, QuantConfig, _copy_model, _Reader, decode_tensor, encode_tensor, \
    fold_batchnorm


def finetune_quantized(model: nn.Module, spec: ModelSpec, cfg: QuantConfig, train: Split, epochs: int = 3,
                       lr: float = 3e-4, batch_size: int = 64, temperature: float = 4.0, alpha: float = 0.9,
                       seed: int = 0, progress: bool = True) -> nn.Module:
    """A copy of `model` fine-tuned through `cfg`'s codec; store it with `save_quantized(..., cfg)`."""
    cfg = cfg.checked()
    teacher = _copy_model(model, spec)
    student = _copy_model(model, spec)
    if cfg.fold_bn:
        fold_batchnorm(student)
    params = dict(student.named_parameters())
    quantized = [n for n, p in params.items() if encode_tensor(p.data, cfg, cfg.bits_for(n))[0] in (AFFINE, KMEANS, MINMAX8)]
    steps = epochs * math.ceil(len(train) / batch_size)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    gen = torch.Generator().manual_seed(seed)
    cpu = torch.device("cpu")
    bar = tqdm(total=steps, desc="quantization-aware fine-tuning", unit="step", disable=not progress, leave=False)
    for _ in range(epochs):
        for x, y, _ in iterate_batches(train, batch_size, device=cpu, shuffle=True, augment=AugmentConfig(),
                                    generator=gen):
            with torch.no_grad():
                target = teacher(x)
                floats = {n: params[n].data.clone() for n in quantized}
                for n in quantized:
                    record = encode_tensor(floats[n], cfg, cfg.bits_for(n))
                    params[n].data.copy_(decode_tensor(_Reader(record, n), floats[n], n))
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
