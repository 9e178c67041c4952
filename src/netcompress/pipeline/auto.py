"""`auto`: the most accurate model for the user's own data within a byte budget and a time budget, by measured search.

It writes a recipe for the data, the budget and the time, RUN/auto.toml, and runs it like any recipe (a rerun
resumes it, with the same plan), in two rounds, every choice made on validation.

The first round compares, for a few epochs each:
- the plain baseline: the course's StudentNet trained on the labels alone, at the data's own size;
- a pretrained truncated EfficientNet-Lite0 student (as many blocks as the budget can hold at 4 bits) trained on
  the labels alone, at the size its ImageNet features need (at least 64 px), and, where that is an upsampling, at
  the data's own size too, so that validation, not an assumption, says whether the upsampling pays;
- an EfficientNet-Lite0 teacher, trained as many epochs as they are and used only where it beats every plain
  student by more than validation's noise (`teach = "if-better"`): a weaker teacher teaches its mistakes; the
  StudentNet distilled from it where it is used.

The second round gives the time left to the finalist: the most accurate first-round student, trained on from its
weights for as many epochs as fit (distilled where the teacher is used). Then the two most accurate models whose
4- and 3-bit files fit get quantization-aware fine-tuning, and the two most accurate the mixed-precision codec that
fits the budget (what a user of the plain baseline would do), and the most accurate file within the budget is
chosen and tested once. A search that splits the time evenly starves every candidate: on the sample data in 30
minutes, eight students got 3 epochs each, where the pretrained students need 20 or more.

Time: a few training batches of every network are timed (plan.py); the first round's epochs (and the plan's
finalist, assumed to be the pretrained student) are scaled by one factor, the largest whose estimate fits the
time left after planning; the finalist's epochs are then set from the time actually left, at the pace the first round
ran against its estimates (timed batches of 16 random images misjudge an epoch: on 2 idle cores, a run on the
sample data that trusted them ended at 21.8 of its 30 min). Where the finalist
would get less than a quarter of the time, the teacher goes, then quantization-aware fine-tuning; where even one epoch
each does not fit, auto stops and says how much time it needs.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from ..data.folder import ImageFolderData
from ..errors import NetcompressError
from ..files import atomic_write_text, json_text
from ..formats.load import list_exporters
from ..measure.latency import LatencyTarget
from ..models import model_kwargs
from ..models.registry import create_model
from ..process import log, machine_state, resolve_device
from .budgets import codec_losses, standard_error
from .deploy import runtimes_reading
from .plan import RunPlan, plan_recipe
from .recipe import StudentVariantSection, load_recipe
from .records import stage_wall_seconds
from .report import write_report
from .stages import run_recipe

# epochs at factor 1. The first round's students get the teacher's epochs, so that the teacher is weighed against
# them fairly (with a third of them, a teacher that lost at equal epochs won); the finalist the results recipe's 30.
FULL = {"teacher": 10, "probe": 10, "final": 30, "qat": 3, "prune": 5}
PRETRAINED_SIZE = 64  # ImageNet features fade below this input size (the Lite0 students lost to StudentNet at 32 px)
MAX_SIZE = 96
VIEWS = 8  # cached teacher views of every image, at most one per student epoch
QAT_MODELS = 2  # the models fine-tuned for each low-bit codec
FINAL_MAX = 300  # the finalist's epochs where time allows (on 8x8 digits, 30 left half the time unused)
FINAL_SHARE = 0.25  # the finalist's share of the time at least, else the teacher goes (then QAT)
BUDGET_CALIBRATION = 64  # images for the mixed-precision codec's sensitivity search (256 took 7 min for 6 models)
BASELINE_STAGE = "student-plain"  # the recipe's first [[student_variant]]: [student] on the labels alone


@dataclass(frozen=True)
class AutoConfig:
    """target_bytes: the largest model file to choose; time_s: the time the whole run may take (seconds);
    image_size: the students' input size (0: the data's own, at most 96 px); latency: a latency budget besides the
    bytes (the StudentNet is also pruned to it, and every student is written as the files its runtime runs)."""

    target_bytes: int
    time_s: float = 1800.0
    image_size: int = 0
    seed: int = 0
    latency: LatencyTarget | None = None

    def __post_init__(self):
        if not 1_000 <= self.target_bytes <= 10**10:
            raise NetcompressError(f"target_bytes = {self.target_bytes}: a model file of 1,000 bytes to 10 GB")
        if not 60 <= self.time_s <= 7 * 86400:
            raise NetcompressError(f"time = {self.time_s:g} s: give at least a minute and at most a week")
        if self.image_size and not 8 <= self.image_size <= 1024:
            raise NetcompressError(f"image_size = {self.image_size}: use 8..1024, or 0 for the data's own")


def native_size(data: ImageFolderData, sample: int = 200) -> int:
    """The median shorter side of the training images (their headers only), capped at MAX_SIZE, a multiple of 8."""
    listed = data.listed_files(data.source)
    files = listed[:: max(1, len(listed) // sample)][:sample]
    sides = []
    for f in files:
        try:
            with Image.open(f) as im:
                sides.append(min(im.size))
        except OSError:
            continue
    if not sides:
        raise NetcompressError(f"{data.root}: none of its training images could be opened")
    return max(16, min(MAX_SIZE, int(statistics.median(sides)) // 8 * 8))


def lite0_depth(target_bytes: int, num_classes: int) -> int:
    """The truncated Lite0 student worth training: the deepest whose 4-bit file fits the budget (parameters counted
    on the meta device), at least 2 blocks."""
    for blocks in range(16, 2, -1):
        with torch.device("meta"):
            net = create_model("efficientnet_lite0", **model_kwargs("efficientnet_lite0", blocks=blocks,
                                                                   num_classes=num_classes, pretrained=False))
        if sum(p.numel() for p in net.parameters()) * 0.5 * 1.1 <= target_bytes:  # 4 bits, 10% for scales
            return blocks
    return 2


@dataclass(frozen=True)
class Candidates:
    size: int  # the data's own size: the plain StudentNet's
    pretrained_size: int  # the Lite0 student's
    blocks: int  # the Lite0 student's depth
    qat: bool = True  # quantization-aware fine-tuning (goes when time is short, after the teacher)
    teacher: bool = True  # a teacher, weighed against the plain students (the first to go when time is short)


@dataclass(frozen=True)
class Finalist:
    """The student trained longest: the most accurate first-round student, trained on from its weights."""

    model: str
    model_args: dict
    image_size: int  # 0: the data's
    epochs: int
    init: str = ""  # its first-round model file, relative to the run folder


def stand_in(c: Candidates, factor: float) -> Finalist:
    """The finalist the plan assumes before the first round has run: the pretrained student (the slowest)."""
    size = 0 if c.pretrained_size == c.size else c.pretrained_size
    return Finalist("efficientnet_lite0", {"blocks": c.blocks}, size, scaled(factor)["final"])


def scaled(factor: float) -> dict[str, int]:
    return {k: max(1, round(v * factor)) for k, v in FULL.items()}


def recipe_text(root: str, cfg: AutoConfig, c: Candidates, factor: float, finalist: Finalist | None = None) -> str:
    """The recipe auto runs, every stage's epochs scaled by `factor` (at least one each): the first round (the
    teacher and the students compared for a few epochs) alone, or with the finalist, the codecs and the budget."""
    epochs = scaled(factor)
    lite0 = ["[[student_variant]]", 'model = "efficientnet_lite0"', f"model_args = {{blocks = {c.blocks}}}"]
    px = [] if c.pretrained_size == c.size else [f"image_size = {c.pretrained_size}"]
    teacher = ["[teacher]", 'model = "efficientnet_lite0"', f"image_size = {c.pretrained_size}",
               f"epochs = {epochs['teacher']}", "lr = 5e-4", ""] if c.teacher else []
    lines = [f"# written by netcompress auto: --target-bytes {cfg.target_bytes} --time {cfg.time_s:g}s "
             f"(epochs scaled by {factor:.3f})", f"seed = {cfg.seed}", "", "[data]", f"root = {json.dumps(root)}",
             f"image_size = {c.size}", "", *teacher,
             "[student]", 'model = "studentnet"', f"epochs = {epochs['probe']}", "temperature = 4.0", "alpha = 0.9",
             f"views = {min(VIEWS, epochs['final']) if c.teacher else 0}",
             f"teach = \"{'if-better' if c.teacher else 'never'}\"", "",
             "[[student_variant]]", "teacher = false", "", *lite0, *px, "teacher = false", ""]
    if px:  # also at the data's own size: validation says whether upsampling pays
        lines += [*lite0, "teacher = false", ""]
    if finalist is None:
        return "\n".join([*lines, "[evaluate]", "test = false", ""])
    if finalist.epochs:
        args = ", ".join(f"{k} = {json.dumps(v)}" for k, v in finalist.model_args.items())
        lines += ["[[student_variant]]", f'model = "{finalist.model}"', f"model_args = {{{args}}}",
                  *([f"image_size = {finalist.image_size}"] if finalist.image_size else []),
                  f"epochs = {finalist.epochs}", *([f"init = {json.dumps(finalist.init)}"] if finalist.init else []),
                  ""]
    for bits in (4, 3):  # fine-tuned only for the two most accurate models whose file fits
        lines += ["[[quantize]]", 'codec = "kbit"', f"bits = {bits}", "entropy = true"]
        lines += [f"finetune_epochs = {epochs['qat']}", f"best = {QAT_MODELS}", f"within_bytes = {cfg.target_bytes}",
                  ""] if c.qat else [""]
    lines += ["[[quantize]]", 'codec = "kbit"', "bits = 8", "entropy = true", f"budget = {cfg.target_bytes}",
              f"calibration = {BUDGET_CALIBRATION}", f"best = {QAT_MODELS}", ""]
    if cfg.latency:  # the StudentNet pruned to the latency, and every student as the files that ship on its runtime
        t = cfg.latency
        lines += ["[[prune]]", 'method = "l2"', f"target_latency_ms = {t.ms:g}", f'runtime = "{t.runtime}"',
                  f"batch = {t.batch}", f"threads = {t.threads}", f"finetune_epochs = {epochs['prune']}", ""]
        targets = [target for target in list_exporters() if t.runtime in runtimes_reading(target)]
        if targets:
            lines += ["[deploy]", "run = true", f"targets = {json.dumps(targets)}", ""]
    lines += ["[evaluate]", f"budgets = [{cfg.target_bytes}]", ""]
    return "\n".join(lines)


def stage_costs(low_stages, high_stages, low: float, high: float) -> list[tuple[float, float]]:
    """Each stage's estimated seconds as fixed + per_factor x factor, from its estimates at two factors (a stage's
    work is linear in its epochs), stage by stage in the plans' order."""
    costs = []
    for a, b in zip(low_stages, high_stages):
        sa, sb = a.seconds or 0.0, b.seconds or 0.0
        slope = max(0.0, (sb - sa) / (high - low))
        costs.append((sa - slope * low, slope))
    return costs


