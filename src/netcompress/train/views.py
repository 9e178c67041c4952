"""Consistent teaching at the student's cost: the teacher's outputs cached for K fixed views of every image.

Beyer et al. (2022) close most of the teacher-student gap with "function matching": teacher and
student see the very same augmented, mixed image, over long schedules. A live teacher makes every
step several times dearer than the student's own; here each image gets K views fixed by a seed
(its crop, flip and rotation, a partner image and a mixing weight for mixup or CutMix), the
teacher runs once per view, and every epoch the student sees one of those views again, rendered
from the same parameters (shrunk to the student's input size by `fit`), against the cached logits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..data.augment import AugmentConfig, Batch, shard_order, warp, warp_params
from ..data.mapped import prefetch_rows, release_pages
from ..data.mix import cutmix_boxes, mix_pairs
from ..data.split import Split, to_float
from ..errors import NetcompressError
from ..files import atomic_write
from ..process import bars_off, model_device
from .distill import native_bf16

VIEWS_FORMAT = "netcompress-teacher-views"


@dataclass(frozen=True)
class ViewConfig:
    """K views of every training image: the course's warps plus (optionally) mixup or CutMix with another image."""

    views: int = 16
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(mixup=0.5, cutmix=1.0))
    seed: int = 0
    batch_size: int = 128  # teacher batches while caching

    def __post_init__(self):
        if not 1 <= self.views <= 1024:
            raise NetcompressError(f"views = {self.views} must lie in 1..1024")
        if self.batch_size < 1:
            raise NetcompressError(f"batch_size = {self.batch_size} must be >= 1")


def _split_digest(split: Split) -> str:
    return hashlib.sha256("\n".join(split.files).encode() + split.labels.numpy().tobytes()).hexdigest()[:16]


