"""A recipe's plan, checked before its first epoch: the stages it will run, the splits they read, the smallest
model it can make, the disk it needs and, measured on a few batches, about how long it will take.

`check_recipe` is what every run does first: it refuses, in one message, a recipe that would fail
later (a missing split or teacher file, an output folder it cannot write, a budget below anything the
recipe can make, a runtime that is not installed). `plan_recipe(..., measure=True)` also times a few
training batches of each network the recipe trains, for `netcompress run --check`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from .. import NetcompressError, new_model, prune, quantize
from ..compress.bit_allocation import WIDTHS
from ..data.decode import decode_images
from ..data.folder import ImageFolderData
from ..measure.cost import count_parameters, measure_latencies
from ..measure.latency import LatencyTarget, get_runtime
from ..preflight import MB, Preflight, training_bytes
from ..process import log, usable_cores
from .deploy import export_variants
from .recipe import Recipe

SIZE_MARGIN = 0.5  # a byte or parameter budget is refused below this fraction of the smallest estimate


@dataclass(frozen=True)
class StagePlan:
    name: str
    work: str  # what the stage does, in words
    seconds: float | None = None  # estimated from measured batches; None where not measured


@dataclass(frozen=True)
class RunPlan:
    stages: tuple[StagePlan, ...]
    splits: dict  # ImageFolderData.describe() of the student's data
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    disk_bytes: int
    smallest: dict | None  # the smallest model the recipe can make (estimated): name, params, bytes

    @property
    def seconds(self) -> float | None:
        timed = [s.seconds for s in self.stages if s.seconds is not None]
        return sum(timed) if timed else None

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": self.seconds}


class _Networks:
    """The networks a recipe trains, built once (untrained) for their sizes and their timing."""

    def __init__(self, recipe: Recipe, data: ImageFolderData, check: Preflight):
        self.recipe, self.data, self.check = recipe, data, check
        self.built: dict[str, nn.Module | None] = {}

    def get(self, key: str, model: str, size: int, **kwargs) -> nn.Module | None:
        if key not in self.built:
            self.built[key] = self.check.attempt(new_model, model, self.data.class_names, size,
                                                 self.recipe.data.channels, **kwargs)
        return self.built[key]


def check_recipe(recipe: Recipe, run_dir, **targets) -> RunPlan:
    """The plan of `recipe` (not timed); every problem found raised in one NetcompressError."""
    plan = plan_recipe(recipe, run_dir, **targets)
    check = Preflight(f"run {run_dir}")
    check.add(*plan.problems)
    check.raise_if_any()
    return plan


def plan_recipe(recipe: Recipe, run_dir, *, target_bytes: int | None = None, target_params: int | None = None,
                target_latency: LatencyTarget | None = None, cache_dir=None, device: torch.device | None = None,
                measure: bool = False, progress: bool = False, rates: dict | None = None) -> RunPlan:
    """What running `recipe` into `run_dir` will do and need. measure: time a few training batches of every
    network on `device` for the time estimate (a few seconds per network); rates: those timings, kept across calls
    that plan variants of one recipe (each network is timed once)."""
    check, notes = Preflight("recipe"), []
    d = recipe.data
    splits = ("training", "validation", "testing") if recipe.evaluate.test else ("training", "validation")
    data = check.data(splits, d.root, d.image_size, channels=d.channels, labels_csv=d.labels or None,
                      val_fraction=d.val_fraction, test_from=d.test_from, seed=recipe.seed, cache_dir=cache_dir,
                      skip_bad=d.skip_bad, progress=False)
    described = data.describe() if data is not None else {}
    if data is not None and data.test_is_validation:
        notes.append("test figures are measured on the validation split (test_from = \"validation\"): the models "
                     "are chosen on the same images, so the test accuracy of a choice is optimistic")
    teacher_size = recipe.teacher.image_size or d.image_size
    if recipe.teacher.file:
        spec = check.model_file(recipe.teacher.file, "teacher")
        check.matches(spec, data, recipe.teacher.file, "teacher")
        teacher_size = spec.input_size if spec is not None and spec.input_size else teacher_size
    for runtime in {p.runtime for p in recipe.prune if p.target_latency_ms} | (
            {target_latency.runtime} if target_latency else set()):
        check.attempt(get_runtime, runtime)
    stages: list[StagePlan] = []
    disk = 0
    if data is not None:
        nets = _Networks(recipe, data, check)
        n_train = described.get("training", {}).get("images", 0)
        n_val = described.get("validation", {}).get("images", 0)
        clock = _Clock(device or torch.device("cpu"), recipe.data.channels, measure, progress,
                       {} if rates is None else rates)
        stages, disk = _stages(recipe, nets, clock, n_train, n_val, teacher_size)
        if measure:
            images = sum(s["images"] for s in described.values())
            stages.insert(0, StagePlan("decode", f"decode {images:,} images once (later runs read the cache)",
                                       clock.decode(data, teacher_size, images)))
        smallest = _smallest(recipe, nets, notes) if measure or target_bytes or target_params else None
        _check_budgets(check, notes, smallest, recipe, target_bytes, target_params)
    else:
        smallest = None
    for flag, value in (("--target-bytes", target_bytes), ("--target-params", target_params)):
        if value is not None and value < 1:
            check.add(f"{flag} {value}: a budget must be a positive number")
    check.output(Path(run_dir), disk)
    return RunPlan(tuple(stages), described, tuple(check.problems), tuple(notes), disk, smallest)


class _Clock:
    """Seconds per image of a network's training step and forward pass, measured on random batches."""

    def __init__(self, device: torch.device, channels: int, measure: bool, progress: bool, found: dict):
        self.device, self.channels, self.measure, self.progress = device, channels, measure, progress
        self.found: dict[tuple, tuple[float, float, float]] = found  # by network kind, size and input size

    def rates(self, net: nn.Module | None, size: int) -> tuple[float, float, float] | None:
        """(training, forward) seconds per image and the seconds of measuring one model of it (the latencies every
        stage records for each model it makes), or None when not measuring."""
        if not self.measure or net is None:
            return None
        key = (type(net).__name__, count_parameters(net), size, str(self.device))
        if key not in self.found:
            if self.progress:
                log(f"[plan] timing {type(net).__name__} at {size} px")
            t0 = time.perf_counter()
            measure_latencies(net)
            self.found[key] = (*_time_network(net, size, self.channels, self.device), time.perf_counter() - t0)
        return self.found[key]

    def decode(self, data: ImageFolderData, size: int, images: int) -> float | None:
        """Seconds to decode `images` images, timed on a few of the folder's files."""
        if not self.measure:
            return None
        files = data.listed_files(data.source)[:8]
        if not files:
            return None
        t0 = time.perf_counter()
        decode_images("plan", files, size, self.channels, True, False)
        per_image = (time.perf_counter() - t0) / len(files)
        return per_image * images / usable_cores()  # the cache decodes in parallel


