"""Pruning to a latency target, NetAdapt-style (Yang et al., ECCV 2018).

Each step asks for a latency reduction: what is left to the target, spread over the steps left.
For every group of coupled channels it proposes the smallest cut, least important channels first,
whose latency (predicted by `LatencyTable`, per-layer latencies measured on the target runtime)
meets that reduction, or the cut that saves the most where none does (at most half of a layer per
step, and never below an eighth of its first width or 8 channels). The proposals are then timed on
the runtime, side by side with the model they cut, and a proposal that is not measurably faster is
dropped: a table of single layers misses what the runtime does to a whole graph (a first conv cut
from 16 to 8 channels made a StudentNet slower on ONNX Runtime). Each proposal left is fine-tuned
briefly on `proposal_images` training images with their labels and scored on validation; the step
keeps the one that buys the most measured latency per point of accuracy lost and fine-tunes it like
any pruning step (distilled when a teacher is given). The run stops when a measured model meets the
target, when no cut is measurably faster, or after twice the planned steps. When the machine is too
busy to time, the table's predictions stand in (for the stop, scaled to the last real measurement).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn

from ..errors import NetcompressError
from ..files import atomic_write_text
from ..measure.latency import Latency, LatencyTarget, latency
from ..measure.latency_table import LatencyTable
from ..runtime import log
from ..spec import attach, copy_model, spec_of
from ..train.fit import TrainConfig, fit
from .prune import PruneConfig, PruneRun, StepLog, accuracy, respec_pruned
from .pruners import channel_groups, get_pruner, prune_group

ACCURACY_FLOOR = 0.002  # a proposal that loses less than 0.2 points is scored as losing 0.2: noise, not a gain
MAX_CUT = 0.5  # one step removes at most half of a layer's channels: deeper cuts do not recover in a few epochs
MIN_KEEP = 8  # a layer keeps at least 1/8 of the channels it started with, and at least 8 where it had them
MEASURABLE = 0.02  # a proposal must time at least 2% faster than the model it cuts, in the same rounds


@dataclass
class Proposal:
    layer: str
    remove: int
    model: nn.Module
    saved_ms: float  # measured on the runtime (predicted by the table while the machine is too busy)
    accuracy: float = 0.0  # after a brief fine-tuning (the model itself stays as cut)

    def score(self, reference: float) -> float:
        return self.saved_ms / max(reference - self.accuracy, ACCURACY_FLOOR)


def prune_to_latency(model: nn.Module, config: PruneConfig, train, finetune: TrainConfig, steps: StepLog,
                     example_input: torch.Tensor | None, *, val, teacher, distill, device: torch.device,
                     progress: bool) -> PruneRun:
    """Prune `model` (a private copy) until it runs within `config.latency`; `steps` records every step."""
    target = config.latency
    spec = spec_of(model)
    if example_input is None:
        if not spec.input_size:
            raise NetcompressError("pass example_input=torch.randn(1, 3, S, S): the model's input size is not known")
        example_input = torch.rand(spec.input_shape())
    example_input = example_input.to(device)
    shape = tuple(example_input.shape)
    table = LatencyTable(target.config)
    first_widths = channel_groups(model, example_input)
    settings = {"prune": asdict(config)}
    current, measured = model, measure(model, target)
    scale = 1.0
    steps.record(0, current, {"target_latency": _row(target, measured, table.predict(current, shape))})
    k = 0
    while not _meets(measured, target, table.predict(current, shape) * scale) and k < 2 * config.steps:
        k += 1
        predicted = table.predict(current, shape)
        if measured.trusted:
            scale = measured.median_ms / predicted
        goal = (predicted - target.ms / scale) / max(1, config.steps - k + 1)
        step_dir = None if steps.run_dir is None else steps.run_dir / f"step{k}"
        choice = _choose(current, config, train, val, finetune, table, shape, goal, first_widths, example_input,
                         device, step_dir, k, progress)
        if choice is None:
            log(f"latency target {target}: no cut of any layer makes the model measurably faster; "
                f"stopping at step {k - 1}")
            break
        tuned = fit(choice.model, train, finetune, run_dir=step_dir, val=val, teacher=teacher, distill=distill,
                    device=device, progress=progress,
                    settings={**settings, "step": k, "cut": {"layer": choice.layer, "remove": choice.remove}})
        current, measured = tuned.to(device), measure(tuned, target)
        steps.record(k, current, {"val_accuracy_before_finetune": round(accuracy(choice.model, val, device), 5),
                                  "proposal_val_accuracy": round(choice.accuracy, 5),
                                  "cut": {"layer": choice.layer, "removed": choice.remove},
                                  "target_latency": _row(target, measured, table.predict(current, shape) * scale)})
    return steps.run


def measure(model: nn.Module, target: LatencyTarget, tries: int = 3) -> Latency:
    """The model's latency on the target; measured again (up to `tries` times) while the machine is busy."""
    for _ in range(tries):
        found = latency(copy_model(model).cpu(), target.config)
        if found.trusted:
            break
    return found


