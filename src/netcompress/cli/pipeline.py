"""`netcompress run`, `report` and `compare-arch`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import TrainConfig
from ..pipeline.compare_arch import compare
from ..pipeline.recipe import load_recipe
from ..pipeline.report import write_report
from ..pipeline.stages import run_recipe
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
    val_fraction: float = ValFractionOpt,
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
    ds = folder(data, image_size, cache_dir, skip_bad, progress, channels=channels, labels=labels,
                val_fraction=val_fraction)
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
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe field: section.field=value (repeatable)."),
    target_bytes: Optional[int] = typer.Option(None, "--target-bytes", help="Choose the best model with a file of at most N bytes."),
    target_params: Optional[int] = typer.Option(None, "--target-params", help="Choose the best model with at most N parameters."),
    target_latency: Optional[float] = TargetLatencyOpt,
    runtime: str = RuntimeOpt,
    latency_batch: int = LatencyBatchOpt,
    runtime_threads: int = RuntimeThreadsOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    cache_dir: Optional[Path] = CacheOpt,
    progress: bool = ProgressOpt,
    as_json: bool = JsonOpt,
):
    """Run a whole recipe (teacher, distillation, pruning, evaluation) into one directory, then write the report.

    A killed run, rerun with the same command, skips finished stages and resumes the one it was in.
    --target-latency adds a pruning run to that latency (unless the recipe has one) and chooses the most
    accurate model that runs within it, every candidate measured on --runtime side by side.

    Example: netcompress run recipes/demo.toml --out runs/demo --target-bytes 300000 --set student.epochs=5

    Example: netcompress run recipes/demo.toml --out runs/demo --target-latency 0.12 --runtime ort --batch 1
    """
    parsed = load_recipe(recipe, overrides)
    set_threads(threads)
    target = latency_target(target_latency, runtime, latency_batch, runtime_threads)
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


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory made by `netcompress run`.")):
    """Write RUN_DIR/report.md and a self-contained RUN_DIR/report.html (tables, plots, environment).

    Example: netcompress report runs/demo
    """
    md, html = write_report(run_dir)
    console.print(f"wrote {md} and {html}")
