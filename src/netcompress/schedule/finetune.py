"""Fine-tuning between compression steps: the training settings, the teaching, the validation split, the device
and the run folder, held once and passed as one object to every schedule (pruning, latency pruning, low-rank,
quantization-aware training, architecture comparison)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..data.split import Split
from ..errors import NetcompressError
from ..measure.cost import measure_model
from ..measure.evaluate import classification_metrics, predict_logits
from ..process import resolve_device
from ..train.distill import DistillConfig
from ..train.fit import TrainConfig, fit, training_splits
from ..train.views import TeacherViews


@dataclass(frozen=True)
class Finetune:
    """How a schedule trains the models it makes: `config` on `train`, validated on `val`, distilled from `teacher`
    (a module, a model file or cached `TeacherViews`) when given, on `device`, resumable under `run_dir`.

    Build it from the user's data with `Finetune.on(data, ...)`; `at(name)` gives the same settings in a
    sub-folder of the run (one per step), `replace(...)` any field.
    """

    train: Split
    val: Split | None
    config: TrainConfig | None = TrainConfig(epochs=5)  # None: the schedule does not fine-tune
    teacher: nn.Module | str | Path | TeacherViews | None = None
    distill: DistillConfig | None = None
    device: torch.device = torch.device("cpu")
    run_dir: Path | None = None
    progress: bool = True

    @classmethod
    def on(cls, data, config: TrainConfig | None = TrainConfig(epochs=5), *, val=None, teacher=None,
           distill: DistillConfig | None = None, device: str | torch.device = "auto", run_dir: str | Path | None = None,
           progress: bool = True) -> Finetune:
        """Fine-tuning on a dataset folder (its training and validation splits) or on the user's own training data
        with `val` the same kind."""
        train, val_split = training_splits(data, val)
        return cls(train, val_split, config, teacher, distill, resolve_device(device),
                   None if run_dir is None else Path(run_dir), progress)

    def replace(self, **changes) -> Finetune:
        return replace(self, **changes)

    def at(self, name: str) -> Finetune:
        """The same fine-tuning, kept in run_dir/name (nowhere when the schedule has no run folder)."""
        return self.replace(run_dir=None if self.run_dir is None else self.run_dir / name)

    def require_validation(self, what: str) -> Split:
        if self.val is None:
            raise NetcompressError(f"{what} keeps the best model of each step: pass validation data (val=...)")
        return self.val

    def run(self, model: nn.Module, *, settings: dict | None = None, config: TrainConfig | None = None,
            train: Split | None = None, teaching: bool = True, progress: bool | None = None,
            penalty: Callable[[nn.Module], torch.Tensor] | None = None) -> nn.Module:
        """`fit` a copy of `model` with these settings (or `config`, `train` instead); the best-validation model.

        teaching False trains on the labels alone; `settings` are the facts that must match when a run resumes.
        """
        return fit(model, self.train if train is None else train, config or self.config, val=self.val,
                   teacher=self.teacher if teaching else None, distill=self.distill if teaching else None,
                   run_dir=self.run_dir, device=self.device, settings=settings, penalty=penalty,
                   progress=self.progress if progress is None else progress)

    def accuracy(self, model: nn.Module) -> float:
        """Validation accuracy of `model` as it is."""
        val = self.require_validation("measuring accuracy")
        return classification_metrics(predict_logits(model, val, self.device), val.labels, val.num_classes)["accuracy"]

    def measure(self, model: nn.Module, file_bytes: int, sparse_bytes: int | None = None) -> dict:
        """Parameters, MACs, bytes, validation accuracy and latencies of `model` (see `measure_model`)."""
        return measure_model(model, self.require_validation("measuring a model"), self.device, file_bytes,
                             sparse_bytes)
