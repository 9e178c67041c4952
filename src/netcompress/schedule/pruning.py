"""The course's pruning schedule: prune one step, fine-tune (distilled when there is a teacher), keep the step's best
model, repeat, and measure every step. With a latency target the steps are NetAdapt's (latency_pruning.py)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn as nn

from ..compress.prune import PruneConfig, prune
from ..spec import copy_model
from ..train.distill import DistillConfig
from ..train.fit import TrainConfig
from .finetune import Finetune
from .latency_pruning import prune_to_latency
from .steps import PruningSteps, StepRun

PruneRun = StepRun  # what `prune_iteratively` made: models "step0" (the input), "step1", ... and a row each


def prune_iteratively(model: nn.Module, config: PruneConfig, data, finetune: TrainConfig | None = None, *,
                      val=None, teacher=None, distill: DistillConfig | None = None, run_dir: str | Path | None = None,
                      device: str | torch.device = "auto", example_input: torch.Tensor | None = None,
                      progress: bool = True) -> StepRun:
    """Prune `config.steps` times, fine-tuning after each step with a fresh optimizer (the course forgot to).

    Each step fine-tunes (`finetune`, default 5 epochs) from the best model of the step before,
    distilled from `teacher` when given, and keeps its best-validation model. With `run_dir`,
    every step's fine-tuning resumes after an interruption, run_dir/step{k}.safetensors holds its
    model and run_dir/pruning.jsonl one row per step (step 0 = the input): parameters, bytes, MACs,
    latency, and validation accuracy before and after fine-tuning. With `config.latency`, the steps
    prune to that latency target instead (`prune_to_latency`).
    """
    schedule = Finetune.on(data, finetune or TrainConfig(epochs=5), val=val, teacher=teacher, distill=distill,
                           device=device, run_dir=run_dir, progress=progress)
    schedule.require_validation("prune_iteratively")
    return prune_with(copy_model(model).to(schedule.device), config, schedule, example_input)


def prune_with(model: nn.Module, config: PruneConfig, finetune: Finetune,
               example_input: torch.Tensor | None = None) -> StepRun:
    """`prune_iteratively` on a `Finetune`: `model` is the schedule's own copy."""
    steps = PruningSteps(finetune, config)
    if config.latency is not None:
        return prune_to_latency(model, config, finetune, steps, example_input)
    settings = {"prune": asdict(config)}
    current = model
    if config.sparsity > 0:
        current = finetune.at("sparsity").run(current, config=replace(finetune.config, epochs=config.sparsity_epochs),
                                              penalty=bn_l1_penalty(config.sparsity),
                                              settings={**settings, "phase": "sparsity"})
    steps.step(0, current)
    for k in range(1, config.steps + 1):
        pruned = prune(current, config, example_input=example_input, data=finetune.train, device=finetune.device)
        before = finetune.accuracy(pruned)
        current = finetune.at(f"step{k}").run(pruned, settings={**settings, "step": k}).to(finetune.device)
        steps.step(k, current, {"val_accuracy_before_finetune": round(before, 5)})
    return steps.run


def bn_l1_penalty(weight: float):
    """Network Slimming's regularizer: weight * sum |γ| over every BatchNorm of the model being trained."""
    def penalty(model: nn.Module) -> torch.Tensor:
        return weight * sum(m.weight.abs().sum() for m in model.modules()
                            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine)
    return penalty
