"""Structured pruning that really removes channels (and unstructured magnitude pruning): one step, a new module.

`prune(model, PruneConfig(...))` is one step by rate (the methods live in pruners.py), `prune_layer` removes
some channels of one layer (what latency pruning proposes). The schedules that prune, fine-tune and repeat
live in schedule/. A model may declare its own pruning: `architecture_kwargs()` (the constructor arguments of
its current shape, so a pruned file records arguments rather than replaced layers) and `prune_channels(config,
step, start)` (its own selection for some methods; None otherwise), as StudentNet does for the course's rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from ..data.split import split_of
from ..errors import NetcompressError
from ..measure.latency import LatencyTarget
from ..models.surgery import record_changes
from ..process import model_device, resolve_device
from ..spec import ModelSpec, PruningRecord, attach, copy_model, example_input_for, spec_of, with_input_of
from .batchnorm import recalibrate_batchnorm
from .pruners import get_pruner, list_pruners, prune_group


@dataclass(frozen=True)
class PruneConfig:
    """How to prune: `method` (see `list_pruners()`), the fraction `rate` of each prunable layer (or, for
    magnitude, of all weights) kept per step, and `steps` for `prune_iteratively`.

    global_ranking ranks channels across layers instead of per layer. sparsity > 0 with
    sparsity_epochs > 0 is Network Slimming: a training phase with an L1 penalty on BatchNorm γ
    before the first step. taylor_batches: training batches whose gradients rank channels (taylor).

    latency: prune to a latency target instead of by `rate` (NetAdapt, see schedule/latency_pruning.py): `steps` is then
    the number of steps planned to reach it, and `method` ranks channels within a layer.
    proposal_images: training images each of those steps' proposals is briefly fine-tuned on.
    recalibrate: training images whose BatchNorm statistics replace the running ones after a structured
    step, when `prune` gets data (0: keep the stale ones, as the course did; see compress/batchnorm.py).
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
    if pruner.needs_batchnorm and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise NetcompressError(f"method {cfg.method} ranks channels by BatchNorm γ, but this model has no BatchNorm; "
                               f"use one of {', '.join(n for n in list_pruners() if not get_pruner(n).needs_batchnorm)}")
    if pruner.needs_data and data is None:
        raise NetcompressError(f"method {cfg.method} ranks channels by gradients: pass training data (data=...)")
    example_input = example_input_for(model, example_input).to(dev)
    spec = with_input_of(spec_of(model), example_input)
    before = spec.info.pruned
    continues = before is not None and (before.method, before.rate) == (cfg.method, cfg.rate)
    step = before.step + 1 if continues else 1
    start = before.start if continues else architecture_kwargs(model)
    original = copy_model(model).to(dev)
    own_rule = getattr(original, "prune_channels", None)
    pruned = own_rule(cfg, step, start) if callable(own_rule) and pruner.structured else None
    if pruned is None:
        pruned = pruner.prune(copy_model(model).to(dev), cfg, step=step, example_input=example_input,
                              data=None if data is None else split_of(data, "training"))
    record = PruningRecord(cfg.method, step, cfg.rate, round(cfg.rate**step, 5), start=start)
    new_spec = spec.with_info(pruned=record, sparse=spec.info.sparse or not pruner.structured)
    if pruner.structured:
        pruned, new_spec = respec_pruned(original, pruned, new_spec)
        if data is not None and cfg.recalibrate:
            recalibrate_batchnorm(pruned, split_of(data, "training"), dev, cfg.recalibrate,
                                  input_size=spec.input_size or None, seed=step)
    return attach(pruned, new_spec).train(model.training)


def prune_layer(model: nn.Module, layer: str, remove: int, method: str, example_input: torch.Tensor,
                record: PruningRecord) -> nn.Module:
    """A copy of `model` without the `remove` least important output channels of `layer` (and of every layer
    coupled to them), ranked by `method`'s importance; its spec says `record`."""
    pruned = prune_group(copy_model(model), layer, remove, get_pruner(method), example_input)
    pruned, spec = respec_pruned(model, pruned, with_input_of(spec_of(model), example_input).with_info(pruned=record))
    return attach(pruned, spec)


def architecture_kwargs(model: nn.Module) -> dict:
    """The constructor arguments of the model's current shape, for models that declare them (else {})."""
    declared = getattr(model, "architecture_kwargs", None)
    return dict(declared()) if callable(declared) else {}


def respec_pruned(before: nn.Module, after: nn.Module, spec: ModelSpec) -> tuple[nn.Module, ModelSpec]:
    """The pruned architecture in the spec: a registered model that declares `architecture_kwargs` as its new
    constructor arguments (rebuilt clean from them), anything else as the layers that changed."""
    kwargs = architecture_kwargs(after)
    if spec.arch is None or not kwargs:
        return after, spec.replace(overrides=record_changes(spec.overrides, before, after))
    clean_spec = spec.replace(kwargs={**spec.kwargs, **kwargs})
    clean = clean_spec.build()
    clean.load_state_dict(after.state_dict())
    return clean.to(model_device(after)).train(after.training), clean_spec
