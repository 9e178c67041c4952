"""Structured pruning that really removes channels (and unstructured magnitude pruning).

`prune(model, PruneConfig(...))` is one step: a new, narrower module (the methods live in
pruners.py). `prune_iteratively` is the course's schedule: prune, fine-tune (distilled when a
teacher is given), keep the best model of the step, repeat, and measure every step.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from ..data.split import split_of
from ..errors import NetcompressError
from ..files import atomic_write_text
from ..formats import model_file
from ..measure.cost import measure_model, ms
from ..measure.latency import LatencyTarget
from ..measure.evaluate import classification_metrics, predict_logits
from ..models.studentnet import StudentNet
from ..models.surgery import record_changes
from ..runtime import log, model_device, resolve_device
from ..spec import ModelSpec, attach, copy_model, spec_of
from ..train.batchnorm import recalibrate_batchnorm
from ..train.distill import DistillConfig
from ..train.fit import TrainConfig, fit, training_splits
from .pruners import get_pruner, list_pruners


@dataclass(frozen=True)
class PruneConfig:
    """How to prune: `method` (see `list_pruners()`), the fraction `rate` of each prunable layer (or, for
    magnitude, of all weights) kept per step, and `steps` for `prune_iteratively`.

    global_ranking ranks channels across layers instead of per layer. sparsity > 0 with
    sparsity_epochs > 0 is Network Slimming: a training phase with an L1 penalty on BatchNorm γ
    before the first step. taylor_batches: training batches whose gradients rank channels (taylor).

    latency: prune to a latency target instead of by `rate` (NetAdapt, see netadapt.py): `steps` is then
    the number of steps planned to reach it, and `method` ranks channels within a layer.
    proposal_images: training images each of those steps' proposals is briefly fine-tuned on.
    recalibrate: training images whose BatchNorm statistics replace the running ones after a structured
    step, when `prune` gets data (0: keep the stale ones, as the course did; see train/batchnorm.py).
    """

    method: str = "slim"
    rate: float = 0.95
    steps: int = 5
    global_ranking: bool = False
    sparsity: float = 0.0
    sparsity_epochs: int = 0
    taylor_batches: int = 8
    latency: LatencyTarget | None = None
    proposal_images: int = 1024
    recalibrate: int = 1024

    def __post_init__(self):
        pruner = get_pruner(self.method)
        if self.latency is not None and not pruner.ranks_single_groups:
            raise NetcompressError(f"method {self.method} cannot prune to a latency target: use one of "
                                   f"{', '.join(n for n in list_pruners() if get_pruner(n).ranks_single_groups)}")
        if self.proposal_images < 1:
            raise NetcompressError(f"proposal_images = {self.proposal_images} must be >= 1")
        if not 0 < self.rate < 1:
            raise NetcompressError(f"rate = {self.rate} must lie strictly between 0 and 1 "
                                   "(the fraction of channels kept per step; the course used 0.95)")
        if self.steps < 1:
            raise NetcompressError(f"steps = {self.steps} must be >= 1")
        if self.sparsity < 0 or self.sparsity_epochs < 0 or (self.sparsity > 0) != (self.sparsity_epochs > 0):
            raise NetcompressError("sparsity and sparsity_epochs go together: a positive L1 weight and epochs")
        if self.recalibrate < 0:
            raise NetcompressError(f"recalibrate = {self.recalibrate} must be >= 0 (0: keep the running statistics)")
        if self.taylor_batches < 1:
            raise NetcompressError(f"taylor_batches = {self.taylor_batches} must be >= 1")


def prune(model: nn.Module, config: PruneConfig | None = None, *, example_input: torch.Tensor | None = None,
          data=None, device: str | torch.device | None = None, **overrides) -> nn.Module:
    """One pruning step: a new module with `rate` of the channels (`model` is left as it is).

    example_input: one input batch (e.g. torch.randn(1, 3, 96, 96)) for tracing the network;
    optional once the model's input size is known. data: training images, for methods that rank
    by gradients (taylor) and for recomputing BatchNorm statistics (`recalibrate`). device: where
    to prune (default: where the model is). Calling prune again on the result with the same method
    and rate continues the schedule (width rate^k after k steps). Keyword overrides replace config
    fields: prune(m, method="l2", rate=0.5).
    """
    try:
        cfg = replace(config or PruneConfig(), **overrides)
    except TypeError as exc:
        raise NetcompressError(f"prune: {exc}") from exc
    pruner = get_pruner(cfg.method)
    dev = model_device(model) if device is None else resolve_device(device)
    spec = spec_of(model)
    if pruner.needs_batchnorm and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise NetcompressError(f"method {cfg.method} ranks channels by BatchNorm γ, but this model has no BatchNorm; "
                               f"use one of {', '.join(n for n in list_pruners() if not get_pruner(n).needs_batchnorm)}")
    if pruner.needs_data and data is None:
        raise NetcompressError(f"method {cfg.method} ranks channels by gradients: pass training data (data=...)")
    if example_input is None:
        if not spec.input_size:
            raise NetcompressError("pass example_input=torch.randn(1, 3, S, S): the model's input size is not known yet")
        example_input = torch.rand(spec.input_shape())
    before = spec.info.get("pruned", {})
    step = before["step"] + 1 if (before.get("method"), before.get("rate")) == (cfg.method, cfg.rate) else 1
    original = copy_model(model).to(dev)
    pruned = pruner.prune(copy_model(model).to(dev), cfg, step=step, example_input=example_input.to(dev),
                          data=None if data is None else split_of(data, "training"))
    record = {"method": cfg.method, "rate": cfg.rate, "step": step, "kept": round(cfg.rate**step, 5)}
    if isinstance(original, StudentNet):
        record["original_widths"] = before.get("original_widths") if step > 1 else list(original.widths)
    new_spec = spec.with_info(pruned=record, **({"sparse": True} if not pruner.structured else {}))
    if pruner.structured:
        pruned, new_spec = respec_pruned(original, pruned, new_spec)
        if data is not None and cfg.recalibrate:
            recalibrate_batchnorm(pruned, split_of(data, "training"), dev, cfg.recalibrate,
                                  input_size=spec.input_size or None, seed=step)
    return attach(pruned, new_spec).train(model.training)


def respec_pruned(before: nn.Module, after: nn.Module, spec: ModelSpec) -> tuple[nn.Module, ModelSpec]:
    """The pruned architecture in the spec: a StudentNet as its per-layer widths, anything else as replaced layers."""
    if isinstance(after, StudentNet):
        widths = [after.cnn[0][0].out_channels] + [b[3].out_channels for b in after.cnn[1:-1]]
        clean = StudentNet(num_classes=after.fc[0].out_features, widths=widths, pool_after=after.pool_after,
                           in_channels=after.cnn[0][0].in_channels)
        clean.load_state_dict(after.state_dict())
        kwargs = {**spec.kwargs, "widths": widths} if spec.arch else spec.kwargs
        overrides = spec.overrides if spec.arch else record_changes(spec.overrides, before, clean)
        return clean.to(model_device(after)), spec.replace(kwargs=kwargs, overrides=overrides)
    return after, spec.replace(overrides=record_changes(spec.overrides, before, after))


def bn_l1_penalty(weight: float):
    """Network Slimming's regularizer: weight * sum |γ| over every BatchNorm of the model being trained."""
    def penalty(model: nn.Module) -> torch.Tensor:
        return weight * sum(m.weight.abs().sum() for m in model.modules()
                            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine)
    return penalty