def _time_network(net: nn.Module, size: int, channels: int, device: torch.device, batch: int = 16,
                  rounds: int = 3) -> tuple[float, float]:
    net = net.to(device)
    x = torch.rand(batch, channels, size, size, device=device)
    y = torch.zeros(batch, dtype=torch.int64, device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-6)
    net.train()
    times = []
    for _ in range(rounds + 1):  # the first round warms up
        t0 = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    net.eval()
    with torch.no_grad():
        net(x)
        t0 = time.perf_counter()
        net(x)
        forward = time.perf_counter() - t0
    return min(times[1:]) / batch, forward / batch


def _stages(recipe: Recipe, nets: _Networks, clock: _Clock, n_train: int, n_val: int,
            teacher_size: int) -> tuple[list[StagePlan], int]:
    """Every stage with what it does, its estimated seconds (when timed) and the disk it writes."""
    t, s, size = recipe.teacher, recipe.student, recipe.data.image_size
    stages, disk = [], 0

    def epochs_cost(rates, epochs: int, extra_per_image: float = 0.0, models: int = 1) -> float | None:
        """Training `epochs` (validating after each) and measuring the `models` the stage writes."""
        if rates is None:
            return None
        train, forward, measure = rates
        return epochs * (n_train * (train + extra_per_image) + n_val * forward) + models * (measure + n_val * forward)

    never = s.teach == "never"
    teacher = None if t.file or never else nets.get("teacher", t.model, teacher_size)
    teacher_rates = None if t.file or never else clock.rates(teacher, teacher_size)
    if t.file and not never:
        stages.append(StagePlan("teacher", f"use {t.file}", None))
    elif not never:
        stages.append(StagePlan("teacher", f"train {t.model} for {t.epochs} epochs at {teacher_size} px",
                                epochs_cost(teacher_rates, t.epochs)))
        disk += training_bytes(count_parameters(teacher)) if teacher is not None else 0
    teacher_forward = teacher_rates[1] if teacher_rates else 0.0
    live = 0.0 if s.views else teacher_forward  # the teacher runs at every step unless its views are cached
    students = [("student", s, size, not never)] + [(v.stage, s.for_variant(v), v.image_size or size,
                                                    v.teacher and not never) for v in recipe.student_variant]
    if never and any(not taught and student == s and at == size for _, student, at, taught in students[1:]):
        students = students[1:]  # untaught, the student is its plain twin: not trained twice
    student_rates = None
    for name, student, at, taught in students:
        model, args = student.model, student.model_args
        net = nets.get(name, model, at, **args)
        rates = clock.rates(net, at)
        student_rates = student_rates or rates
        # the teacher's views are computed once, for the first student taught, and shared
        views = (s.views * n_train * teacher_forward) if s.views and rates and name == "student" else 0.0
        cost = epochs_cost(rates, student.epochs, live if taught else 0.0)
        what = ((f"distill {model}" if taught else f"train {model}") + _args(args)
                + (f" at {at} px" if at != size else "") + f" for {student.epochs} epochs"
                + ((f" from {s.views} cached teacher views" if s.views else "") if taught else " on the labels alone"))
        stages.append(StagePlan(name, what, None if cost is None else cost + views))
        disk += training_bytes(count_parameters(net)) if net is not None else 0
        disk += s.views * n_train * len(nets.data.class_names) * 4 if name == "student" else 0
    student_params = count_parameters(nets.built["student"]) if nets.built.get("student") is not None else 0
    for p in recipe.prune:
        what = (f"prune to {p.target_latency_ms} ms on {p.runtime}" if p.target_latency_ms
                else f"prune with {p.method} to rate {p.rate} in {p.steps} step(s)")
        epochs = p.sparsity_epochs + p.steps * p.finetune_epochs
        stages.append(StagePlan(p.stage, f"{what}, {p.finetune_epochs} fine-tuning epochs a step",
                                epochs_cost(student_rates, epochs, live if p.distill else 0.0, p.steps + 1)))
        disk += p.steps * training_bytes(student_params)
    for lr in recipe.lowrank:
        stages.append(StagePlan(lr.stage, f"factorize the student, {lr.finetune_epochs} fine-tuning epochs",
                                epochs_cost(student_rates, lr.finetune_epochs, live if lr.distill else 0.0, 3)))
        disk += 2 * training_bytes(student_params)
    if recipe.compare_arch.run:
        c = recipe.compare_arch
        stages.append(StagePlan("compare-arch", f"train 3 architectures of about {c.budget_params:,} parameters "
                                f"for {c.epochs} epochs", epochs_cost(student_rates, 3 * c.epochs, models=3)))
        disk += 3 * training_bytes(c.budget_params)
    sources = len(students) + sum(p.steps for p in recipe.prune) + len(recipe.lowrank)  # the candidates
    networks = [(nets.built.get(name), at) for name, _, at, _ in students]
    networks += [networks[0]] * (sources - len(students))  # pruned and factorized: as the student, at most

    def codec_cost(cfg, net: nn.Module | None, at: int) -> float | None:
        """Storing one model: its validation pass, its quantization-aware epochs, and for a byte budget the
        sensitivity search (every quantizable tensor alone at every width, on the calibration images)."""
        rates = clock.rates(net, at)
        if rates is None:
            return None
        qat = QAT_SLOWDOWN * epochs_cost(rates, cfg.finetune_epochs, models=0) if cfg.finetune_epochs else 0
        cost = n_val * rates[1] + qat
        if cfg.budget:
            tensors = sum(1 for t in net.state_dict().values() if t.dim() >= 2)
            passes = tensors * len([b for b in WIDTHS if b <= cfg.width])
            cost += SEARCH_SLOWDOWN * passes * cfg.calibration * rates[1]
        return cost

    for q in recipe.quantize:
        (cfg,) = q.configs(recipe.seed)
        qat = cfg.finetune_epochs
        stored = min(q.best, sources) if q.best else sources
        costs = [codec_cost(cfg, net, at) for net, at in networks]
        seconds = None if None in costs else sum(sorted(costs, reverse=True)[:stored])  # the dearest, to be safe
        stages.append(StagePlan(q.stage, f"store {stored} model(s) with {cfg.codec}"
                                + (f" (the most accurate that fit {q.within_bytes:,} bytes)" if q.within_bytes
                                   else " (the most accurate)" if q.best else "")
                                + (f", {qat} epochs of quantization-aware training each" if qat else "")
                                + (", bits chosen by each tensor's measured sensitivity" if cfg.budget else ""),
                                seconds))
        disk += sources * student_params
    if recipe.deploy.run:
        (cfg,) = recipe.deploy.configs(recipe.seed)
        deployed = len(students) if recipe.deploy.models == "students" else sources
        files = sum(len(export_variants(target, cfg)) for target in cfg.chosen_targets())
        stages.append(StagePlan("deploy", f"write {deployed} model(s) as {files} deployment file(s) each "
                                f"({', '.join(cfg.chosen_targets())}), measure each as it ships",
                                None if student_rates is None else deployed * files * (2 * n_val * student_rates[1]
                                                                                       + DEPLOY_FILE_SECONDS)))
        disk += deployed * files * student_params
    timed = sources + 3 * recipe.compare_arch.run  # and the teacher: every fp32 model, timed together at the end
    together = (student_rates[2] * timed + (teacher_rates[2] if teacher_rates else 0.0)) if student_rates else None
    stages.append(StagePlan("latency", f"time the run's {timed + 1} fp32 models together on each runtime", together))
    return stages, disk


