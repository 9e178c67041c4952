"""BatchNorm statistics recomputed from training images ("precise BN").

Pruning removes some of a layer's inputs, so the running mean and variance of every BatchNorm
after it stop describing its outputs. A network with a slow running average (EfficientNet's
momentum is 0.01) needs hundreds of steps to catch up and evaluates near chance until then.
Exact averages over about a thousand training images fix the statistics at once
(Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm").
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..data.augment import iterate_batches, resize_batch
from ..data.split import Split


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, split: Split, device: torch.device, images: int = 1024, *,
                          batch_size: int = 64, input_size: int | None = None, channels_last: bool = True,
                          seed: int = 0) -> nn.Module:
    """Replace the running statistics of `model`'s BatchNorm layers (in place) by their averages over about `images`
    training images (whole batches) drawn at random, un-augmented (resized to `input_size` when given); returns `model`.

    Only the BatchNorm layers run in training mode meanwhile: dropout and stochastic depth stay off, as at
    evaluation.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or images < 1:
        return model
    was_training, momenta = model.training, [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
        m.train()
    seen = 0
    generator = torch.Generator().manual_seed(seed)
    for batch in iterate_batches(split, batch_size, device=device, shuffle=True, generator=generator,
                                 channels_last=channels_last):
        model(resize_batch(batch.images, input_size))
        seen += len(batch.images)
        if seen >= images:
            break
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.train(was_training)