def largest_factor(costs: list[tuple[float, float]], seconds: float, floor: float) -> float | None:
    """The largest factor in [floor, 1] whose total estimate fits `seconds`, or None when even `floor` does not."""
    def total(f: float) -> float:
        return sum(fixed + slope * f for fixed, slope in costs)

    if total(floor) > seconds:
        return None
    if total(1.0) <= seconds:
        return 1.0
    lo, hi = floor, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) <= seconds else (lo, mid)
    return lo


@dataclass(frozen=True)
class AutoPlan:
    recipe: str  # the first round's recipe (TOML)
    factor: float
    seconds: float  # estimated, the finalist assumed to be the pretrained student
    stages: tuple  # (name, what, estimated seconds)
    candidates: Candidates
    notes: tuple[str, ...]
    rates: dict  # the networks' measured timings, for planning the finalist


def planner(root: str, out: Path, cfg: AutoConfig, device: torch.device, progress: bool, rates: dict):
    """plan(candidates, factor, finalist): the plan of that recipe, every network timed once across calls."""
    scratch = out / "auto-plan"
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "plan.toml"

    def plan(c: Candidates, factor: float, finalist: Finalist | None) -> RunPlan:
        path.write_text(recipe_text(root, cfg, c, factor, finalist), encoding="utf-8")
        return plan_recipe(load_recipe(path), out, target_bytes=cfg.target_bytes, target_latency=cfg.latency,
                           device=device, measure=True, progress=progress, rates=rates)

    return plan