class TeacherViews:
    """The teacher's logits [N, K, C] for K seeded views of each of a split's N images, and how to render them."""

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict):
        self.logits, self.warps = tensors["logits"], tensors["warps"]
        self.partners, self.lams, self.boxes = tensors["partners"], tensors["lams"], tensors["boxes"]
        self.meta = meta

    @property
    def views(self) -> int:
        return self.logits.shape[1]

    @classmethod
    def plan(cls, split: Split, cfg: ViewConfig) -> dict[str, torch.Tensor]:
        """The views' parameters, drawn from cfg.seed: the same split and config always give the same views."""
        n, k, size = len(split), cfg.views, split.image_size
        gen = torch.Generator().manual_seed(cfg.seed)
        warps = warp_params(n * k, size, cfg.augment, gen).view(n, k, 4)
        rng = np.random.default_rng(cfg.seed)
        a = cfg.augment
        partners = torch.from_numpy(rng.integers(0, n, (n, k)))
        lams, boxes = torch.ones(n, k), torch.zeros(n, k, 4, dtype=torch.int64)
        if a.mixup > 0 or a.cutmix > 0:
            cut = rng.random((n, k)) < (0.5 if a.mixup > 0 and a.cutmix > 0 else float(a.cutmix > 0))
            lams = torch.from_numpy(np.where(cut, rng.beta(max(a.cutmix, 1e-3), max(a.cutmix, 1e-3), (n, k)),
                                             rng.beta(max(a.mixup, 1e-3), max(a.mixup, 1e-3), (n, k)))).float()
            cy, cx = rng.integers(0, size, (n, k)), rng.integers(0, size, (n, k))
            box, kept = cutmix_boxes(lams.numpy(), cy, cx, size, size)
            boxes = torch.from_numpy(box * cut[..., None])
            lams = torch.where(torch.from_numpy(cut), torch.from_numpy(kept).float(), lams)
        else:
            partners = torch.arange(n)[:, None].expand(n, k).clone()
        return {"warps": warps, "partners": partners, "lams": lams, "boxes": boxes}

    def render(self, split: Split, index: torch.Tensor, view: torch.Tensor,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, S, S] of views `view` of images `index`, and their soft labels [B, classes]."""
        partner = self.partners[index, view]
        x = warp(to_float(split.images[index].to(device)), self.warps[index, view])
        other = warp(to_float(split.images[partner].to(device)), self.warps[partner, view])
        release_pages(split.images)
        return mix_pairs(x, other, split.labels[index], split.labels[partner], self.lams[index, view],
                         self.boxes[index, view], split.num_classes)

    @classmethod
    @torch.no_grad()
    def compute(cls, teacher: nn.Module, split: Split, cfg: ViewConfig | None = None, precision: str = "auto",
                progress: bool = True) -> "TeacherViews":
        """Run `teacher` (eval mode, on its device) once on every view of every image of `split`; precision as
        DistillConfig.teacher_precision (auto: bf16 where the hardware computes it natively)."""
        cfg = cfg or ViewConfig()
        plan = cls.plan(split, cfg)
        views = cls({"logits": torch.empty(0, cfg.views, 0), **plan}, {})
        device = model_device(teacher)
        bf16 = precision == "bf16" or (precision == "auto" and native_bf16(device))
        was_training = teacher.training
        teacher.eval()
        n, logits = len(split), []
        bar = tqdm(total=n * cfg.views, desc="teacher views", unit="img", disable=bars_off(progress), leave=False)
        for k in range(cfg.views):
            out = []
            for start in range(0, n, cfg.batch_size):
                index = torch.arange(start, min(n, start + cfg.batch_size))
                images, _ = views.render(split, index, torch.full_like(index, k), device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    out.append(teacher(images).float().cpu())
                bar.update(len(index))
            logits.append(torch.cat(out))
        bar.close()
        teacher.train(was_training)
        meta = {"format": VIEWS_FORMAT, "config": asdict(cfg), "split": _split_digest(split),
                "image_size": split.image_size, "precision": "bf16" if bf16 else "fp32"}
        return cls({"logits": torch.stack(logits, 1), **plan}, meta)

    @classmethod
    def cached(cls, teacher: nn.Module | str | Path, split: Split, cfg: ViewConfig, path: str | Path,
               progress: bool = True) -> "TeacherViews":
        """The views kept at `path` when they were made with `cfg` for these images, else computed and saved there;
        `teacher`: a module (on its device) or a model file."""
        path = Path(path)
        if path.exists():
            views = cls.load(path)
            if views.meta.get("config") == json.loads(json.dumps(asdict(cfg))) and \
                    views.meta.get("split") == _split_digest(split) and views.meta.get("image_size") == split.image_size:
                return views
        if isinstance(teacher, (str, Path)):
            from ..formats.load import load

            teacher = load(teacher)
        views = cls.compute(teacher, split, cfg, progress=progress)
        views.save(path)
        return views

    def check(self, split: Split) -> None:
        if self.meta.get("split") != _split_digest(split) or self.meta.get("image_size") != split.image_size:
            raise NetcompressError("these teacher views were computed for other images (another split, image size "
                                   "or carve): compute them again for this data")

    def save(self, path: str | Path) -> Path:
        tensors = {"logits": self.logits, "warps": self.warps, "partners": self.partners, "lams": self.lams,
                   "boxes": self.boxes}
        return atomic_write(Path(path), lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()},
                                                              str(tmp), metadata={"netcompress": json.dumps(self.meta)}))

    @classmethod
    def load(cls, path: str | Path) -> "TeacherViews":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise NetcompressError(f"teacher views file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("netcompress", "{}"))
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own types for foreign files
            raise NetcompressError(f"{path} is not a teacher views file ({exc})") from exc
        if meta.get("format") != VIEWS_FORMAT:
            raise NetcompressError(f"{path} is not a netcompress teacher views file")
        return cls(tensors, meta)

    def batches(self, split: Split, batch_size: int, *, device: torch.device, generator: torch.Generator,
                shard: tuple[int, int] = (0, 1), channels_last: bool = True) -> Iterator[Batch]:
        """A shuffled epoch in which every image appears once, as one of its views chosen at random."""
        n = len(split)
        order = torch.randperm(n, generator=generator)
        view = torch.randint(self.views, (n,), generator=generator)
        order = shard_order(order, shard)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            if len(index) == 1 and start > 0:
                break  # a training batch of one image breaks BatchNorm
            images, soft = self.render(split, index, view[index], device)
            upcoming = order[start + batch_size:start + 2 * batch_size]  # read while this batch trains
            prefetch_rows(split.images, torch.cat([upcoming, self.partners[upcoming, view[upcoming]]]))
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield Batch(images, split.labels[index].to(device), index, soft,
                        self.logits[index, view[index]].to(device))