@dataclass
class PruneRun:
    """What `prune_iteratively` made: the best model of every step (step 0 = the input) and one row of metrics each."""

    models: list[nn.Module] = field(repr=False)
    rows: list[dict]

    @property
    def final(self) -> nn.Module:
        return self.models[-1]


class StepLog:
    """Measures and keeps every step's model: one row each in rows (and run_dir/pruning.jsonl), the model in
    run_dir/step{k}.safetensors."""

    def __init__(self, config: PruneConfig, val, device: torch.device, run_dir: Path | None, progress: bool):
        self.config, self.val, self.device, self.run_dir, self.progress = config, val, device, run_dir, progress
        self.sparse = not get_pruner(config.method).structured
        self.run = PruneRun([], [])

    def record(self, k: int, net: nn.Module, extra: dict) -> dict:
        blob = model_file.encode(net)
        sparse_bytes = len(model_file.encode(net, sparse=True)) if self.sparse else None
        row = {"step": k, "method": self.config.method, "rate": self.config.rate, "kept": round(self.config.rate**k, 5),
               **measure_model(net, self.val, self.device, len(blob), sparse_bytes), **extra}
        if self.config.latency is not None:  # no fixed rate: the share of parameters kept
            row["rate"], row["kept"] = None, round(row["params"] / (self.run.rows or [row])[0]["params"], 5)
        if self.run_dir is not None:
            model_file.save_model(net, self.run_dir / f"step{k}.safetensors")
            if self.sparse:
                model_file.save_model(net, self.run_dir / f"step{k}.sparse.safetensors", sparse=True)
            row["model_file"] = f"step{k}.safetensors"
            atomic_write_text(self.run_dir / "pruning.jsonl", "".join(json.dumps(r) + "\n"
                                                                      for r in self.run.rows + [row]))
        self.run.models.append(net)
        self.run.rows.append(row)
        if self.progress:
            log(f"step {k}: {row['params']:,} params, {row['file_bytes']:,} bytes, val acc "
                f"{row['val_accuracy']:.4f}, {ms(row['latency_ms']['ort@1'])} ms at batch 1 (ONNX Runtime)")
        return row