def plan_auto(root: str, out, cfg: AutoConfig, device: torch.device, progress: bool = True) -> AutoPlan:
    """The first round's recipe, with epochs scaled so that the whole run (a pretrained finalist assumed) fits the
    time measured."""
    data = ImageFolderData(root, 32, seed=cfg.seed, progress=False)
    size = cfg.image_size or native_size(data)
    c = Candidates(size, max(size, PRETRAINED_SIZE), lite0_depth(cfg.target_bytes, len(data.class_names)))
    notes = [f"students at {c.size} px (the training images' median shorter side, at most {MAX_SIZE})"
             + (f"; the pretrained Lite0 student and the teacher at {c.pretrained_size} px, which their ImageNet "
                "features need, and the student also at the data's own size" if c.pretrained_size != c.size else "")]
    rates, started = {}, time.perf_counter()
    plan = planner(root, Path(out), cfg, device, progress, rates)
    floor = 1 / max(FULL.values())  # one epoch of every stage
    fallback, shortest = None, None
    # the teacher goes first when time is short, then quantization-aware fine-tuning: the finalist comes first
    for attempt in (c, replace(c, teacher=False), replace(c, teacher=False, qat=False)):
        low, high = plan(attempt, floor, stand_in(attempt, floor)), plan(attempt, 1.0, stand_in(attempt, 1.0))
        if low.problems:
            raise NetcompressError("; ".join(low.problems))
        costs = stage_costs(low.stages, high.stages, floor, 1.0)
        left = cfg.time_s - (time.perf_counter() - started)  # the planning's own time counts
        factor = largest_factor(costs, left, floor)
        if factor is None:
            shortest = sum(fixed + slope * floor for fixed, slope in costs)
            continue
        whole = plan(attempt, factor, stand_in(attempt, factor))  # the stages' names at this factor
        stages = tuple((s.name, s.work, round(fixed + slope * factor, 1))
                       for s, (fixed, slope) in zip(whole.stages, costs))
        final = sum(seconds for name, _, seconds in stages if name == finalist_stage(stand_in(attempt, factor)))
        found = (final, attempt, factor, stages)
        if final >= FINAL_SHARE * cfg.time_s:
            break
        fallback = max(fallback, found, key=lambda f: f[0]) if fallback else found
    else:
        if fallback is None:
            raise NetcompressError(f"even one epoch of every stage needs about {shortest / 60:.0f} min here, more than "
                                   f"the {cfg.time_s / 60:.0f} min given: give more --time, or a smaller --image-size")
        found = fallback
    final, attempt, factor, stages = found
    if not attempt.teacher:
        notes.append(f"no teacher: with one, the finalist would get less than {FINAL_SHARE:.0%} of the time")
    if not attempt.qat:
        notes.append("no quantization-aware fine-tuning: it did not fit the time")
    return AutoPlan(recipe_text(root, cfg, attempt, factor), factor, sum(s[2] for s in stages), stages, attempt,
                    tuple(notes), rates)


