"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019): each image blended with a partner, and soft labels.

Two callers draw the mixing differently and share the geometry and the blending here: `mix_batch` draws one
weight (and one box) for a whole batch, paired with a shuffled copy of itself; the teacher's cached views
(train/views.py) fix a partner, a weight and a box for every view of every image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .augment import AugmentConfig


def cutmix_boxes(lam, cy, cx, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """CutMix boxes for weights `lam` (a float or an array, its precision kept) centred on (cy, cx) of an h x w
    image: (top, left, bottom, right) int64 [..., 4], sides sqrt(1 - lam) of the image's, clipped to it; and the
    fraction of the image each box leaves uncovered, the exact weight of the image itself."""
    side = np.sqrt(1 - lam)
    half_h, half_w = (side * h).astype(np.int64) // 2, (side * w).astype(np.int64) // 2
    top, bottom = np.clip(cy - half_h, 0, h), np.clip(cy + half_h, 0, h)
    left, right = np.clip(cx - half_w, 0, w), np.clip(cx + half_w, 0, w)
    return np.stack([top, left, bottom, right], -1), 1 - (bottom - top) * (right - left) / (h * w)


def mix_pairs(x: torch.Tensor, other: torch.Tensor, labels: torch.Tensor, other_labels: torch.Tensor,
              lam: torch.Tensor, boxes: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i of x [B, C, H, W] mixed with image i of `other` -> (images, soft labels [B, classes]).

    Where boxes[i] (top, left, bottom, right; int64 [B, 4]) is not empty, the partner's pixels replace the box
    (CutMix; lam[i] must then be the area left uncovered), else the images blend as lam[i] * x + (1 - lam[i]) *
    other (mixup). The labels blend with the same weights. lam [B]: float32 or float64, on any device.
    """
    device, dtype = x.device, x.dtype
    lam = lam.cpu().double()  # the partner's weight 1 - lam is rounded once, from the weight as given
    keep, give = lam.to(dtype).to(device), (1 - lam).to(dtype).to(device)
    top, left, bottom, right = (v.to(device)[:, None] for v in boxes.unbind(1))
    rows = torch.arange(x.shape[-2], device=device)
    cols = torch.arange(x.shape[-1], device=device)
    inside = (((rows >= top) & (rows < bottom))[:, :, None] & ((cols >= left) & (cols < right))[:, None, :])[:, None]
    cut = ((bottom > top) & (right > left))[:, :, None, None]
    images = (torch.where(cut, (~inside).to(dtype), keep[:, None, None, None]) * x
              + torch.where(cut, inside.to(dtype), give[:, None, None, None]) * other)
    soft = (keep[:, None] * F.one_hot(labels.to(device), num_classes).to(dtype)
            + give[:, None] * F.one_hot(other_labels.to(device), num_classes).to(dtype))
    return images, soft


def mix_batch(x: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: AugmentConfig,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix of a batch with a shuffled copy of itself -> (images, soft labels [B, classes])."""
    b, _, h, w = x.shape
    seed = int(torch.randint(2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    use_cutmix = cfg.cutmix > 0 and (cfg.mixup == 0 or rng.random() < 0.5)
    lam = float(rng.beta(cfg.cutmix, cfg.cutmix) if use_cutmix else rng.beta(cfg.mixup, cfg.mixup))
    perm = torch.from_numpy(rng.permutation(b)).to(x.device)
    box = np.zeros(4, dtype=np.int64)
    if use_cutmix:  # a box of the partner covering 1 - lam of the image; lam is then the exact kept area
        box, kept = cutmix_boxes(lam, int(rng.integers(h)), int(rng.integers(w)), h, w)
        lam = float(kept)
    return mix_pairs(x, x[perm], labels, labels[perm], torch.full((b,), lam, dtype=torch.float64),
                     torch.from_numpy(box).expand(b, 4), num_classes)
