"""Knowledge distillation losses: the course's logit matching (Hinton et al.) and relational KD.

The teacher runs in eval mode without gradients on the very batch the student sees (augmentation
included). Its forward pass dominates the cost of distillation, so where the hardware computes
bfloat16 natively (CUDA, CPUs with AVX512-BF16/AMX) the teacher runs under bf16 autocast: 1.8x
(EfficientNet-Lite0) to 4x (ResNet18) faster on such a CPU, with soft targets that differ by
less than the noise of augmentation. Without augmentation the teacher's outputs never change, so
`DistillLoss.precompute` runs it once per image instead of once per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import Batch, iterate_batches
from ..data.split import Split
from ..errors import NetcompressError
from ..runtime import model_device

METHODS = ("logits", "rkd")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 20.0, alpha: float = 0.5) -> torch.Tensor:
    """The course's loss: (1 - a)·CE(s, y) + a·T²·KL(softmax(t/T) || softmax(s/T)), batch-mean KL.

    labels: class indices, or soft labels [B, classes] (mixed batches)."""
    hard = F.cross_entropy(student_logits, labels)
    if alpha == 0:
        return hard
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean")
    return (1 - alpha) * hard + alpha * temperature**2 * soft


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e).clamp(min=1e-12)
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off_diagonal].mean()


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [i, j] = unit(e_i - e_j)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> torch.Tensor:
    """Relational KD (Park et al., CVPR 2019): match the batch's distance and angle structure.

    Embeddings may differ in width: only relations between samples are compared.
    """
    s, t = student_emb.flatten(1).float(), teacher_emb.flatten(1).float()
    with torch.no_grad():
        t_dist, t_angle = _pairwise_distances(t), _angles(t)
    return (distance_weight * F.smooth_l1_loss(_pairwise_distances(s), t_dist)
            + angle_weight * F.smooth_l1_loss(_angles(s), t_angle))


class Embedding:
    """Captures the input of a network's last Linear layer (its penultimate features) on each forward."""

    def __init__(self, model: nn.Module):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise NetcompressError("relational distillation needs a model that ends in a Linear classifier")
        self.value: torch.Tensor | None = None
        linears[-1].register_forward_hook(self._capture)

    def _capture(self, _module, inputs, _output) -> None:
        self.value = inputs[0]


@dataclass(frozen=True)
class DistillConfig:
    """How a student learns from its teacher; the defaults are the course's (T=20, alpha=0.5)."""

    temperature: float = 20.0
    alpha: float = 0.5  # weight of the teacher's term; 0 = plain cross-entropy
    method: str = "logits"  # logits | rkd (logits + relational terms)
    rkd_weight: float = 1.0
    teacher_precision: str = "auto"  # auto (bf16 where the hardware has it natively) | fp32 | bf16

    def __post_init__(self):
        if self.method not in METHODS:
            raise NetcompressError(f"method = {self.method!r}: choose one of {', '.join(METHODS)}")
        if not 0 < self.temperature < float("inf"):
            raise NetcompressError(f"temperature = {self.temperature} must be a finite number > 0")
        if not 0 <= self.alpha <= 1:
            raise NetcompressError(f"alpha = {self.alpha} must lie in [0, 1]")
        if self.teacher_precision not in ("auto", "fp32", "bf16"):
            raise NetcompressError(f"teacher_precision = {self.teacher_precision!r}: choose auto, fp32 or bf16")


def native_bf16(device: torch.device) -> bool:
    """Does this device compute bfloat16 natively (so autocast speeds it up rather than emulating)?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class DistillLoss:
    """loss_fn(student_logits, batch) for `train.fit`, with the teacher inside."""

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: DistillConfig, channels_last: bool = True):
        self.cfg = cfg
        self.device = model_device(teacher)
        self.bf16 = cfg.teacher_precision == "bf16" or (cfg.teacher_precision == "auto" and native_bf16(self.device))
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        self.student_emb = Embedding(student) if cfg.method == "rkd" else None
        self.teacher_emb = Embedding(teacher) if cfg.method == "rkd" else None
        self.cached: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def _teacher(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            self.teacher.eval()
            logits = self.teacher(images).float()
        return logits, None if self.teacher_emb is None else self.teacher_emb.value.float()

    def precompute(self, split: Split, batch_size: int = 256) -> None:
        """Without augmentation the teacher sees the same images every epoch: run it once per image."""
        outs = [self._teacher(b.images) for b in iterate_batches(split, batch_size, device=self.device)]
        logits = torch.cat([o[0] for o in outs])
        self.cached = (logits, None if self.teacher_emb is None else torch.cat([o[1] for o in outs]))

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.cached is not None:
            index = batch.index.to(self.cached[0].device)
            teacher_logits = self.cached[0][index].to(logits.device)
            teacher_emb = None if self.cached[1] is None else self.cached[1][index].to(logits.device)
        else:
            teacher_logits, teacher_emb = self._teacher(batch.images)
        loss = kd_loss(logits, teacher_logits, batch.targets, self.cfg.temperature, self.cfg.alpha)
        if self.student_emb is not None:
            loss = loss + self.cfg.rkd_weight * rkd_loss(self.student_emb.value, teacher_emb)
        return loss


def check_teacher(teacher_classes: list[str], data_classes: list[str], teacher_name) -> None:
    if len(teacher_classes) != len(data_classes):
        raise NetcompressError(
            f"teacher {teacher_name} predicts {len(teacher_classes)} classes but the data has {len(data_classes)}; "
            "train or fine-tune a teacher on this data first (netcompress train --model efficientnet_lite0 ...)"
        )
