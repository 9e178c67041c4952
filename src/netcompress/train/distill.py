"""Knowledge distillation losses, in a registry: the course's logit matching (Hinton et al. 2015), DKD
(Zhao et al. 2022: target and non-target classes matched apart), DIST (Huang et al. 2022: Pearson
correlation of the class distributions, within and across samples) and relational KD. A new loss is a
`KDLoss` subclass registered with `@register_kd_loss`; it declares what it needs (`needs_features`:
the penultimate features of the student and the live teacher) and `DistillLoss` provides it.

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
from ..process import model_device

class KDLoss:
    """One distillation loss. Subclass it, set `name`, implement `__call__`, and register it with `@register_kd_loss`;
    `DistillConfig(method=name)`, `fit`, the recipes and `netcompress distill --method` then offer it."""

    name: str = ""
    # gets the penultimate features (the input of the last Linear layer) of the student and of the live teacher;
    # cached teacher outputs (TeacherViews) hold logits only, so such a loss needs the teacher itself
    needs_features: bool = False

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, cfg,
                 features: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The loss of a batch: targets are class indices or soft labels [B, classes] (mixed batches); cfg is the
        DistillConfig; features (student, teacher) when `needs_features`."""
        raise NotImplementedError


_KD_LOSSES: dict[str, KDLoss] = {}


def register_kd_loss(cls: type[KDLoss]) -> type[KDLoss]:
    """Class decorator: make a distillation loss selectable by its name."""
    if not cls.name:
        raise ValueError(f"distillation loss {cls.__name__} needs a name")
    _KD_LOSSES[cls.name] = cls()
    return cls


def get_kd_loss(name: str) -> KDLoss:
    if name not in _KD_LOSSES:
        raise NetcompressError(f"method = {name!r}: choose one of {', '.join(list_kd_losses())}")
    return _KD_LOSSES[name]


def list_kd_losses() -> list[str]:
    return list(_KD_LOSSES)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """The course's loss: (1 - a)·CE(s, y) + a·T²·KL(softmax(t/T) || softmax(s/T)), batch-mean KL (the settings:
    DistillConfig).

    labels: class indices, or soft labels [B, classes] (mixed batches)."""
    hard = F.cross_entropy(student_logits, labels)
    if alpha == 0:
        return hard
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean")
    return (1 - alpha) * hard + alpha * temperature**2 * soft


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0) -> torch.Tensor:
    """Decoupled KD: alpha·TCKD (target vs the rest, a binary distribution) + beta·NCKD (the distribution over
    the non-target classes), both T²-scaled batch-mean KL; `target` are class indices."""
    gt = F.one_hot(target, student_logits.shape[1]).bool()
    p_s, p_t = F.softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1)
    binary_s = torch.stack([p_s[gt], p_s.masked_fill(gt, 0).sum(1)], 1).clamp_min(1e-12)
    binary_t = torch.stack([p_t[gt], p_t.masked_fill(gt, 0).sum(1)], 1)
    tckd = F.kl_div(binary_s.log(), binary_t, reduction="batchmean")
    # 1000 drops the target class from both softmaxes, as the paper's code does
    nckd = F.kl_div(F.log_softmax(student_logits / temperature - 1000.0 * gt, 1),
                    F.softmax(teacher_logits / temperature - 1000.0 * gt, 1), reduction="batchmean")
    return temperature**2 * (alpha * tckd + beta * nckd)


def _pearson_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - Pearson correlation of the rows of a and b, averaged."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return 1 - F.cosine_similarity(a, b, dim=1, eps=1e-8).mean()


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
              beta: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """DIST: beta·inter-class relation (per sample, across classes) + gamma·intra-class relation (per class,
    across the batch), each 1 - Pearson correlation of the tempered softmaxes, T²-scaled."""
    p_s, p_t = F.softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1)
    return temperature**2 * (beta * _pearson_distance(p_s, p_t) + gamma * _pearson_distance(p_s.T, p_t.T))