def prune_iteratively(model: nn.Module, config: PruneConfig, data, finetune: TrainConfig | None = None, *,
                      val=None, teacher=None, distill: DistillConfig | None = None, run_dir: str | Path | None = None,
                      device: str | torch.device = "auto", example_input: torch.Tensor | None = None,
                      progress: bool = True) -> PruneRun:
    """Prune `config.steps` times, fine-tuning after each step with a fresh optimizer (the course forgot to).

    Each step fine-tunes (`finetune`, default 5 epochs) from the best model of the step before,
    distilled from `teacher` when given, and keeps its best-validation model. With `run_dir`,
    every step's fine-tuning resumes after an interruption, run_dir/step{k}.safetensors holds its
    model and run_dir/pruning.jsonl one row per step (step 0 = the input): parameters, bytes, MACs,
    latency, and validation accuracy before and after fine-tuning. With `config.latency`, the steps
    prune to that latency target instead (`prune_to_latency`).
    """
    finetune = finetune or TrainConfig(epochs=5)
    dev = resolve_device(device)
    train, val_split = training_splits(data, val)
    if val_split is None:
        raise NetcompressError("prune_iteratively keeps the best model of each step: pass validation data (val=...)")
    run_dir = None if run_dir is None else Path(run_dir)
    steps = StepLog(config, val_split, dev, run_dir, progress)
    common = dict(val=val_split, teacher=teacher, distill=distill, device=dev, progress=progress)
    if config.latency is not None:
        from .netadapt import prune_to_latency  # netadapt builds on this module

        return prune_to_latency(copy_model(model).to(dev), config, train, finetune, steps, example_input, **common)
    settings = {"prune": asdict(config)}
    current = copy_model(model).to(dev)
    if config.sparsity > 0:
        current = fit(current, train, replace(finetune, epochs=config.sparsity_epochs), penalty=bn_l1_penalty(
            config.sparsity), run_dir=None if run_dir is None else run_dir / "sparsity",
            settings={**settings, "phase": "sparsity"}, **common)
    steps.record(0, current, {})
    for k in range(1, config.steps + 1):
        pruned = prune(current, config, example_input=example_input, data=train, device=dev)
        before = accuracy(pruned, val_split, dev)
        current = fit(pruned, train, finetune, run_dir=None if run_dir is None else run_dir / f"step{k}",
                      settings={**settings, "step": k}, **common)
        steps.record(k, current.to(dev), {"val_accuracy_before_finetune": round(before, 5)})
    return steps.run


def accuracy(model: nn.Module, val, device: torch.device) -> float:
    return classification_metrics(predict_logits(model, val, device), val.labels, val.num_classes)["accuracy"]
