"""`netcompress auto`: the best model for the user's own data within a byte budget and a time budget."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from ..errors import NetcompressError
from ..pipeline.auto import AutoConfig, auto
from .common import (DeviceOpt, JsonOpt, LatencyBatchOpt, ProgressOpt, RuntimeOpt, RuntimeThreadsOpt, SeedOpt,
                     TargetLatencyOpt, ThreadsOpt, app, console, emit, latency_target, set_threads)

UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def seconds_of(text: str) -> float:
    """'30m', '1.5h', '90s' or '1800' (seconds) as seconds."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", text)
    if not found:
        raise NetcompressError(f"--time {text!r}: give a duration such as 30m, 1.5h or 600s")
    return float(found.group(1)) * UNITS[found.group(2) or "s"]


@app.command("auto")
def auto_cmd(
    data: Path = typer.Argument(..., help="Dataset folder (training/validation/testing, or one folder per class)."),
    target_bytes: int = typer.Option(..., "--target-bytes", help="The largest model file to choose, in bytes."),
    target_latency: Optional[float] = TargetLatencyOpt,
    runtime: str = RuntimeOpt,
    latency_batch: int = LatencyBatchOpt,
    runtime_threads: int = RuntimeThreadsOpt,
    time: str = typer.Option("30m", "--time", help="Time the whole run may take: 30m, 1.5h, 600s."),
    out: Path = typer.Option(Path("runs/auto"), "--out", help="Run directory; rerunning resumes the same plan."),
    image_size: int = typer.Option(0, "--image-size", help="The students' input size (0: the images' own, at most "
                                   "96 px; pretrained students get at least 64)."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    threads: int | None = ThreadsOpt,
    progress: bool = ProgressOpt,
    as_json: bool = JsonOpt,
):
    """Find the most accurate model within --target-bytes for your data, in the time given.

    It times a few batches of each candidate, writes the recipe that fits the time (OUT/auto.toml), and runs it in
    two rounds: first StudentNet on the labels alone (the plain baseline), a pretrained truncated EfficientNet-Lite0
    student and an EfficientNet-Lite0 teacher (used only where it beats them on validation) for a few epochs each;
    then the most accurate of them, trained on from its weights for the time left, and 4/3-bit codecs after
    quantization-aware fine-tuning. With --target-latency MS, the StudentNet is also pruned to that latency on
    --runtime and every student is written as the files that runtime runs (fp32 and int8), and the choice must
    hold both budgets, measured. The choice, the baseline and why the winner won go to OUT/auto.json and
    OUT/report.html; a rerun with the same settings resumes the plan.

    Example: netcompress auto ../shared/data/food101_10 --target-bytes 100000 --time 30m --out runs/auto
    """
    set_threads(threads)
    latency = latency_target(target_latency, runtime, latency_batch, runtime_threads)
    record = auto(data, out, AutoConfig(target_bytes=target_bytes, time_s=seconds_of(time), image_size=image_size,
                                        seed=seed, latency=latency), device=device, progress=progress)
    if as_json:
        emit(record, True)
        return
    chosen, baseline = record["chosen"], record["baseline"]
    test = ("" if chosen["test_accuracy"] is None else f", test {chosen['test_accuracy']:.3f}") + (
        f", {chosen['latency_ms']:.3f} ms on {runtime}" if "latency_ms" in chosen else "")
    console.print(f"chosen: {chosen['name']}: {chosen['file_bytes']:,} bytes, validation "
                  f"{chosen['val_accuracy']:.3f} ± {record['validation']['standard_error']:.3f}{test} ({chosen['file']})")
    if baseline:
        console.print(f"plain baseline within the budget: {baseline['name']}: {baseline['file_bytes']:,} bytes, "
                      f"validation {baseline['val_accuracy']:.3f}")
    if record["flagged"]:
        console.print(f"flagged: {len(record['flagged'])} stored file(s) lost more than a few points to their codec "
                      "(listed in the report)")
    if record["teaching"] and "why" in record["teaching"]:
        console.print(f"teaching: {record['teaching']['why']}")
    late = " (late: the machine was busier than when the run was planned)" if record["late"] else ""
    console.print(f"took {record['wall_seconds'] / 60:.1f} of {record['time_given_seconds'] / 60:.1f} min{late}; "
                  f"report: {out / 'report.html'}")