def finalist_stage(finalist: Finalist) -> str:
    """The stage name a finalist's [[student_variant]] gets."""
    return StudentVariantSection(model_args=finalist.model_args, image_size=finalist.image_size, model=finalist.model,
                                 epochs=finalist.epochs, init=finalist.init).stage


def best_student(summary: dict, recipe) -> tuple[dict, Finalist]:
    """The most accurate student of the first round on validation, and its model, arguments, size and file."""
    made = {"student": recipe.student, **{v.stage: recipe.student.for_variant(v) for v in recipe.student_variant}}
    sizes = {v.stage: v.image_size for v in recipe.student_variant}
    students = [a for a in summary["artifacts"] if a["stage"] in made]
    best = max(students, key=lambda a: a["val_accuracy"])
    s = made[best["stage"]]
    return best, Finalist(s.model, dict(s.model_args), sizes.get(best["stage"], 0), 0, best["file"])


def final_epochs(plan, c: Candidates, factor: float, finalist: Finalist, out: Path, seconds: float) -> int:
    """The finalist's epochs: as many as fit `seconds` with the stages still to run (codecs, measuring), at most
    FINAL_MAX; 0 when not even one fits."""
    most = FINAL_MAX
    low, high = plan(c, factor, replace(finalist, epochs=1)), plan(c, factor, replace(finalist, epochs=most))
    pending = [(a, b) for a, b in zip(low.stages, high.stages) if not (out / a.name / "done.json").exists()]
    costs = stage_costs([a for a, _ in pending], [b for _, b in pending], 1 / most, 1.0)
    share = largest_factor(costs, seconds, 1 / most)
    return 0 if share is None else int(share * most + 1e-9)


