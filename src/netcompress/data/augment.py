"""The course's augmentation, applied to whole batches of tensors, and the batch iterator.

Random crop with symmetric padding, horizontal flip and rotation are one affine warp per image;
`grid_sample` with reflection padding does all of them for a batch in one call, on the CPU or GPU.
Mixup and CutMix (mix.py) blend each image with another of the batch and give soft labels; a
teacher sees the very same mixed images, which keeps distillation consistent (Beyer et al. 2022,
"a good teacher is patient and consistent").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F

from ..errors import NetcompressError
from .mapped import prefetch_rows, release_pages
from .mix import mix_batch
from .split import Split, to_float


@dataclass(frozen=True)
class AugmentConfig:
    crop_pad: int | None = None  # pixels of symmetric padding before the random crop; None: size // 12
    flip: bool = True
    rotate: float = 15.0  # degrees, uniform in [-rotate, rotate]
    mixup: float = 0.0  # Beta(a, a) of the mixing weight; 0: no mixup
    cutmix: float = 0.0  # Beta(a, a) of the kept area; 0: no CutMix (with mixup too: either, half the batches each)

    def __post_init__(self):
        if (self.crop_pad is not None and self.crop_pad < 0) or not 0 <= self.rotate <= 180:
            raise NetcompressError(f"augment: crop_pad = {self.crop_pad} must be >= 0 and rotate = {self.rotate} "
                                   "degrees within 0..180")
        if self.mixup < 0 or self.cutmix < 0:
            raise NetcompressError(f"augment: mixup = {self.mixup} and cutmix = {self.cutmix} must be >= 0 "
                                   "(Beta parameters; 0 turns them off)")

    def pad_for(self, size: int) -> int:
        return size // 12 if self.crop_pad is None else self.crop_pad


def warp_params(b: int, size: int, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random warps of `b` images of `size` pixels: [b, 4] = rotation (radians), flip (-1 or 1), x and y shift
    (whole pixels in [-pad, pad])."""
    pad = cfg.pad_for(size)
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device=gen_device).cpu() * (high - low) + low

    angle = uniform(-cfg.rotate, cfg.rotate) * (math.pi / 180)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(b)
    dx = torch.floor(uniform(-pad, pad + 1)).clamp(max=pad)
    dy = torch.floor(uniform(-pad, pad + 1)).clamp(max=pad)
    return torch.stack([angle, flip, dx, dy], 1)


def warp(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply `warp_params` to a float batch [B, C, H, W] in one grid_sample (reflection at the borders)."""
    _, _, h, w = x.shape
    angle, flip, dx, dy = params.to(x.device, x.dtype).unbind(1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # integer pixel shifts make the crop exact; grid units span 2 per image side
    theta = torch.stack([torch.stack([cos * flip, -sin, dx * (2 / w)], 1),
                         torch.stack([sin * flip, cos, dy * (2 / h)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (symmetric padding), horizontal flip and rotation of a float batch [B, C, H, W]."""
    if cfg.pad_for(x.shape[-2]) == 0 and not cfg.flip and cfg.rotate == 0:
        return x
    return warp(x, warp_params(len(x), x.shape[-2], cfg, generator))


def resize_batch(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """A batch at `size` x `size` (antialiased bilinear, the way the decode cache shrinks images); as is when it
    already has that size or size is None."""
    if size is None or x.shape[-1] == size:
        return x
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(memory_format=torch.channels_last) \
        else out


class Batch(NamedTuple):
    images: torch.Tensor  # float [B, C, H, W] in [0, 1], on the device
    labels: torch.Tensor  # int64 [B], on the device (mixed batches: each image's own label)
    index: torch.Tensor  # int64 [B]: positions in the split (to look up per-image caches)
    soft_labels: torch.Tensor | None = None  # float [B, classes] of a mixed batch, else None
    teacher_logits: torch.Tensor | None = None  # float [B, classes] when a teacher's outputs were cached

    @property
    def targets(self) -> torch.Tensor:
        """What cross-entropy compares with: the soft labels of a mixed batch, else the labels."""
        return self.labels if self.soft_labels is None else self.soft_labels


def shard_order(order: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    """Rank `rank`'s share of an order of positions that all `ranks` ranks drew alike (shard = (rank, ranks)):
    every ranks-th position, the order padded by wrapping around so that every rank gets as many as the others."""
    rank, ranks = shard
    if ranks <= 1:
        return order
    return torch.cat([order, order[: (-len(order)) % ranks]])[rank::ranks]


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
    A shuffled (training) epoch leaves out a last batch of a single image.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = shard_order(order, shard)
    rank, ranks = shard
    if ranks > 1 and generator is not None:  # each rank augments its own images with its own draws
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)) + rank)
    prefetch_rows(split.images, order[:batch_size])
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if shuffle and len(idx) == 1 and start > 0:
            break  # a training batch of one image breaks BatchNorm; it is drawn again next epoch
        x = to_float(split.images[idx].to(device, non_blocking=True))
        release_pages(split.images)  # a mapped split's pages leave this process once read: RSS stays bounded
        prefetch_rows(split.images, order[start + batch_size : start + 2 * batch_size])  # read while this one trains
        labels, soft = split.labels[idx].to(device, non_blocking=True), None
        if augment is not None:
            x = augment_batch(x, augment, generator)
            if augment.mixup > 0 or augment.cutmix > 0:
                x, soft = mix_batch(x, labels, split.num_classes, augment, generator)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield Batch(x, labels, idx, soft)