# measured against these estimates on a 2-core CPU (the Lite0 7-block student at 96 px): quantization-aware epochs
# (fake-quantized weights) took 1.6x a plain epoch, and the mixed-precision search 1.7x its forward passes alone
# (each tensor's quantization round trip and the KL)
QAT_SLOWDOWN = 1.6
SEARCH_SLOWDOWN = 1.7
DEPLOY_FILE_SECONDS = 15  # export, calibration, timing and a fresh process's memory, per file (about 15 s for a
# StudentNet at 32 px on 2 cores: 6 files in 90-110 s)


def _args(args: dict) -> str:
    return "".join(f" {key}={value}" for key, value in args.items())


def _smallest(recipe: Recipe, nets: _Networks, notes: list[str]) -> dict | None:
    """The smallest file the recipe can make, estimated on untrained networks: the fewest-parameter source
    (student, variants, each rate-pruned model), as fp32 and through each codec. Latency pruning and low-rank
    factorization are not estimated (their sizes follow from trained weights)."""
    student = nets.built.get("student")
    if student is None:
        return None
    sources = {"student": student}
    sources.update({name: net for name, net in nets.built.items() if name.startswith("student-") and net is not None})
    for p in recipe.prune:
        if p.target_latency_ms or p.source == "teacher":
            continue
        (cfg, _) = p.configs(recipe.seed)
        model = student
        try:
            for _ in range(p.steps):
                model = prune(model, cfg)
        except NetcompressError:  # a method that ranks by gradients needs trained weights and data
            notes.append(f"{p.stage} is left out of the smallest-model estimate (its method needs data)")
            continue
        sources[p.stage] = model
    name, model = min(sources.items(), key=lambda item: count_parameters(item[1]))
    sizes = {"fp32": count_parameters(model) * 4}
    for q in recipe.quantize:
        (cfg,) = q.configs(recipe.seed)
        try:
            stored = quantize(model, replace(cfg, budget=None, finetune_epochs=0), progress=False)
        except NetcompressError:
            continue
        sizes[q.stage] = stored.nbytes
    codec = min(sizes, key=sizes.get)
    if any(p.target_latency_ms for p in recipe.prune) or recipe.lowrank:
        notes.append("latency pruning and low-rank factorization are left out of the smallest-model estimate")
    return {"name": name, "codec": codec, "params": count_parameters(model), "bytes": sizes[codec]}