def pace(out: Path, stages: list[dict]) -> float:
    """The finished stages' wall time over their planned estimates (1.0 before any): how much faster or slower
    than planned this machine runs this data, which the stages still to run are assumed to keep."""
    walls, planned = stage_wall_seconds(out), {s["stage"]: s["estimated_seconds"] for s in stages}
    timed = [name for name in walls if planned.get(name)]
    return sum(walls[n] for n in timed) / sum(planned[n] for n in timed) if timed else 1.0


def spent_seconds(out: Path, planning: float, wall: float) -> float:
    """A run's time so far: this call's wall time, or where it resumed an earlier call, the planning and every
    stage's own (done.json)."""
    return max(wall, planning + sum(stage_wall_seconds(out).values()))


def auto(root: str | Path, out: str | Path, config: AutoConfig, device: str | torch.device = "auto",
         progress: bool = True) -> dict:
    """Plan (or reload the plan of an earlier, interrupted call), run the first round, choose the finalist and give
    it the time left, run the rest, choose and report; returns RUN/auto.json's record: the plan, the finalist, the
    choice within the budget with its validation and test accuracy, the plain baseline's best within the budget,
    the teaching verdict, how validation was made and its noise, and the time taken."""
    out, device = Path(out), resolve_device(device)
    recipe_file, record_file = out / "auto.toml", out / "auto.json"
    started, rates = time.perf_counter(), {}
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.exists() else {}
    if recipe_file.exists() and "plan" in record:
        planned = record["plan"]
        if planned["config"] != json.loads(json.dumps(asdict(config))):
            raise NetcompressError(f"{out} holds an auto run planned with {planned['config']}: give the same settings "
                                   "to resume it, or another --out")
        if progress:
            log(f"[auto] resuming the plan in {recipe_file}")
    else:
        plan = plan_auto(str(root), out, config, device, progress)
        rates = plan.rates
        planned = {"config": asdict(config), "factor": plan.factor, "estimated_seconds": plan.seconds,
                   "planning_seconds": round(time.perf_counter() - started, 1),
                   "candidates": asdict(plan.candidates),
                   "stages": [{"stage": n, "work": w, "estimated_seconds": s} for n, w, s in plan.stages],
                   "notes": list(plan.notes)}
        record = {"plan": planned}
        atomic_write_text(recipe_file, plan.recipe)
        atomic_write_text(record_file, json_text(record))
        if progress:
            for stage in planned["stages"]:
                log(f"[auto] plan: {stage['stage']}: {stage['work']} (about {stage['estimated_seconds'] / 60:.1f} min)")
            log(f"[auto] about {plan.seconds / 60:.1f} of {config.time_s / 60:.1f} min (the finalist assumed to be "
                f"the pretrained student; its epochs follow from the time left); recipe in {recipe_file}")
    if "finalist" not in record:  # the first round, then the finalist with the time left
        first = load_recipe(recipe_file)
        summary = run_recipe(first, out, device, progress=progress)
        best, finalist = best_student(summary, first)
        c, factor = Candidates(**planned["candidates"]), planned["factor"]
        left = config.time_s - spent_seconds(out, planned["planning_seconds"], time.perf_counter() - started)
        plan, speed = planner(str(root), out, config, device, progress, rates), pace(out, planned["stages"])
        finalist = replace(finalist, epochs=final_epochs(plan, c, factor, finalist, out, left / speed))
        if finalist.epochs <= first.student.epochs:  # no longer than the first round: nothing to gain
            finalist = replace(finalist, epochs=0)
        record["finalist"] = {**asdict(finalist), "from": best["name"], "val_accuracy": best["val_accuracy"],
                              "seconds_left": round(left, 1), "pace": round(speed, 3)}
        atomic_write_text(recipe_file, recipe_text(str(root), config, c, factor, finalist))
        atomic_write_text(record_file, json_text(record))
        if progress:
            log(f"[auto] finalist: {best['name']} was the most accurate ({best['val_accuracy']:.3f}): "
                + (f"{finalist.epochs} epochs in the {left / 60:.1f} min left (the first round took {speed:.2f}x "
                   "its estimate)" if finalist.epochs
                   else "no time left to train it longer"))
    summary = run_recipe(load_recipe(recipe_file), out, device, target_bytes=config.target_bytes,
                         target_latency=config.latency, progress=progress)
    write_report(out)
    spent = max(spent_seconds(out, planned["planning_seconds"], time.perf_counter() - started),
                record.get("wall_seconds", 0.0))  # a finished run called again keeps its own time
    record = {"plan": planned, "finalist": record["finalist"], **evidence(summary, config.target_bytes),
              "wall_seconds": round(spent, 1), "time_given_seconds": config.time_s,
              "late": spent > 1.15 * config.time_s, "machine": summary.get("machine", machine_state())}
    atomic_write_text(record_file, json_text(record))
    return record


