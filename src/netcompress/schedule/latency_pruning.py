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

from ..compress.prune import PruneConfig, prune_layer
from ..compress.pruners import channel_groups
from ..files import atomic_write_text
from ..measure.latency import Latency, LatencyTarget, latency
from ..measure.latency_table import LatencyTable
from ..process import log
from ..spec import PruningRecord, copy_model, example_input_for, spec_of
from .finetune import Finetune
from .steps import PruningSteps, StepRun

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


def prune_to_latency(model: nn.Module, config: PruneConfig, finetune: Finetune, steps: PruningSteps,
                     example_input: torch.Tensor | None = None) -> StepRun:
    """Prune `model` (the schedule's own copy) until it runs within `config.latency`; `steps` records every step."""
    target = config.latency
    example_input = example_input_for(model, example_input).to(finetune.device)
    shape = tuple(example_input.shape)
    table = LatencyTable(target.config)
    first_widths = channel_groups(model, example_input)
    settings = {"prune": asdict(config)}
    current, measured = model, measure(model, target)
    scale = 1.0
    steps.step(0, current, {"target_latency": _row(target, measured, table.predict(current, shape))})
    k = 0
    while not _meets(measured, target, table.predict(current, shape) * scale) and k < 2 * config.steps:
        k += 1
        predicted = table.predict(current, shape)
        if measured.trusted:
            scale = measured.median_ms / predicted
        goal = (predicted - target.ms / scale) / max(1, config.steps - k + 1)
        proposals = Proposals(config, finetune.at(f"step{k}"), table, shape, first_widths, example_input, k)
        choice = proposals.choose(current, goal)
        if choice is None:
            log(f"latency target {target}: no cut of any layer makes the model measurably faster; "
                f"stopping at step {k - 1}")
            break
        settings_k = {**settings, "step": k, "cut": {"layer": choice.layer, "remove": choice.remove}}
        tuned = finetune.at(f"step{k}").run(choice.model, settings=settings_k)
        current, measured = tuned.to(finetune.device), measure(tuned, target)
        steps.step(k, current,
                   {"val_accuracy_before_finetune": round(finetune.accuracy(choice.model), 5),
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


class Proposals:
    """One step's candidate cuts: proposed by the latency table, timed on the runtime, briefly fine-tuned."""

    def __init__(self, config: PruneConfig, finetune: Finetune, table: LatencyTable, shape: tuple,
                 first_widths: dict[str, int], example_input: torch.Tensor, step: int):
        self.config, self.finetune, self.table, self.shape = config, finetune, table, shape
        self.first_widths, self.example_input, self.step = first_widths, example_input, step

    def choose(self, model: nn.Module, goal: float) -> Proposal | None:
        """The proposal saving the most latency per point of accuracy lost (reused on resume); None if no cut of
        any layer is measurably faster."""
        saved_choice = None if self.finetune.run_dir is None else self.finetune.run_dir / "proposal.json"
        if saved_choice is not None and saved_choice.exists():
            cut = json.loads(saved_choice.read_text())
            return Proposal(cut["layer"], cut["remove"], self.cut(model, cut["layer"], cut["remove"]),
                            cut["saved_ms"], cut["accuracy"])
        proposals = _measured(model, self.propose(model, goal), self.config.latency)
        if not proposals:
            return None
        reference = self.finetune.accuracy(model)
        self.tune_briefly(proposals, reference)
        best = max(proposals, key=lambda p: p.score(reference))
        if saved_choice is not None:
            atomic_write_text(saved_choice, json.dumps({"layer": best.layer, "remove": best.remove,
                                                        "saved_ms": best.saved_ms, "accuracy": best.accuracy}))
        return best

    def propose(self, model: nn.Module, goal: float) -> list[Proposal]:
        """Per layer group, the smallest cut whose predicted saving meets `goal`, or the one that saves the most."""
        predicted = self.table.predict(model, self.shape)
        proposals = []
        for layer, width in channel_groups(model, self.example_input).items():
            first = self.first_widths.get(layer, width)
            most = min(int(width * MAX_CUT), width - max(1, first // MIN_KEEP, min(first, MIN_KEEP)))
            stride = max(1, width // 16)
            largest = None  # when no cut of this layer meets the goal: the one that saves the most
            for remove in range(stride, most + 1, stride):
                candidate = Proposal(layer, remove, self.cut(model, layer, remove), 0.0)
                candidate.saved_ms = predicted - self.table.predict(candidate.model, self.shape)
                if candidate.saved_ms >= goal:
                    largest = candidate
                    break
                if candidate.saved_ms > 0 and (largest is None or candidate.saved_ms > largest.saved_ms):
                    largest = candidate
            if largest is not None:
                proposals.append(largest)
        return proposals

    def tune_briefly(self, proposals: list[Proposal], reference: float) -> None:
        """Each proposal's accuracy after one epoch on `proposal_images` training images with their labels."""
        ft = self.finetune
        images = torch.randperm(len(ft.train), generator=torch.Generator().manual_seed(self.step))
        subset = ft.train.subset("proposal", images[:self.config.proposal_images])
        brief = ft.replace(val=None, run_dir=None, progress=False)
        for p in proposals:
            p.accuracy = ft.accuracy(brief.run(p.model, config=replace(ft.config, epochs=1), train=subset,
                                               teaching=False))
            if ft.progress:
                log(f"  step {self.step} proposal: {p.layer} -{p.remove} channels, saves {p.saved_ms:.4f} ms, "
                    f"val acc {p.accuracy:.4f} after a brief fine-tune (now {reference:.4f})")

    def cut(self, model: nn.Module, layer: str, remove: int) -> nn.Module:
        """A copy of `model` without the `remove` least important channels of `layer`, its cuts recorded."""
        before = spec_of(model).info.pruned
        cuts = (*before.cuts, {"layer": layer, "removed": remove}) if before and before.latency else \
            ({"layer": layer, "removed": remove},)
        record = PruningRecord(self.config.method, self.step, latency=asdict(self.config.latency), cuts=cuts)
        return prune_layer(model, layer, remove, self.config.method, self.example_input, record)


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