def _hard_term(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(student_logits, targets)


@register_kd_loss
class LogitMatching(KDLoss):
    """The course's loss (Hinton et al. 2015), `kd_loss`."""

    name = "logits"

    def __call__(self, s, t, targets, cfg, features=None) -> torch.Tensor:
        return kd_loss(s, t, targets, cfg.temperature, cfg.alpha)


@register_kd_loss
class Relational(LogitMatching):
    """The course's loss plus `cfg.rkd_weight` times relational KD (`rkd_loss`) on the penultimate features."""

    name = "rkd"
    needs_features = True

    def __call__(self, s, t, targets, cfg, features=None) -> torch.Tensor:
        return super().__call__(s, t, targets, cfg) + cfg.rkd_weight * rkd_loss(*features)


@register_kd_loss
class Decoupled(KDLoss):
    """DKD (`dkd_loss`) with the hard term weighted 1 - alpha; DKD's beta is `cfg.dkd_beta`."""

    name = "dkd"

    def __call__(self, s, t, targets, cfg, features=None) -> torch.Tensor:
        classes = targets.argmax(1) if targets.dim() == 2 else targets  # a mixed image counts as its larger part
        return (1 - cfg.alpha) * _hard_term(s, targets) + cfg.alpha * dkd_loss(s, t, classes, cfg.temperature,
                                                                              beta=cfg.dkd_beta)


@register_kd_loss
class Correlation(KDLoss):
    """DIST (`dist_loss`) with the hard term weighted 1 - alpha."""

    name = "dist"

    def __call__(self, s, t, targets, cfg, features=None) -> torch.Tensor:
        return (1 - cfg.alpha) * _hard_term(s, targets) + cfg.alpha * dist_loss(s, t, cfg.temperature)


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
            raise NetcompressError("distilling penultimate features needs a model that ends in a Linear classifier")
        self.value: torch.Tensor | None = None
        linears[-1].register_forward_hook(self._capture)

    def _capture(self, _module, inputs, _output) -> None:
        self.value = inputs[0]


@dataclass(frozen=True)
class DistillConfig:
    """How a student learns from its teacher. The defaults (T=4, alpha=0.9) did best in this project's runs and are
    what every verb and recipe uses; `DistillConfig.course()` is the course's (T=20, alpha=0.5)."""

    temperature: float = 4.0
    alpha: float = 0.9  # weight of the teacher's term; 0 = plain cross-entropy
    method: str = "logits"  # a registered loss (list_kd_losses()): logits | rkd (logits + relational) | dkd | dist
    rkd_weight: float = 1.0
    dkd_beta: float = 8.0  # DKD's weight of the non-target term (the paper: 8 on CIFAR-100)
    teacher_precision: str = "auto"  # auto (bf16 where the hardware has it natively) | fp32 | bf16

    @classmethod
    def course(cls, **changes) -> DistillConfig:
        """The course's settings: T=20, alpha=0.5 (other fields as given)."""
        return cls(**{"temperature": 20.0, "alpha": 0.5, **changes})

    def __post_init__(self):
        get_kd_loss(self.method)
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
    """loss_fn(student_logits, batch) for `fit`, with the teacher inside, or with its outputs cached in the batches
    (`teacher` None: `TeacherViews`)."""

    def __init__(self, teacher: nn.Module | None, student: nn.Module, cfg: DistillConfig, channels_last: bool = True):
        self.cfg = cfg
        self.teacher = teacher
        if teacher is not None:
            self.device = model_device(teacher)
            self.bf16 = cfg.teacher_precision == "bf16" or (cfg.teacher_precision == "auto" and native_bf16(self.device))
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            if channels_last:
                teacher.to(memory_format=torch.channels_last)
        self.loss = get_kd_loss(cfg.method)
        if self.loss.needs_features and teacher is None:
            raise NetcompressError(f"method {cfg.method} needs the live teacher's features; cached teacher views hold "
                                   "logits only: distill from the teacher itself (no views)")
        self.student_emb = Embedding(student) if self.loss.needs_features else None
        self.teacher_emb = Embedding(teacher) if self.loss.needs_features else None
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
        teacher_emb = None
        if batch.teacher_logits is not None:
            teacher_logits = batch.teacher_logits.to(logits.device)
        elif self.cached is not None:
            index = batch.index.to(self.cached[0].device)
            teacher_logits = self.cached[0][index].to(logits.device)
            teacher_emb = None if self.cached[1] is None else self.cached[1][index].to(logits.device)
        else:
            teacher_logits, teacher_emb = self._teacher(batch.images)
        features = None if self.student_emb is None else (self.student_emb.value, teacher_emb)
        return self.loss(logits, teacher_logits, batch.targets, self.cfg, features)


def check_teacher(teacher_classes: list[str], data_classes: list[str], teacher_name) -> None:
    if len(teacher_classes) != len(data_classes):
        raise NetcompressError(
            f"teacher {teacher_name} predicts {len(teacher_classes)} classes but the data has {len(data_classes)}; "
            "train or fine-tune a teacher on this data first (netcompress train --model efficientnet_lite0 ...)"
        )
