"""Factorize, then fine-tune, measuring the model at each stage (see compress/lowrank.py for the factorization)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from ..compress.lowrank import LowRankConfig, factorize_model
from ..process import log
from ..spec import copy_model, spec_of
from ..train.distill import DistillConfig
from ..train.fit import TrainConfig
from .finetune import Finetune
from .steps import StepRecorder, StepRun


class LowRankRun(StepRun):
    """What `factorize_and_finetune` made: models "original", "factorized" and "finetuned" (when fine-tuned), a
    row each, and the whole log (also run_dir/lowrank.json): settings, rank selection, every layer's decision."""

    def __init__(self, steps: StepRecorder):
        super().__init__(steps.run.models, steps.run.rows)
        self.log = {**steps.header, "rows": steps.rows}


def factorize_and_finetune(model: nn.Module, config: LowRankConfig, data, finetune: TrainConfig | None = None, *,
                           val=None, teacher=None, distill: DistillConfig | None = None,
                           run_dir: str | Path | None = None, device: str | torch.device = "auto",
                           settings: dict | None = None, progress: bool = True) -> LowRankRun:
    """Factorize, then fine-tune (finetune None: no fine-tuning); measure the model at each stage.

    Stages: original, factorized (before fine-tuning), finetuned (the best-validation model of the
    fine-tuning, distilled from `teacher` when given). With `run_dir`, it gets <stage>.safetensors,
    finetune/ (the resumable fine-tuning run) and lowrank.json: the settings (`settings` adds to
    them), every layer's decision and one row per stage with parameters, bytes, MACs, latency at
    batch 1 and 64, and validation accuracy.
    """
    schedule = Finetune.on(data, finetune, val=val, teacher=teacher, distill=distill, device=device, run_dir=run_dir,
                           progress=progress)
    schedule.require_validation("factorize_and_finetune")
    return factorize_with(copy_model(model).to(schedule.device), config, schedule, settings)


def factorize_with(model: nn.Module, config: LowRankConfig, finetune: Finetune,
                   settings: dict | None = None) -> LowRankRun:
    """`factorize_and_finetune` on a `Finetune` (config None: no fine-tuning); `model` is the schedule's own copy."""
    header = {"settings": {"lowrank": {k: v for k, v in asdict(config).items() if v is not None}, **(settings or {}),
                           "finetune": asdict(finetune.config) if finetune.config else None}}
    steps = StepRecorder(finetune, "lowrank.json", header=header)
    steps.record("original", model, {"stage": "original"})
    result = factorize_model(model, config)
    steps.header.update(selection=result.selection, layers=result.layers)
    if finetune.progress:
        log(f"factorized {len(result.factorized)} of {len(result.layers)} Conv2d/Linear layers "
            f"({len(result.skipped)} skipped): {result.params_before:,} -> {result.params_after:,} parameters")
    steps.record("factorized", result.model.to(finetune.device), {"stage": "factorized"})
    if finetune.config is not None:
        tuned = finetune.at("finetune").run(result.model, settings={**header["settings"], "phase": "lowrank-finetune"})
        steps.record("finetuned", tuned.to(finetune.device), {"stage": "finetuned"},
                     {"best_epoch": spec_of(tuned).info.epoch})
    return LowRankRun(steps)
