"""`netcompress prune`, `lowrank`, `quantize` and `plot-pruning`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import (
    LowRankConfig,
    NetcompressError,
    PruneConfig,
    QuantConfig,
    TrainConfig,
    evaluate,
    factorize_and_finetune,
    list_codecs,
    list_pruners,
    prune_iteratively,
)
from .. import quantize as quantize_model
from ..formats.load import graph_file
from ..pipeline.report import plot_pruning
from ..process import resolve_device, seed_everything
from .common import (
    LATENCY_COLUMNS,
    TRAINING_SPLITS,
    BatchSizeOpt,
    CacheOpt,
    DataOpt,
    DeviceOpt,
    FinetuneAlphaOpt,
    FinetuneTemperatureOpt,
    JsonOpt,
    LabelsOpt,
    LatencyBatchOpt,
    ModelSizeOpt,
    ProgressOpt,
    Registered,
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
    kv_table,
    latency_target,
    model_and_data,
    rows_table,
    set_threads,
    with_latencies,
)
from .options import model_size_option


@app.command()
def prune(
    model_file: Path = typer.Argument(..., help="Model file (.safetensors, .ncq) or course checkpoint (.bin, .pkl, .npz) to prune."),
    data: Path = DataOpt,
    method: str = Registered("slim", "--method", names=list_pruners, help="One of {names}: slim is the course's "
                             "(BatchNorm |γ|), magnitude is unstructured."),
    rate: float = typer.Option(0.95, "--rate", help="Fraction of each prunable layer kept per step (width rate^k after k steps)."),
    steps: int = typer.Option(5, "--steps", help="Prune-then-fine-tune iterations (course: 5)."),
    finetune_epochs: int = typer.Option(5, "--finetune-epochs", help="Fine-tuning epochs after every step (course: 5)."),
    global_ranking: bool = typer.Option(False, "--global", help="Rank channels across layers, not per layer."),
    sparsity: float = typer.Option(0.0, "--sparsity", help="Network Slimming: L1 weight on BatchNorm γ in a training phase first."),
    sparsity_epochs: int = typer.Option(0, "--sparsity-epochs", help="Epochs of that sparsity phase."),
    target_latency: Optional[float] = TargetLatencyOpt,
    runtime: str = RuntimeOpt,
    latency_batch: int = LatencyBatchOpt,
    runtime_threads: int = RuntimeThreadsOpt,
    proposal_images: int = typer.Option(1024, "--proposal-images", help="With --target-latency: training images each "
                                        "step's proposals are briefly fine-tuned on before one is chosen."),
    recalibrate: int = typer.Option(1024, "--recalibrate", help="Training images whose BatchNorm statistics replace "
                                    "the stale running ones after every step (0: keep them, as the course did)."),
    precise_bn: int = typer.Option(0, "--precise-bn", help="Recompute BatchNorm statistics on this many training "
                                   "images before each validation of the fine-tuning (for slow running averages)."),
    teacher: Optional[Path] = TeacherOpt,
    temperature: float = FinetuneTemperatureOpt,
    alpha: float = FinetuneAlphaOpt,
    out: Path = typer.Option(Path("runs/prune"), "--out", help="Run directory (resumable)."),
    image_size: Optional[int] = ModelSizeOpt,
    batch_size: int = BatchSizeOpt,
    lr: float = typer.Option(1e-3, "--lr"),
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
    """Prune channels for real (the network gets narrower and faster), fine-tuning after every step.

    Every step rebuilds the optimizer and fine-tunes (with distillation when --teacher is given),
    keeps the best-validation model of the step, and logs parameters, bytes, MACs, latency and
    accuracy to OUT/pruning.jsonl; OUT/step{k}.safetensors are the models.

    With --target-latency MS, the steps prune to that latency instead of by --rate (NetAdapt): a
    table of per-layer latencies measured on --runtime (cached) predicts which channels buy the
    most time, brief fine-tunes tell which cost the least accuracy, and every step's model is
    measured for real; --steps is the number of steps planned to reach the target.

    Example: netcompress prune runs/kd/best.safetensors --data ../shared/data/food101_10 --method slim --rate 0.95 --steps 5 --finetune-epochs 5 --out runs/prune95

    Example: netcompress prune runs/kd/best.safetensors --data ../shared/data/food101_10 --method l2 --target-latency 0.12 --runtime ort --batch 1 --runtime-threads 1 --out runs/fast
    """
    cfg = PruneConfig(method=method, rate=rate, steps=steps, global_ranking=global_ranking, sparsity=sparsity,
                      sparsity_epochs=sparsity_epochs, proposal_images=proposal_images, recalibrate=recalibrate,
                      latency=latency_target(target_latency, runtime, latency_batch, runtime_threads))
    finetune = TrainConfig(epochs=finetune_epochs, batch_size=batch_size, lr=lr, seed=seed, precise_bn=precise_bn)
    kd = distill_config(teacher, temperature, alpha)
    set_threads(threads)
    seed_everything(seed)
    net, ds = model_and_data("prune", model_file, data, image_size, cache_dir, skip_bad, progress, labels, val_fraction,
                             test_from, out=out, teacher=teacher)
    result = prune_iteratively(net, cfg, ds, finetune, teacher=teacher, distill=kd, run_dir=out,
                               device=resolve_device(device), progress=progress)
    shown = [{**r, "accuracy": f"{r['val_accuracy']:.4f}" + (f" ({r['val_accuracy_before_finetune']:.3f})"
                                                              if "val_accuracy_before_finetune" in r else "")}
             for r in result.rows]
    how = f"to {cfg.latency}" if cfg.latency else f"rate {rate}, {steps} steps"
    table = rows_table(f"pruning {model_file.name}: {method}, {how}",
                       {"step": "step", "kept": "kept", "params": "params", "bytes": "file_bytes", "MACs": "macs",
                        **LATENCY_COLUMNS, "val acc (before ft)": "accuracy"}, with_latencies(shown))
    emit({"rows": result.rows}, as_json, table)


@app.command()
def lowrank(
    model_file: Path = typer.Argument(..., help="Model file (.safetensors, .ncq) or course checkpoint (.bin, .pkl, .npz) to factorize."),
    data: Path = DataOpt,
    energy: Optional[float] = typer.Option(None, "--energy", help="Per layer (and Tucker mode), keep the smallest rank "
                                           "holding this fraction of the squared singular values, e.g. 0.9."),
    rank_ratio: Optional[float] = typer.Option(None, "--rank-ratio", help="Keep this fraction of each layer's full rank."),
    target_params: Optional[int] = typer.Option(None, "--target-params", help="One budget for the whole model's "
                                                "parameters: the largest common energy that fits."),
    min_saving: float = typer.Option(0.1, "--min-saving", help="Factorize a layer only if that saves at least this "
                                     "fraction of its parameters and of its MACs."),
    exclude: list[str] = typer.Option([], "--exclude", help="Leave layers matching this glob alone (repeatable), e.g. fc.*"),
    finetune_epochs: int = typer.Option(5, "--finetune-epochs", help="Fine-tuning epochs after factorizing (0: none)."),
    teacher: Optional[Path] = TeacherOpt,
    temperature: float = FinetuneTemperatureOpt,
    alpha: float = FinetuneAlphaOpt,
    out: Path = typer.Option(Path("runs/lowrank"), "--out", help="Run directory (fine-tuning resumes)."),
    image_size: Optional[int] = ModelSizeOpt,
    batch_size: int = BatchSizeOpt,
    lr: float = typer.Option(1e-3, "--lr"),
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
    """Low-rank factorization: SVD for Linear and 1x1 convs, Tucker-2 for k x k convs, then fine-tuning.

    Ranks come from exactly one of --energy, --rank-ratio or --target-params. Layers whose
    factorized form would not save parameters and MACs (depthwise convs, small layers) stay as
    they are, and the layer table says why. OUT/factorized.safetensors is the model before
    fine-tuning, OUT/finetuned.safetensors the best fine-tuned one (distilled with --teacher);
    OUT/lowrank.json logs parameters, bytes, MACs, latency and accuracy of each stage. The files
    record each factorized layer as plain layers: they load with no pickle.

    Example: netcompress lowrank runs/r18/best.safetensors --data ../shared/data/food101_10 --energy 0.9 --finetune-epochs 3 --out runs/r18-lr90
    """
    cfg = LowRankConfig(energy=energy, rank_ratio=rank_ratio, target_params=target_params, min_saving=min_saving,
                        exclude=tuple(exclude))
    if finetune_epochs < 0:
        raise NetcompressError(f"--finetune-epochs {finetune_epochs} must be >= 0")
    finetune = TrainConfig(epochs=finetune_epochs, batch_size=batch_size, lr=lr, seed=seed) if finetune_epochs else None
    kd = distill_config(teacher, temperature, alpha)
    set_threads(threads)
    seed_everything(seed)
    net, ds = model_and_data("lowrank", model_file, data, image_size, cache_dir, skip_bad, progress, labels,
                             val_fraction, test_from, out=out, teacher=teacher)
    settings = {"model_file": str(model_file), "teacher": str(teacher) if teacher else None}
    result = factorize_and_finetune(net, cfg, ds, finetune, teacher=teacher, distill=kd, run_dir=out,
                                    device=resolve_device(device), settings=settings, progress=progress)
    log = result.log
    table = rows_table(f"low-rank {model_file.name}: " + ", ".join(f"{k} {v}" for k, v in log["selection"].items()),
                       {"stage": "stage", "params": "params", "bytes": "file_bytes", "MACs": "macs",
                        **LATENCY_COLUMNS, "val acc": "val_accuracy"}, with_latencies(log["rows"]))
    if not as_json:
        print(format_layers(log["layers"]))
    emit(log, as_json, table)


@app.command("plot-pruning")
def plot_pruning_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="Pruning run directories (each holds pruning.jsonl)."),
    out: Path = typer.Option(Path("pruning.png"), "--out"),
):
    """Plot parameters (x) against validation accuracy (y), one line per pruning run.

    Example: netcompress plot-pruning runs/prune95 runs/prune975 --out curve.png
    """
    plot_pruning(run_dirs, out)
    console.print(f"wrote {out}")


@app.command()
def quantize(
    model_file: Path = typer.Argument(..., help="Model file to compress (.safetensors, .ncq, or a course checkpoint: .bin, .pkl, .npz)."),
    out: Path = typer.Option(..., "--out", help="Quantized model file to write (.ncq)."),
    codec: str = Registered("int8-minmax", "--codec", names=list_codecs, help="One of {names}; int8-minmax is the "
                            "course's, kbit per-channel affine k-bit codes, kmeans weight sharing."),
    bits: int = typer.Option(8, "--bits", help="Bits per weight for kbit and kmeans (2-8)."),
    entropy: bool = typer.Option(False, "--entropy", help="LZMA-compress the stored codes."),
    fold_bn: Optional[bool] = typer.Option(None, "--fold-bn/--no-fold-bn",
                                           help="Fold BatchNorm into the conv before it [default: the codec's: on "
                                                "for int8-channel, kbit, kmeans]."),
    budget: Optional[int] = typer.Option(None, "--budget", help="File size limit in bytes: per-tensor widths "
                                         "(2..--bits) chosen by measured sensitivity; needs --data, kbit or kmeans."),
    calibration: int = typer.Option(256, "--calibration", help="Training images that measure sensitivity (--budget)."),
    finetune: int = typer.Option(0, "--finetune", help="Epochs of quantization-aware fine-tuning (distilled from "
                                 "the fp32 model) on --data's training split; 0: none."),
    finetune_lr: float = typer.Option(3e-4, "--finetune-lr", help="AdamW learning rate for --finetune (cosine)."),
    finetune_average: float = typer.Option(0.0, "--finetune-average", help="Store the moving average of the "
                                           "weights over about this many of the last --finetune epochs; 0: the "
                                           "best epoch's weights as they are."),
    data: Optional[Path] = typer.Option(None, "--data", help="Also report validation accuracy, fp32 vs quantized."),
    image_size: Optional[int] = model_size_option(help="Default: the model's own input size."),
    threads: Optional[int] = ThreadsOpt,
    cache_dir: Optional[Path] = CacheOpt,
    progress: bool = ProgressOpt,
    as_json: bool = JsonOpt,
):
    """Store a model with a weight codec in a compact, checksummed .ncq file (it loads like any model file).

    With --budget, each tensor gets its own width: the ones whose quantization moves the
    predictions least (measured on training images) get the fewest bits. --finetune N then trains
    N epochs through the codec itself, which recovers most of what 2-4 bits lose.

    Example: netcompress quantize runs/kd/best.safetensors --codec kbit --bits 8 --budget 100000 --entropy --data ../shared/data/food101_10 --out kd-100k.ncq
    """
    cfg = QuantConfig(codec=codec, bits=bits, entropy=entropy, fold_bn=fold_bn, budget=budget, calibration=calibration,
                      finetune_epochs=finetune, finetune_lr=finetune_lr, finetune_average=finetune_average)
    if out.suffix != ".ncq":
        raise NetcompressError(f"--out {out}: quantized files end in .ncq (other tools pick the loader by suffix)")
    if cfg.needs_data and data is None:
        raise NetcompressError("--budget and --finetune need --data DIR: they use its training images")
    set_threads(threads)
    net, ds = model_and_data("quantize", model_file, data, image_size, cache_dir, False, progress,
                             splits=TRAINING_SPLITS if cfg.needs_data else ("validation",), out=out.parent,
                             need_bytes=0)
    if graph_file(net) is not None:
        raise NetcompressError(f"{model_file} is a graph file; quantize a .safetensors model (or use `netcompress "
                               "export --int8` for an int8 ONNX model)")
    stored = quantize_model(net, cfg, ds, progress=progress)
    stored.save(out)
    used = stored.config
    result = {"model": str(model_file), "out": str(out), "codec": used.codec, "bits": used.bits,
              "entropy": used.entropy, "fold_bn": used.fold_bn, "bytes": stored.nbytes}
    if used.tensor_bits:
        result["bits"] = "/".join(str(b) for b in used.tensor_bits.values()) + " (per tensor)"
    if model_file.exists():
        result["source_bytes"] = model_file.stat().st_size
    if ds is not None:
        result.update(val_accuracy_fp32=evaluate(net, ds, device="cpu")["accuracy"],
                      val_accuracy=evaluate(stored.decode(), ds, device="cpu")["accuracy"])
    emit(result, as_json, kv_table(f"quantize {model_file.name}", result))


def format_layers(layers: list[dict]) -> str:
    """A plain-text table of the per-layer decisions."""
    lines = [f"{'layer':<28} {'shape':<18} {'method':<8} {'ranks':<12} {'params':>17}  note"]
    for r in layers:
        shape = "x".join(map(str, r["shape"]))
        ranks = "/".join(map(str, r["ranks"])) if r["ranks"] else "-"
        params = f"{r['params_before']:,}->{r['params_after']:,}" if not r["skipped"] else f"{r['params_before']:,}"
        lines.append(f"{r['layer']:<28} {shape:<18} {r['method']:<8} {ranks:<12} {params:>17}  {r['skipped'] or ''}")
    return "\n".join(lines)
