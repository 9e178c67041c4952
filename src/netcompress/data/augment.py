"""The course's augmentation, applied to whole batches of tensors, and the batch iterator.

Random crop with symmetric padding, horizontal flip and rotation are one affine warp per image;
`grid_sample` with reflection padding does all of them for a batch in one call, on the CPU or GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F

from ..errors import NetcompressError
from .split import Split, to_float


@dataclass(frozen=True)
class AugmentConfig:
    crop_pad: int | None = None  # pixels of symmetric padding before the random crop; None: size // 12
    flip: bool = True
    rotate: float = 15.0  # degrees, uniform in [-rotate, rotate]

    def __post_init__(self):
        if (self.crop_pad is not None and self.crop_pad < 0) or not 0 <= self.rotate <= 180:
            raise NetcompressError(f"augment: crop_pad = {self.crop_pad} must be >= 0 and rotate = {self.rotate} "
                                   "degrees within 0..180")

    def pad_for(self, size: int) -> int:
        return size // 12 if self.crop_pad is None else self.crop_pad


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (symmetric padding), horizontal flip and rotation of a float batch [B, 3, H, W]."""
    b, _, h, w = x.shape
    pad = cfg.pad_for(h)
    if pad == 0 and not cfg.flip and cfg.rotate == 0:
        return x
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def uniform(low: float, high: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator, device=gen_device) * (high - low) + low).to(x.device)

    angle = uniform(-cfg.rotate, cfg.rotate) * (math.pi / 180)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(b, device=x.device)
    # integer pixel shifts in [-pad, pad] make the crop exact; grid units span 2 per image side
    dx = torch.floor(uniform(-pad, pad + 1)).clamp(max=pad) * (2 / w)
    dy = torch.floor(uniform(-pad, pad + 1)).clamp(max=pad) * (2 / h)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, dx], 1), torch.stack([sin * flip, cos, dy], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class Batch(NamedTuple):
    images: torch.Tensor  # float [B, 3, H, W] in [0, 1], on the device
    labels: torch.Tensor  # int64 [B], on the device
    index: torch.Tensor  # int64 [B]: positions in the split (to look up per-image caches)


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    device: torch.device,
    shuffle: bool = False,
    augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    channels_last: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[Batch]:
    """Yield batches on `device`, optionally shuffled and augmented.

    shard=(rank, ranks): this rank's share of the order all ranks draw from the same generator,
    padded by wrapping around so that every rank gets as many images (and steps) as the others.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    rank, ranks = shard
    if ranks > 1:
        order = torch.cat([order, order[: (-n) % ranks]])[rank::ranks]
        if generator is not None:  # each rank augments its own images with its own draws
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)) + rank)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x = to_float(split.images[idx].to(device, non_blocking=True))
        if augment is not None:
            x = augment_batch(x, augment, generator)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield Batch(x, split.labels[idx].to(device, non_blocking=True), idx)