def _check_budgets(check: Preflight, notes: list[str], smallest: dict | None, recipe: Recipe,
                   target_bytes: int | None, target_params: int | None) -> None:
    if smallest is None or any(p.target_latency_ms for p in recipe.prune):
        return  # a latency-pruned model's size is known only once it is pruned
    where = f"{smallest['name']} ({smallest['params']:,} parameters), {smallest['codec']}"
    fix = ("add a [[prune]] table with a lower rate or more steps, a smaller [[student_variant]], or a lower-bit "
           "[[quantize]] codec")
    if target_bytes is not None and 0 < target_bytes < SIZE_MARGIN * smallest["bytes"]:
        check.add(f"--target-bytes {target_bytes:,}: the smallest model this recipe makes is about "
                  f"{smallest['bytes']:,} bytes ({where}, estimated on untrained weights): {fix}")
    if target_params is not None and 0 < target_params < SIZE_MARGIN * smallest["params"]:
        check.add(f"--target-params {target_params:,}: the smallest model this recipe makes has about "
                  f"{smallest['params']:,} parameters ({where}): {fix}")
    for budget in recipe.evaluate.budgets:
        if budget < SIZE_MARGIN * smallest["bytes"]:
            notes.append(f"[evaluate] budget {budget:,} bytes is below the smallest model's estimate "
                         f"({smallest['bytes']:,}): no model will be chosen for it")


def disk_text(nbytes: int) -> str:
    return f"{nbytes / MB:,.0f} MB"
