"""`netcompress run`, `report` and `compare-arch`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import TrainConfig
from ..pipeline.compare_arch import compare
from ..pipeline.plan import RunPlan, disk_text, plan_recipe
from ..pipeline.recipe import load_recipe
from ..pipeline.report import write_report
from ..pipeline.stages import run_recipe
from ..preflight import Preflight, training_bytes
from ..process import resolve_device
from .common import (
    LATENCY_COLUMNS,
    BatchSizeOpt,
    CacheOpt,
    ChannelsOpt,
    DataOpt,
    DeviceOpt,
    FinetuneAlphaOpt,
    FinetuneTemperatureOpt,
    JsonOpt,
    LabelsOpt,
    LatencyBatchOpt,
    ProgressOpt,
    RuntimeOpt,
    RuntimeThreadsOpt,
    SeedOpt,
    SkipBadOpt,
    TargetLatencyOpt,
    TeacherOpt,
    TestFromOpt,
    ThreadsOpt,
    ValFractionOpt,
    app,
    console,
    distill_config,
    emit,
    folder,
    latency_target,
    rows_table,
    set_threads,
    with_latencies,
)


@app.command("compare-arch")
def compare_arch_cmd(
    data: Path = DataOpt,
    budget_params: Optional[int] = typer.Option(None, "--budget-params", help="Parameter budget (±5%) for every family."),
    budget_bytes: Optional[int] = typer.Option(None, "--budget-bytes", help="Or: bytes of the file after the course's 8-bit codec."),
    epochs: int = typer.Option(30, "--epochs"),
    groups: int = typer.Option(2, "--groups", help="Groups of the group-convolution family (never 1 or the channel count)."),
    image_size: int = typer.Option(96, "--image-size"),
    teacher: Optional[Path] = TeacherOpt,
    temperature: float = FinetuneTemperatureOpt,
    alpha: float = FinetuneAlphaOpt,
    out: Path = typer.Option(Path("runs/compare-arch"), "--out", help="Run directory (resumable)."),
    batch_size: int = BatchSizeOpt,
    lr: float = typer.Option(1e-3, "--lr"),
    channels: int = ChannelsOpt,
    labels: Optional[Path] = LabelsOpt,
    val_fraction: Optional[float] = ValFractionOpt,
    test_from: Optional[str] = TestFromOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    skip_bad: bool = SkipBadOpt,
    cache_dir: Optional[Path] = CacheOpt,
    progress: bool = ProgressOpt,
    as_json: bool = JsonOpt,
):
    """Plain vs depthwise & pointwise vs group convolution at one budget (the seed's question 4).

    Each family's width is searched until its parameters (or its 8-bit file) lie within ±5% of
    the budget; all train with the same recipe; OUT/compare.json and OUT/compare.png hold the result.

    Example: netcompress compare-arch --data ../shared/data/food101_10 --budget-params 250000 --epochs 20 --image-size 64 --out runs/arch
    """
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    set_threads(threads)
    check = Preflight("compare-arch")
    ds = folder(data, image_size, cache_dir, skip_bad, progress, channels=channels, labels=labels,
                val_fraction=val_fraction, test_from=test_from, check=check)
    if teacher is not None:
        check.matches(check.model_file(teacher, "teacher"), ds, teacher, "teacher")
    check.output(out, 3 * training_bytes(budget_params or (budget_bytes or 0)))
    check.raise_if_any()
    rows = compare(ds, cfg, out, device=resolve_device(device), params=budget_params, bytes_int8=budget_bytes,
                   groups=groups, teacher=teacher, distill=distill_config(teacher, temperature, alpha),
                   progress=progress)
    table = rows_table(f"architectures at {budget_params or budget_bytes:,} "
                       f"{'parameters' if budget_params else 'bytes (8-bit)'}",
                       {"architecture": "architecture", "params": "params", "bytes": "file_bytes",
                        "8-bit bytes": "int8_bytes", "MACs": "macs", **LATENCY_COLUMNS, "val acc": "val_accuracy"},
                       with_latencies(rows))
    emit({"rows": rows}, as_json, table)


@app.command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="Recipe TOML file, e.g. recipes/demo.toml."),
    out: Path = typer.Option(Path("runs/recipe"), "--out", help="Run directory; rerunning skips finished stages."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe field: section.field=value, or seed=N (repeatable)."),
    target_bytes: Optional[int] = typer.Option(None, "--target-bytes", help="Choose the best model with a file of at most N bytes."),
    target_params: Optional[int] = typer.Option(None, "--target-params", help="Choose the best model with at most N parameters."),
    target_latency: Optional[float] = TargetLatencyOpt,
    runtime: str = RuntimeOpt,
    latency_batch: int = LatencyBatchOpt,
    runtime_threads: int = RuntimeThreadsOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    cache_dir: Optional[Path] = CacheOpt,
    check: bool = typer.Option(False, "--check", help="Print the plan (stages with estimated times from a few "
                               "measured batches, splits with their sizes, the smallest model it can make, the disk "
                               "it needs) and every problem found, then exit without training."),
    progress: bool = ProgressOpt,
    as_json: bool = JsonOpt,
):
    """Run a whole recipe (teacher, distillation, pruning, evaluation) into one directory, then write the report.

    Before the first epoch the run checks everything it will need (splits, teacher file, output
    folder and free space, budgets, runtimes) and reports every problem at once; --check shows
    that plan and stops.

    A killed run, rerun with the same command, skips finished stages and resumes the one it was in.
    --target-latency adds a pruning run to that latency (unless the recipe has one) and chooses the most
    accurate model that runs within it, every candidate measured on --runtime side by side.

    Example: netcompress run recipes/demo.toml --out runs/demo --target-bytes 300000 --set student.epochs=5

    Example: netcompress run recipes/demo.toml --out runs/demo --target-latency 0.12 --runtime ort --batch 1
    """
    parsed = load_recipe(recipe, overrides)
    set_threads(threads)
    target = latency_target(target_latency, runtime, latency_batch, runtime_threads)
    if check:
        plan = plan_recipe(parsed, out, target_bytes=target_bytes, target_params=target_params, target_latency=target,
                           cache_dir=cache_dir, device=resolve_device(device), measure=True, progress=progress)
        _show_plan(plan, recipe, out, as_json)
        raise typer.Exit(2 if plan.problems else 0)
    summary = run_recipe(parsed, out, resolve_device(device), target_bytes=target_bytes, target_params=target_params,
                         target_latency=target, cache_dir=cache_dir, progress=progress)
    _, html = write_report(out)
    if as_json:
        emit(summary, True)
        return
    rows = [{**a, "test": summary["test"].get(a["name"])} for a in summary["artifacts"]]
    console.print(rows_table(f"{recipe.name} -> {out}", {"model": "name", "bytes": "file_bytes", "params": "params",
                                                          "val acc": "val_accuracy", "test acc": "test"}, rows))
    for key in ("budget", "latency_budget"):
        if summary[key]:
            console.print(f"{key.replace('_', ' ')} choice: {summary[key]['chosen']} ({summary[key]['file']})")
    console.print(f"report: {html}")


def _show_plan(plan: RunPlan, recipe: Path, out: Path, as_json: bool) -> None:
    if as_json:
        emit(plan.to_dict(), True)
        return
    splits = [{"split": name, "from": s["from"], "images": s["images"],
               "per class": f"{min(s['per_class'].values())}-{max(s['per_class'].values())}" if s["per_class"] else "",
               "labeled": "yes" if s["labeled"] else "no (no test accuracy)"} for name, s in plan.splits.items()]
    console.print(rows_table(f"{recipe.name}: splits", {k: k for k in ("split", "from", "images", "per class",
                                                                       "labeled")}, splits))
    stages = [{"stage": s.name, "work": s.work, "time": "" if s.seconds is None else minutes(s.seconds)}
              for s in plan.stages]
    total = "" if plan.seconds is None else f" (about {minutes(plan.seconds)} on this machine now, from measured batches)"
    console.print(rows_table(f"{recipe.name} -> {out}: stages{total}", {"stage": "stage", "work": "work",
                                                                         "estimated": "time"}, stages))
    if plan.smallest:
        m = plan.smallest
        console.print(f"smallest model it can make: about {m['bytes']:,} bytes, {m['params']:,} parameters "
                      f"({m['name']}, {m['codec']}; estimated on untrained weights)")
    console.print(f"disk for the run's files: about {disk_text(plan.disk_bytes)} in {out}")
    for note in plan.notes:
        console.print(f"note: {note}")
    for problem in plan.problems:
        console.print(f"[red]problem:[/red] {problem}")
    if not plan.problems:
        console.print("no problems found")


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory made by `netcompress run`.")):
    """Write RUN_DIR/report.md and a self-contained RUN_DIR/report.html (tables, plots, environment).

    Example: netcompress report runs/demo
    """
    md, html = write_report(run_dir)
    console.print(f"wrote {md} and {html}")
