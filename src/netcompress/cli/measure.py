"""`netcompress evaluate`, `predict`, `summary` and `models`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from .. import count_macs, count_parameters, list_models, spec_of
from .. import evaluate as evaluate_model
from .. import predict as predict_logits
from ..data.layout import SPLITS, split_name
from ..files import atomic_write_text, json_text
from ..formats.load import graph_file
from ..measure.cost import LATENCY_HEADINGS, latencies, layer_table
from ..measure.evaluate import plot_confusion, write_submission
from ..measure.latency import LatencyConfig, get_runtime, latency as measure_latency, list_runtimes
from ..process import log, resolve_device
from ..spec import attach
from .common import (
    MODEL_FILES,
    NAME_IMAGE_SIZE,
    CacheOpt,
    DataOpt,
    DeviceOpt,
    JsonOpt,
    LabelsOpt,
    Registered,
    SkipBadOpt,
    ThreadsOpt,
    app,
    console,
    emit,
    input_size_of,
    kv_table,
    model_and_data,
    model_or_name,
    set_threads,
)
from .options import model_size_option

MODEL_OR_NAME = MODEL_FILES[:-1] + ", or a registered model name (random weights; `netcompress models` lists them)."


@app.command()
def models(pattern: str = typer.Argument("*", help="Part of a name (efficient), or a glob ('resnet*').")):
    """List the registered model names (StudentNet family, CNNs, torchvision classifiers, EfficientNet-Lite0).

    Example: netcompress models efficient
    """
    glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    names = list_models(glob.lower())
    for name in names:
        console.print(name)
    if not names:
        log(f"no registered model name matches {pattern!r}; `netcompress models` lists them all")


@app.command()
def evaluate(
    model_file: Path = typer.Argument(..., help=MODEL_FILES),
    data: Path = DataOpt,
    split: str = typer.Option("validation", "--split", help="validation or testing (needs labeled files)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Write metrics JSON and confusion.png here."),
    image_size: Optional[int] = model_size_option(help="Default: the model's own input size."),
    labels: Optional[Path] = LabelsOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    skip_bad: bool = SkipBadOpt,
    cache_dir: Optional[Path] = CacheOpt,
    as_json: bool = JsonOpt,
):
    """Accuracy, per-class accuracy and the confusion matrix of a model on one split.

    Example: netcompress evaluate runs/student/best.safetensors --data ../shared/data/food101_10 --split validation
    """
    set_threads(threads)
    split = split_name(split, SPLITS, "--split")
    net, ds = model_and_data("evaluate", model_file, data, image_size, cache_dir, skip_bad, True, labels,
                             splits=(split,), out=out_dir, need_bytes=0)
    metrics = evaluate_model(net, ds, split, device=resolve_device(device))
    result = {"model": str(model_file), **metrics}
    names = ds.split(split).class_names
    if out_dir is not None:
        atomic_write_text(out_dir / f"metrics-{split}.json", json_text(result))
        plot_confusion(metrics["confusion"], names, out_dir / f"confusion-{split}.png",
                       title=f"{model_file.name} on {split}: accuracy {metrics['accuracy']:.3f}")
    table = Table(title=f"{model_file.name} on {split} ({metrics['images']} images): accuracy {metrics['accuracy']:.4f}")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("images", justify="right")
    for name, acc, row in zip(names, metrics["per_class_accuracy"], metrics["confusion"]):
        table.add_row(name, f"{acc:.3f}", str(sum(row)))
    emit(result, as_json, table)


@app.command()
def predict(
    model_file: Path = typer.Argument(..., help=MODEL_FILES),
    data: Path = DataOpt,
    out: Path = typer.Option(Path("pred.csv"), "--out", help="CSV in the course's format: Id,label."),
    split: str = typer.Option("testing", "--split"),
    image_size: Optional[int] = model_size_option(help="Default: the model's own input size."),
    with_filenames: bool = typer.Option(False, "--with-filenames", help="Add a file column to the CSV."),
    labels: Optional[Path] = LabelsOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    skip_bad: bool = SkipBadOpt,
    cache_dir: Optional[Path] = CacheOpt,
):
    """Write predictions for a split in the course's submission format (Id = sorted file order).

    With --skip-bad, an unreadable file keeps its Id and row, with an empty label.

    Example: netcompress predict model.safetensors --data ../shared/data/food101_10 --out pred.csv --with-filenames
    """
    set_threads(threads)
    split = split_name(split, SPLITS, "--split")
    net, ds = model_and_data("predict", model_file, data, image_size, cache_dir, skip_bad, True, labels,
                             splits=(split,), out=out.parent, need_bytes=0, same_classes=False)
    images = ds.split(split)
    pred = predict_logits(net, images, split, device=resolve_device(device)).argmax(1)
    write_submission(pred, images, out, with_filenames)
    console.print(f"wrote {len(pred) + len(images.skipped)} rows to {out}"
                  + (f" ({len(images.skipped)} unreadable files with an empty label)" if images.skipped else ""))


@app.command()
def summary(
    model: str = typer.Argument(..., help=MODEL_OR_NAME),
    image_size: Optional[int] = model_size_option(help="Default: the model's input size (names: "
                                             f"{NAME_IMAGE_SIZE})."),
    num_classes: int = typer.Option(11, "--num-classes", help="For a model name: its class count."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Measure the latencies every report shows ("
                                 + ", ".join(LATENCY_HEADINGS.values()) + "; see `netcompress latency`)."),
    threads: Optional[int] = ThreadsOpt,
    as_json: bool = JsonOpt,
):
    """A torchsummary-style layer table and totals: parameters, MACs, bytes, latency.

    Example: netcompress summary ../shared/data/hw7/student_custom_small.bin --image-size 256
    """
    set_threads(threads)
    net = model_or_name(model, image_size, num_classes)
    spec = spec_of(net)
    size = image_size or input_size_of(spec, model)
    graph = graph_file(net)
    totals = {"model": model, "arch": spec.arch or spec.info.module, "input_size": size}
    if graph is not None:  # no torch modules to walk; list its operators instead
        import onnx

        proto = onnx.load(str(graph)).graph
        table = "\n".join(f"{op:24s}{n:5d}" for op, n in Counter(node.op_type for node in proto.node).most_common())
        totals.update(runtime="onnxruntime",
                      initializer_elements=sum(int(np.prod(t.dims)) for t in proto.initializer))
    else:
        table = layer_table(net, size)
        totals.update(parameters=count_parameters(net), macs=count_macs(net, size))
    if Path(model).exists():
        totals["file_bytes"] = Path(model).stat().st_size
    if latency:
        if image_size:
            attach(net, spec.replace(input_size=size))
        totals.update({f"latency {key} (ms)": str(value) for key, value in latencies(net).items()})
    if not as_json:
        print(table)
    emit(totals, as_json, kv_table("totals", totals))


@app.command("latency")
def latency_cmd(
    models: list[str] = typer.Argument(..., help="Model files or registered model names (random weights) to measure "
                                       "together, in interleaved rounds."),
    runtime: str = Registered("ort", "--runtime", names=list_runtimes, also=("all",),
                              help="One of {names}, or all (every installed one, and which is fastest for each "
                              "model). ort is ONNX Runtime: an fp32 export, or the .onnx file as it is (int8 "
                              "included); openvino, executorch and litert run their own files (.xml, .pte, .tflite) "
                              "likewise."),
    batch: int = typer.Option(1, "--batch", help="Images per call."),
    threads: int = typer.Option(1, "--threads", help="Threads of the runtime."),
    rounds: int = typer.Option(7, "--rounds", help="Interleaved rounds: every model once per round."),
    seconds: float = typer.Option(0.15, "--seconds", help="Timed calls per model per round, in seconds."),
    max_spread: float = typer.Option(0.3, "--max-spread", help="A p90 this far above the median (0.3 = 30%) means the "
                                     "machine was busy: no figure is printed."),
    image_size: Optional[int] = model_size_option(help="Default: each model's own input size "
                                             f"(names: {NAME_IMAGE_SIZE})."),
    num_classes: int = typer.Option(11, "--num-classes", help="For a model name: its class count."),
    as_json: bool = JsonOpt,
):
    """Latency per call: median, p90 and spread over interleaved rounds.

    On a busy machine a one-thread run on torch, ort, executorch or litert reports its thread's CPU time per call
    (clock "thread CPU"), which other work barely moves; a run on more threads gets no figure then.

    Example: netcompress latency runs/kd/best.safetensors runs/prune/step1.safetensors --runtime ort --batch 1 --threads 1

    Example: netcompress latency runs/kd/best.safetensors --runtime all

    Example: netcompress latency studentnet --image-size 64 --runtime all
    """
    runtimes = list_runtimes(installed=True) if runtime == "all" else [runtime]
    nets = {}
    for model in models:
        net = model_or_name(model, image_size, num_classes)
        spec = spec_of(net)
        nets[model] = attach(net, spec.replace(input_size=image_size or input_size_of(spec, model)))
    rows = []
    for name in runtimes:
        cfg = LatencyConfig(runtime=name, batch=batch, threads=threads, rounds=rounds, seconds=seconds,
                            max_spread=max_spread)
        runnable = nets if runtime != "all" else {k: n for k, n in nets.items() if get_runtime(name).runs(n)}
        if not runnable:
            continue  # with --runtime all: a runtime that runs none of these files (eager PyTorch and .onnx files)
        rows += [{"model": model, "runtime": name, "batch": batch, "threads": threads, "median_ms": r.median_ms,
                  "p90_ms": r.p90_ms, "spread": r.spread, "calls": r.calls, "clock": r.clock, "note": r.note}
                 for model, r in measure_latency(runnable, cfg).items()]
    fastest = {}
    for model in nets:
        timed = [r for r in rows if r["model"] == model and r["median_ms"] is not None]
        if len(runtimes) > 1 and timed:
            fastest[model] = min(timed, key=lambda r: r["median_ms"])["runtime"]
    table = Table(title=f"latency at batch {batch}, {threads} thread(s), {rounds} interleaved rounds")
    for column in ("model", "runtime", "median ms", "p90 ms", "spread", "clock", "calls"):
        table.add_column(column, justify="right")
    for r in rows:
        star = " (fastest)" if fastest.get(r["model"]) == r["runtime"] else ""
        table.add_row(r["model"], r["runtime"] + star, f"{r['median_ms']:.3f}" if r["median_ms"] else r["note"],
                      f"{r['p90_ms']:.3f}" if r["p90_ms"] else "", f"{100 * r['spread']:.0f}%", r["clock"],
                      str(r["calls"]))
    emit({"rows": rows, "fastest": fastest}, as_json, table)
    if not as_json and any(r["clock"] != "wall" and r["median_ms"] for r in rows):
        console.print("thread CPU: the machine was busy, so these figures are the calling thread's CPU time per call "
                      "(it stops while other work runs; on an idle machine it equals the wall time)")