def _meets(measured: Latency, target: LatencyTarget, estimate: float) -> bool:
    """Within the target: measured so, or, when the machine was too busy to measure, predicted so."""
    return (measured.median_ms if measured.trusted else estimate) <= target.ms


def _row(target: LatencyTarget, measured: Latency, predicted: float) -> dict:
    return {**asdict(target), "median_ms": measured.median_ms, "p90_ms": measured.p90_ms,
            "predicted_ms": round(predicted, 4), "note": measured.note}


def _choose(model, config, train, val, finetune, table, shape, goal, first_widths, example_input, device, step_dir,
            k, progress) -> Proposal | None:
    """The step's proposal: the one saving the most latency per point of accuracy lost (reused on resume)."""
    saved_choice = None if step_dir is None else step_dir / "proposal.json"
    if saved_choice is not None and saved_choice.exists():
        cut = json.loads(saved_choice.read_text())
        return Proposal(cut["layer"], cut["remove"], _cut(model, config, cut["layer"], cut["remove"], example_input, k),
                        cut["saved_ms"], cut["accuracy"])
    predicted = table.predict(model, shape)
    reference = accuracy(model, val, device)
    proposals = []
    for layer, width in channel_groups(model, example_input).items():
        first = first_widths.get(layer, width)
        most = min(int(width * MAX_CUT), width - max(1, first // MIN_KEEP, min(first, MIN_KEEP)))
        stride = max(1, width // 16)
        largest = None  # when no cut of this layer meets the goal: the one that saves the most
        for remove in range(stride, most + 1, stride):
            candidate = Proposal(layer, remove, _cut(model, config, layer, remove, example_input, k), 0.0)
            candidate.saved_ms = predicted - table.predict(candidate.model, shape)
            if candidate.saved_ms >= goal:
                largest = candidate
                break
            if candidate.saved_ms > 0 and (largest is None or candidate.saved_ms > largest.saved_ms):
                largest = candidate
        if largest is not None:
            proposals.append(largest)
    proposals = _measured(model, proposals, config.latency)
    if not proposals:
        return None
    images = torch.randperm(len(train), generator=torch.Generator().manual_seed(k))[:config.proposal_images]
    brief = replace(finetune, epochs=1)
    for p in proposals:
        p.accuracy = accuracy(fit(p.model, train.subset("proposal", images), brief, device=device, progress=False),
                              val, device)
        if progress:
            log(f"  step {k} proposal: {p.layer} -{p.remove} channels, saves {p.saved_ms:.4f} ms, "
                f"val acc {p.accuracy:.4f} after a brief fine-tune (now {reference:.4f})")
    best = max(proposals, key=lambda p: p.score(reference))
    if saved_choice is not None:
        atomic_write_text(saved_choice, json.dumps({"layer": best.layer, "remove": best.remove,
                                                    "saved_ms": best.saved_ms, "accuracy": best.accuracy}))
    return best


def _measured(model: nn.Module, proposals: list[Proposal], target: LatencyTarget) -> list[Proposal]:
    """The proposals that are measurably faster than `model` on the target, with their measured saving; all of
    them, with the table's savings, when the machine is too busy to time them."""
    if not proposals:
        return []
    models = {str(i): copy_model(p.model).cpu() for i, p in enumerate(proposals)}
    found = latency({"current": copy_model(model).cpu(), **models}, target.config)
    if not all(t.trusted for t in found.values()):
        log("  the machine is too busy to time the proposals: the latency table's predictions stand in")
        return proposals
    now = found.pop("current").median_ms
    return [replace(p, saved_ms=now - found[str(i)].median_ms) for i, p in enumerate(proposals)
            if found[str(i)].median_ms < now * (1 - MEASURABLE)]


def _cut(model: nn.Module, config: PruneConfig, layer: str, remove: int, example_input: torch.Tensor,
         k: int) -> nn.Module:
    """A copy of `model` without the `remove` least important channels of `layer`, with its spec updated."""
    before = spec_of(model).info.get("pruned", {})
    cuts = [*before.get("cuts", []), {"layer": layer, "removed": remove}] if before.get("latency") else \
        [{"layer": layer, "removed": remove}]
    spec = spec_of(model).with_info(pruned={"method": config.method, "latency": asdict(config.latency), "step": k,
                                            "cuts": cuts})
    pruned = prune_group(copy_model(model), layer, remove, get_pruner(config.method), example_input)
    pruned, spec = respec_pruned(model, pruned, spec)
    return attach(pruned, spec)