def evidence(summary: dict, target_bytes: int) -> dict:
    """Why the winner won: it, the plain baseline's best within the budget, the teaching verdict, every candidate's
    validation accuracy, and how noisy validation is."""
    artifacts = {a["name"]: a for a in summary["artifacts"]}
    latency = summary.get("latency_budget")  # chosen within the bytes and the latency, where a latency was given
    chosen = artifacts[(latency or summary["budget"])["chosen"]]
    fast = None if latency is None else {t["name"]: t["median_ms"] for t in latency["tried"] if t["fits"]}
    fits = [a for a in summary["artifacts"] if a.get("candidate", True) and a["file_bytes"] <= target_bytes
            and (fast is None or a["name"] in fast)]
    plain = {a["name"] for a in summary["artifacts"] if a["stage"] == BASELINE_STAGE}  # and its stored forms:
    baseline = [a for a in fits if a["name"] in plain or a.get("details", {}).get("source") in plain]
    best_baseline = max(baseline, key=lambda a: a["val_accuracy"]) if baseline else None
    images = summary.get("val_images", 0)
    validation = summary.get("splits", {}).get("validation", {})
    return {"chosen": {**{k: chosen.get(k) for k in ("name", "file", "file_bytes", "val_accuracy", "test_accuracy")},
                       **({} if fast is None else {"latency_ms": fast[chosen["name"]]})},
            "baseline": best_baseline and {k: best_baseline.get(k) for k in ("name", "file_bytes", "val_accuracy")},
            "teaching": summary.get("teaching"),
            "flagged": codec_losses(summary["artifacts"]),
            "validation": {"from": validation.get("from"), "images": images,
                           "standard_error": round(standard_error(chosen["val_accuracy"], images), 4)},
            "candidates": sorted(({"name": a["name"], "file_bytes": a["file_bytes"], "val_accuracy": a["val_accuracy"],
                                   **({} if fast is None else {"latency_ms": fast[a["name"]]})}
                                  for a in fits), key=lambda a: -a["val_accuracy"])}
