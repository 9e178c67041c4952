"""`netcompress deploy`: every export target x precision of a model, measured, and the fastest that keeps its
accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..formats.load import list_exporters
from ..pipeline.deploy import PRECISIONS, DeployConfig, deploy
from ..spec import spec_of
from .common import (CacheOpt, JsonOpt, Registered, app, console, data_for, emit, input_size_of, load_file,
                     set_threads)
from .options import model_size_option


def _names(value: str) -> tuple[str, ...]:
    """A comma-separated choice (checked by its option); () for all."""
    return () if value == "all" else tuple(v.strip() for v in value.split(","))


@app.command("deploy")
def deploy_cmd(
    model_file: Path = typer.Argument(..., help="Model file (.safetensors, .ncq, or a course checkpoint with "
                                      "--image-size)."),
    data: Path = typer.Option(..., "--data", help="Dataset folder: training images calibrate int8, validation "
                              "images measure each artifact's accuracy."),
    out: Path = typer.Option(..., "--out", help="Folder for the artifacts and deploy.json."),
    target: str = Registered("all", "--target", names=list_exporters, also=("all",), many=True,
                             help="Export targets from {names}, comma-separated, or all (each one an installed "
                             "runtime reads)."),
    precision: str = Registered("all", "--precision", names=lambda: list(PRECISIONS), also=("all",), many=True,
                                help="{names}, comma-separated, or all."),
    max_drop: float = typer.Option(1.0, "--max-drop", help="Validation accuracy points an artifact may lose "
                                   "against the fp32 model and still be chosen."),
    batch: int = typer.Option(64, "--batch", help="The second latency batch (the first is 1)."),
    threads: int = typer.Option(1, "--threads", help="Threads of each runtime while timing."),
    calibration: int = typer.Option(256, "--calibration", help="Training images that calibrate int8 ranges."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Measure each artifact's memory in a fresh "
                                "process (a few seconds each)."),
    image_size: Optional[int] = model_size_option(help="Default: the model's own input size."),
    cache_dir: Optional[Path] = CacheOpt,
    as_json: bool = JsonOpt,
):
    """Build every deployment file of a model (ONNX, OpenVINO IR, ExecuTorch, LiteRT; fp32 and int8), measure each
    one as it ships (its own validation accuracy, bytes, memory, latency at batch 1 and --batch on every runtime
    that reads it, all timed together), and choose the fastest at batch 1 within --max-drop points of the fp32
    model.

    Example: netcompress deploy runs/demo/student/best.safetensors --data ../shared/data/food101_10 --out deployed

    Example: netcompress deploy m.safetensors --data D --out deployed --target onnx,executorch --precision int8
    """
    config = DeployConfig(targets=_names(target), precisions=_names(precision) or PRECISIONS,
                          max_drop=max_drop, batch=batch, threads=threads, calibration_images=calibration,
                          memory=memory)
    set_threads(threads)
    net = load_file(model_file)
    input_size_of(spec_of(net), model_file)  # course files record none: ask for --image-size by name
    ds = data_for(net, model_file, data, image_size, cache_dir, False, True)
    result = deploy(net, ds, out, config)
    emit(result.to_dict(), as_json, _table(result))
    if not as_json:
        console.print(f"chosen: {result.chosen.name} ({out / result.chosen.file})" if result.chosen
                      else f"none chosen: {result.why_none}")
        for what, why in result.failed.items():
            console.print(f"not built: {what}: {why}")


def _table(result) -> Table:
    batch = result.config.batch
    table = Table(title=f"deploy: fp32 model {100 * result.fp32_accuracy:.2f}% on validation; latency at "
                        f"{result.config.threads} thread(s)")
    for column in ("artifact", "file", "bytes", "val acc %", "drop", "agrees", "b1 ms", f"b{batch} ms", "memory MB",
                   "chosen"):
        table.add_column(column, justify="right")
    for a in result.artifacts:
        b1, bn = a.latency_ms.get(f"{a.runtime}@1"), a.latency_ms.get(f"{a.runtime}@{batch}")
        memory = a.details.get("memory_mb")
        mark = "yes" if result.chosen is not None and a.name == result.chosen.name else a.why_not
        table.add_row(a.name, a.file, f"{a.file_bytes:,}", f"{100 * a.val_accuracy:.2f}",
                      f"{a.details['drop_points']:+.2f}", f"{a.details['agreement']:.3f}",
                      f"{b1:.3f}" if b1 else a.details.get("note", "busy"),
                      f"{bn:.3f}" if bn else "busy", "" if memory is None else f"{memory:.0f}", mark)
    return table
