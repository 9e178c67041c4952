"""Schedules: compression steps with fine-tuning between them, each on one `Finetune` and one step recorder."""

from .finetune import Finetune
from .lowrank import LowRankRun, factorize_and_finetune, factorize_with
from .pruning import PruneRun, prune_iteratively, prune_with
from .qat import finetune_quantized, quantize
from .steps import StepRecorder, StepRun

__all__ = ["Finetune", "StepRecorder", "StepRun", "PruneRun", "LowRankRun", "prune_iteratively", "prune_with",
           "factorize_and_finetune", "factorize_with", "finetune_quantized", "quantize"]
