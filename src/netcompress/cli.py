"""`netcompress <verb>`: a thin command-line layer over the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import NetcompressError

app = typer.Typer(
    help="Compress image classifiers: train, distill, prune, quantize, measure and report.\n\n"
    "Data folders use the Food-11 layout (training/, validation/, testing/ with <label>_<k>.jpg) "
    "or torchvision's ImageFolder layout (<split>/<class>/*.jpg).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 160)  # no truncated tables in logs

DataOpt = typer.Option(..., "--data", help="Dataset folder (Food-11 or ImageFolder layout).")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")
SkipBadOpt = typer.Option(False, "--skip-bad", help="Skip unreadable or odd images with a warning instead of stopping.")
CacheOpt = typer.Option(None, "--cache-dir", help="Where decoded images are cached [default: ~/.cache/netcompress].")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON.")
ProgressOpt = typer.Option(True, "--progress/--no-progress")
SeedOpt = typer.Option(0, "--seed")
BatchSizeOpt = typer.Option(64, "--batch-size")
TeacherOpt = typer.Option(None, "--teacher", help="Fine-tune with distillation from this model file.")
FinetuneTemperatureOpt = typer.Option(4.0, "--temperature", "-T", help="Distillation temperature (with --teacher).")
FinetuneAlphaOpt = typer.Option(0.9, "--alpha", help="Weight of the teacher term (with --teacher).")
ModelSizeOpt = typer.Option(None, "--image-size", help="Default: the model's input size.")


def _emit(result: dict, as_json: bool, table: Table | None = None) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    elif table is not None:
        console.print(table)


def _kv_table(title: str, rows: dict) -> Table:
    table = Table(title=title, show_header=False)
    for k, v in rows.items():
        table.add_row(k, str(v) if isinstance(v, bool) else f"{v:,}" if isinstance(v, int)
                      else f"{v:.4f}" if isinstance(v, float) else str(v))
    return table


PrecisionOpt = typer.Option("fp32", "--precision", help="fp32, or bf16 autocast (faster where the hardware "
                            "has bf16: AMX CPUs, recent GPUs; weights stay fp32).")
NprocOpt = typer.Option(1, "--nproc", help="Processes on this machine: >1 relaunches under torchrun (DDP).")


def _launch_if_asked(nproc: int) -> None:
    """--nproc N outside torchrun: run this very command under torchrun with N processes."""
    import os

    from .distributed import launch, strip_nproc

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(launch(nproc, strip_nproc(sys.argv[1:])))


def _train_val(data: Path, size: int, cache_dir, skip_bad: bool, progress: bool, world):
    """Both labeled splits; under torchrun rank 0 decodes (and caches) first, the others read its cache."""
    from .data import load_split

    def load():
        return (load_split(data, "training", size, cache_dir=cache_dir, skip_bad=skip_bad, progress=progress),
                load_split(data, "validation", size, cache_dir=cache_dir, skip_bad=skip_bad, progress=progress))

    if world.main:
        splits = load()
        world.barrier()
    else:
        world.barrier()
        splits = load()
    return splits


MODEL_FILES = "Model file: .safetensors, quantized .ncq, .onnx, course checkpoint .bin or course .pkl."


def open_model(path: Path):
    """Any model file -> (model, spec), picked by suffix (see artifact.load_any)."""
    from .artifact import load_any

    return load_any(path)


def _is_torch(net) -> bool:
    from .onnx_export import OnnxModel

    return not isinstance(net, OnnxModel)


@app.command()
def models(pattern: str = typer.Argument("*", help="Glob over model names, e.g. 'resnet*'.")):
    """List the registered model names (StudentNet family, CNNs, torchvision classifiers, EfficientNet-Lite0).

    Example: netcompress models 'student*'
    """
    from .models import list_models

    for name in list_models(pattern):
        console.print(name)


@app.command()
def train(
    model: str = typer.Option(..., "--model", help="Registered model name, e.g. studentnet, resnet18."),
    data: Path = DataOpt,
    out: Path = typer.Option(Path("runs/train"), "--out", help="Run directory (resumes if it holds an interrupted run)."),
    image_size: int = typer.Option(96, "--image-size", help="Images are resized (shorter side) and center-cropped to this."),
    epochs: int = typer.Option(30, "--epochs"),
    batch_size: int = BatchSizeOpt,
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    weight_decay: float = typer.Option(1e-2, "--weight-decay"),
    schedule: str = typer.Option("cosine", "--schedule", help="cosine or constant learning rate."),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing"),
    width_mult: Optional[float] = typer.Option(None, "--width-mult", help="StudentNet width multiplier."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--scratch", help="Start from ImageNet weights (teachers)."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    skip_bad: bool = SkipBadOpt,
    cache_dir: Optional[Path] = CacheOpt,
    progress: bool = ProgressOpt,
    precision: str = PrecisionOpt,
    nproc: int = NprocOpt,
    as_json: bool = JsonOpt,
):
    """Train a model from scratch (or from pretrained weights) with the course's augmentation.

    Keeps the best-validation model in OUT/best.safetensors; Ctrl-C, then the same command again,
    resumes after the last finished epoch.

    Example: netcompress train --model studentnet --data ../shared/data/food101_10 --image-size 64 --epochs 10 --out runs/student
    """
    from .artifact import new_model
    from .distributed import init_from_env
    from .runtime import resolve_device, seed_everything
    from .train import TrainConfig, fit

    _launch_if_asked(nproc)
    world, dev = init_from_env(resolve_device(device))
    seed_everything(seed)
    tr, va = _train_val(data, image_size, cache_dir, skip_bad, progress and world.main, world)
    net, spec = new_model(model, tr.class_names, image_size, width_mult=width_mult, pretrained=pretrained)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
                      label_smoothing=label_smoothing, seed=seed, precision=precision)
    result = fit(net, spec, tr, va, cfg, out, device=dev, progress=progress, world=world)
    if not world.main:
        return
    summary = {"model": model, "best_val_accuracy": result.best_accuracy, "best_epoch": result.best_epoch,
               "epochs_run": result.epochs_run, "model_file": str(result.model_path)}
    _emit(summary, as_json, _kv_table(f"train {model}", summary))


@app.command()
def distill(
    teacher: Path = typer.Option(..., "--teacher", help="Teacher model file (.safetensors) trained on this data."),
    student: str = typer.Option("studentnet", "--student", help="Student model name, or a model file to start from."),
    data: Path = DataOpt,
    out: Path = typer.Option(Path("runs/distill"), "--out", help="Run directory (resumes if it holds an interrupted run)."),
    temperature: float = typer.Option(20.0, "--temperature", "-T", help="Softmax temperature (course: 20)."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of the soft (teacher) term; 0 = plain cross-entropy."),
    method: str = typer.Option("logits", "--method", help="logits (Hinton KD) or rkd (logits + relational KD)."),
    rkd_weight: float = typer.Option(1.0, "--rkd-weight", help="Weight of the relational term (method rkd)."),
    teacher_precision: str = typer.Option("auto", "--teacher-precision",
                                          help="auto (bf16 where the hardware has it natively), fp32 or bf16."),
    augment: bool = typer.Option(True, "--augment/--no-augment",
                                 help="The course's augmentation; without it the teacher runs once per image."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Default: the teacher's input size."),
    epochs: int = typer.Option(30, "--epochs"),
    batch_size: int = BatchSizeOpt,
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(1e-2, "--weight-decay"),
    schedule: str = typer.Option("cosine", "--schedule"),
    width_mult: Optional[float] = typer.Option(None, "--width-mult", help="StudentNet width multiplier."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    skip_bad: bool = SkipBadOpt,
    cache_dir: Optional[Path] = CacheOpt,
    progress: bool = ProgressOpt,
    precision: str = PrecisionOpt,
    nproc: int = NprocOpt,
    as_json: bool = JsonOpt,
):
    """Distill a teacher into a student: (1-a)*CE + a*T^2*KL(teacher/T || student/T), as the course did.

    Teacher and student see the same augmented batch; the teacher runs in eval mode with no
    gradients. --method rkd adds relational KD (distances and angles between the samples'
    penultimate features). Same run directory, resume and outputs as `train`.

    Example: netcompress distill --teacher runs/teacher/best.safetensors --student studentnet --data ../shared/data/food101_10 -T 4 --alpha 0.9 --out runs/kd
    """
    from .artifact import load_model, new_model
    from .augment import AugmentConfig
    from .distill import DistillConfig, DistillLoss, check_teacher
    from .distributed import init_from_env
    from .runtime import resolve_device, seed_everything
    from .train import TrainConfig, fit

    _launch_if_asked(nproc)
    world, dev = init_from_env(resolve_device(device))
    seed_everything(seed)
    teacher_net, teacher_spec = load_model(teacher)
    size = image_size or teacher_spec.input_size
    tr, va = _train_val(data, size, cache_dir, skip_bad, progress and world.main, world)
    check_teacher(teacher_spec.class_names, tr.class_names, teacher)
    if Path(student).suffix == ".safetensors":
        net, spec = load_model(student)
        spec.input_size = size
    else:
        net, spec = new_model(student, tr.class_names, size, width_mult=width_mult)
    kd = DistillConfig(temperature=temperature, alpha=alpha, method=method, rkd_weight=rkd_weight,
                       teacher_precision=teacher_precision)
    loss = DistillLoss(teacher_net.to(dev), net, kd)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
                      seed=seed, augment=AugmentConfig() if augment else None, precision=precision)
    if not augment:
        loss.precompute(tr)
    spec.info["distilled_from"] = str(teacher)
    settings = {"distill": vars(kd), "teacher": str(teacher), "student": student}
    result = fit(net, spec, tr, va, cfg, out, device=dev, loss_fn=loss, settings=settings, progress=progress,
                 world=world)
    if not world.main:
        return
    summary = {"student": student, "teacher": str(teacher), "best_val_accuracy": result.best_accuracy,
               "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "model_file": str(result.model_path)}
    _emit(summary, as_json, _kv_table("distill", summary))


def _distill_loss_factory(teacher: Optional[Path], data_classes: list[str], device, temperature: float,
                          alpha: float):
    """make_loss(student) for fine-tuning: distillation from `teacher`, or None for cross-entropy."""
    from .distill import DistillConfig, teacher_loss

    return None if teacher is None else teacher_loss(teacher, data_classes, device, DistillConfig(temperature, alpha))


def _model_and_data(model_file: Path, data: Path, image_size: Optional[int], cache_dir, skip_bad: bool,
                    progress: bool):
    """A model file to compress, with the training and validation splits at its input size."""
    from .distributed import World

    net, spec = open_model(model_file)
    if image_size:
        spec.input_size = image_size
    tr, va = _train_val(data, spec.input_size, cache_dir, skip_bad, progress, World())
    if tr.num_classes != spec.num_classes:
        raise NetcompressError(f"{model_file} predicts {spec.num_classes} classes but {data} has {tr.num_classes}")
    return net, spec, tr, va


@app.command()
def prune(
    model_file: Path = typer.Argument(..., help="Model file (.safetensors) or course checkpoint (.bin) to prune."),
    data: Path = DataOpt,
    method: str = typer.Option("slim", "--method", help="slim (course: BatchNorm |γ|), l1, l2, taylor, or magnitude (unstructured)."),
    rate: float = typer.Option(0.95, "--rate", help="Fraction of each prunable layer kept per step (width rate^k after k steps)."),
    steps: int = typer.Option(5, "--steps", help="Prune-then-fine-tune iterations (course: 5)."),
    finetune_epochs: int = typer.Option(5, "--finetune-epochs", help="Fine-tuning epochs after every step (course: 5)."),
    global_ranking: bool = typer.Option(False, "--global", help="Rank channels across layers, not per layer."),
    sparsity: float = typer.Option(0.0, "--sparsity", help="Network Slimming: L1 weight on BatchNorm γ in a training phase first."),
    sparsity_epochs: int = typer.Option(0, "--sparsity-epochs", help="Epochs of that sparsity phase."),
    teacher: Optional[Path] = TeacherOpt,
    temperature: float = FinetuneTemperatureOpt,
    alpha: float = FinetuneAlphaOpt,
    out: Path = typer.Option(Path("runs/prune"), "--out", help="Run directory (resumable)."),
    image_size: Optional[int] = ModelSizeOpt,
    batch_size: int = BatchSizeOpt,
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    skip_bad: bool = SkipBadOpt,
    cache_dir: Optional[Path] = CacheOpt,
    progress: bool = ProgressOpt,
    as_json: bool = JsonOpt,
):
    """Prune channels for real (the network gets narrower and faster), fine-tuning after every step.

    Every step rebuilds the optimizer and fine-tunes (with distillation when --teacher is given),
    keeps the best-validation model of the step, and logs parameters, bytes, MACs, latency and
    accuracy to OUT/pruning.jsonl; OUT/step{k}.safetensors are the models.

    Example: netcompress prune runs/kd/best.safetensors --data ../shared/data/food101_10 --method slim --rate 0.95 --steps 5 --finetune-epochs 5 --out runs/prune95
    """
    from .prune import PruneConfig, prune_schedule
    from .runtime import resolve_device, seed_everything
    from .train import TrainConfig

    dev = resolve_device(device)
    seed_everything(seed)
    net, spec, tr, va = _model_and_data(model_file, data, image_size, cache_dir, skip_bad, progress)
    cfg = PruneConfig(method=method, rate=rate, steps=steps, global_ranking=global_ranking, sparsity=sparsity,
                      sparsity_epochs=sparsity_epochs)
    train_cfg = TrainConfig(epochs=finetune_epochs, batch_size=batch_size, lr=lr, seed=seed)
    make_loss = _distill_loss_factory(teacher, tr.class_names, dev, temperature, alpha)
    rows = prune_schedule(net, spec, tr, va, cfg, train_cfg, out, device=dev, make_loss=make_loss, progress=progress)
    table = Table(title=f"pruning {model_file.name}: {method}, rate {rate}, {steps} steps")
    for col in ["step", "kept", "params", "bytes", "MACs", "ms @64", "val acc (before ft)"]:
        table.add_column(col, justify="right")
    for r in rows:
        before = f" ({r['val_accuracy_before_finetune']:.3f})" if "val_accuracy_before_finetune" in r else ""
        table.add_row(str(r["step"]), f"{r['kept']:.3f}", f"{r['params']:,}", f"{r['file_bytes']:,}",
                      f"{r['macs']:,}", f"{r['latency_ms_batch64']:.1f}", f"{r['val_accuracy']:.4f}{before}")
    _emit({"rows": rows}, as_json, table)


@app.command()
def lowrank(
    model_file: Path = typer.Argument(..., help="Model file (.safetensors) or course checkpoint (.bin) to factorize."),
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
    seed: int = SeedOpt,
    device: str = DeviceOpt,
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
    from .lowrank import LowRankConfig, format_layers, lowrank_run
    from .runtime import resolve_device, seed_everything
    from .train import TrainConfig

    cfg = LowRankConfig(energy=energy, rank_ratio=rank_ratio, target_params=target_params, min_saving=min_saving,
                        exclude=list(exclude))
    cfg.check()
    if finetune_epochs < 0:
        raise NetcompressError(f"--finetune-epochs {finetune_epochs} must be >= 0")
    dev = resolve_device(device)
    seed_everything(seed)
    net, spec, tr, va = _model_and_data(model_file, data, image_size, cache_dir, skip_bad, progress)
    train_cfg = TrainConfig(epochs=finetune_epochs, batch_size=batch_size, lr=lr, seed=seed) if finetune_epochs else None
    make_loss = _distill_loss_factory(teacher, tr.class_names, dev, temperature, alpha)
    settings = {"model_file": str(model_file), "teacher": str(teacher) if teacher else None}
    if teacher:
        settings["distill"] = {"temperature": temperature, "alpha": alpha}
    log = lowrank_run(net, spec, tr, va, cfg, train_cfg, out, device=dev, make_loss=make_loss, progress=progress,
                      settings=settings)
    table = Table(title=f"low-rank {model_file.name}: " + ", ".join(f"{k} {v}" for k, v in log["selection"].items()))
    for col in ["stage", "params", "bytes", "MACs", "ms @1", "ms @64", "val acc"]:
        table.add_column(col, justify="right")
    for r in log["rows"]:
        table.add_row(r["stage"], f"{r['params']:,}", f"{r['file_bytes']:,}", f"{r['macs']:,}",
                      f"{r['latency_ms_batch1']:.2f}", f"{r['latency_ms_batch64']:.1f}", f"{r['val_accuracy']:.4f}")
    if not as_json:
        print(format_layers(log["layers"]))
    _emit(log, as_json, table)


@app.command("plot-pruning")
def plot_pruning_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="Pruning run directories (each holds pruning.jsonl)."),
    out: Path = typer.Option(Path("pruning.png"), "--out"),
):
    """Plot parameters (x) against validation accuracy (y), one line per pruning run.

    Example: netcompress plot-pruning runs/prune95 runs/prune975 --out curve.png
    """
    from .report import plot_pruning

    plot_pruning(run_dirs, out)
    console.print(f"wrote {out}")


@app.command()
def evaluate(
    model_file: Path = typer.Argument(..., help=MODEL_FILES),
    data: Path = DataOpt,
    split: str = typer.Option("validation", "--split", help="validation or testing (needs labeled files)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Write metrics JSON and confusion.png here."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Default: the model's own input size."),
    device: str = DeviceOpt,
    skip_bad: bool = SkipBadOpt,
    cache_dir: Optional[Path] = CacheOpt,
    as_json: bool = JsonOpt,
):
    """Accuracy, per-class accuracy and the confusion matrix of a model on one split.

    Example: netcompress evaluate runs/student/best.safetensors --data ../shared/data/food101_10 --split validation
    """
    from .data import load_split
    from .evaluate import classification_metrics, plot_confusion, predict_logits
    from .files import atomic_write_text
    from .runtime import resolve_device

    net, spec = open_model(model_file)
    ds = load_split(data, split, image_size or spec.input_size, cache_dir=cache_dir, skip_bad=skip_bad)
    if not ds.labeled:
        raise NetcompressError(f"{data / split} has unlabeled files; evaluate needs <label>_<k>.jpg names "
                               "(use `netcompress predict` for unlabeled test sets)")
    if ds.num_classes != spec.num_classes:
        raise NetcompressError(f"{model_file} predicts {spec.num_classes} classes but {data} has {ds.num_classes}")
    dev = resolve_device(device)
    metrics = classification_metrics(predict_logits(net.to(dev), ds, dev), ds.labels, ds.num_classes)
    result = {"model": str(model_file), "split": split, "images": len(ds), **metrics}
    if out_dir is not None:
        atomic_write_text(out_dir / f"metrics-{split}.json", json.dumps(result, indent=2))
        plot_confusion(metrics["confusion"], ds.class_names, out_dir / f"confusion-{split}.png",
                       title=f"{model_file.name} on {split}: accuracy {metrics['accuracy']:.3f}")
    table = Table(title=f"{model_file.name} on {split} ({len(ds)} images): accuracy {metrics['accuracy']:.4f}")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("images", justify="right")
    for name, acc, row in zip(ds.class_names, metrics["per_class_accuracy"], metrics["confusion"]):
        table.add_row(name, f"{acc:.3f}", str(sum(row)))
    _emit(result, as_json, table)


@app.command()
def predict(
    model_file: Path = typer.Argument(..., help=MODEL_FILES),
    data: Path = DataOpt,
    out: Path = typer.Option(Path("pred.csv"), "--out", help="CSV in the course's format: Id,label."),
    split: str = typer.Option("testing", "--split"),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Default: the model's own input size."),
    device: str = DeviceOpt,
    skip_bad: bool = SkipBadOpt,
    cache_dir: Optional[Path] = CacheOpt,
):
    """Write predictions for a split in the course's submission format (Id = sorted file order).

    Example: netcompress predict model.safetensors --data ../shared/data/food101_10 --out pred.csv
    """
    from .data import load_split
    from .evaluate import predict_logits, write_submission
    from .runtime import resolve_device

    net, spec = open_model(model_file)
    ds = load_split(data, split, image_size or spec.input_size, cache_dir=cache_dir, skip_bad=skip_bad)
    dev = resolve_device(device)
    pred = predict_logits(net.to(dev), ds, dev).argmax(1)
    write_submission(pred, out)
    console.print(f"wrote {len(pred)} predictions to {out}")


@app.command()
def summary(
    model: str = typer.Argument(..., help=MODEL_FILES[:-1] + ", or a registered model name."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Default: the model's input size (names: 96)."),
    num_classes: int = typer.Option(11, "--num-classes", help="For a model name: its class count."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Measure fp32 latency at batch 1 and 64."),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
):
    """A torchsummary-style layer table and totals: parameters, MACs, bytes, latency.

    Example: netcompress summary ../shared/data/hw7/student_custom_small.bin
    """
    import numpy as np

    from .measure import count_macs, count_parameters, latency_ms, layer_table
    from .runtime import resolve_device

    path = Path(model)
    if path.exists():
        net, spec = open_model(path)
        size = image_size or spec.input_size
    else:
        from .artifact import new_model

        net, spec = new_model(model, [str(i) for i in range(num_classes)], image_size or 96)
        size = spec.input_size
    net.eval()
    if _is_torch(net):
        table = layer_table(net, size)
        totals = {"model": model, "arch": spec.arch, "input_size": size, "parameters": count_parameters(net),
                  "macs": count_macs(net, size)}
    else:  # an ONNX file: no torch modules to walk; list its operators instead
        from collections import Counter

        import onnx

        graph = onnx.load(str(path)).graph
        table = "\n".join(f"{op:24s}{n:5d}" for op, n in Counter(node.op_type for node in graph.node).most_common())
        totals = {"model": model, "arch": spec.arch, "input_size": size, "runtime": "onnxruntime",
                  "initializer_elements": sum(int(np.prod(t.dims)) for t in graph.initializer)}
    if path.exists():
        totals["file_bytes"] = path.stat().st_size
    if latency:
        dev = resolve_device(device)
        totals["latency_ms_batch1"] = round(latency_ms(net, size, 1, device=dev), 4)
        totals["latency_ms_batch64"] = round(latency_ms(net, size, 64, device=dev, repeats=10), 3)
        totals["device"] = str(dev)
    if not as_json:
        print(table)
    _emit(totals, as_json, _kv_table("totals", totals))


@app.command("import-course")
def import_course(
    checkpoint: Path = typer.Argument(..., help="The course's StudentNet state_dict, e.g. student_custom_small.bin."),
    out: Path = typer.Option(..., "--out", help="Model file to write (.safetensors)."),
    image_size: int = typer.Option(256, "--image-size", help="Input size the model expects (the course used 256)."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="classes.txt with the class names."),
):
    """Convert a course checkpoint into a netcompress model file (no pickle code runs).

    Example: netcompress import-course ../shared/data/hw7/student_custom_small.bin --out course.safetensors
    """
    from .artifact import import_course_checkpoint, save_model
    from .data import read_class_names

    names = read_class_names(classes.parent) if classes else None
    if classes and classes.name != "classes.txt":
        raise NetcompressError(f"--classes {classes}: expected a file named classes.txt")
    net, spec = import_course_checkpoint(checkpoint, class_names=names, input_size=image_size)
    save_model(out, net, spec)
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes): {spec.arch} widths {spec.kwargs['widths']}")


@app.command("export-course")
def export_course(
    model_file: Path = typer.Argument(..., help="A StudentNet model file."),
    out: Path = typer.Option(..., "--out", help="state_dict file to write (.bin)."),
    zip_format: bool = typer.Option(False, "--zip", help="torch's zip serialization instead of the legacy one."),
):
    """Export a StudentNet as a plain state_dict that the course's code loads.

    Example: netcompress export-course runs/student/best.safetensors --out student.bin
    """
    from .artifact import export_course_state_dict, load_model

    net, spec = load_model(model_file)
    if not spec.arch.startswith("studentnet"):
        raise NetcompressError(f"{model_file} is a {spec.arch}; the course format holds StudentNet only")
    if spec.overrides:
        raise NetcompressError(f"{model_file} has replaced layers ({', '.join(spec.overrides)}), e.g. low-rank "
                               "factors, which the course's StudentNet cannot load; export the model before that step")
    export_course_state_dict(net, out, legacy=not zip_format)
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes, {'zip' if zip_format else 'legacy'} torch format)")


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
    seed: int = SeedOpt,
    device: str = DeviceOpt,
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
    from .compare_arch import compare
    from .distributed import World
    from .runtime import resolve_device
    from .train import TrainConfig

    dev = resolve_device(device)
    tr, va = _train_val(data, image_size, cache_dir, skip_bad, progress, World())
    make_loss = _distill_loss_factory(teacher, tr.class_names, dev, temperature, alpha)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    rows = compare(tr, va, cfg, out, device=dev, params=budget_params, bytes_int8=budget_bytes, groups=groups,
                   make_loss=make_loss, progress=progress)
    table = Table(title=f"architectures at {budget_params or budget_bytes:,} {'parameters' if budget_params else 'bytes (8-bit)'}")
    for col in ["architecture", "params", "bytes", "8-bit bytes", "MACs", "ms @1", "ms @64", "val acc"]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["architecture"], f"{r['params']:,}", f"{r['file_bytes']:,}", f"{r['int8_bytes']:,}",
                      f"{r['macs']:,}", f"{r['latency_ms_batch1']:.2f}", f"{r['latency_ms_batch64']:.1f}",
                      f"{r['val_accuracy']:.4f}")
    _emit({"rows": rows}, as_json, table)


@app.command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="Recipe TOML file, e.g. recipes/demo.toml."),
    out: Path = typer.Option(Path("runs/recipe"), "--out", help="Run directory; rerunning skips finished stages."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe field: section.field=value (repeatable)."),
    target_bytes: Optional[int] = typer.Option(None, "--target-bytes", help="Choose the best model with a file of at most N bytes."),
    target_params: Optional[int] = typer.Option(None, "--target-params", help="Choose the best model with at most N parameters."),
    device: str = DeviceOpt,
    cache_dir: Optional[Path] = CacheOpt,
    progress: bool = ProgressOpt,
    as_json: bool = JsonOpt,
):
    """Run a whole recipe (teacher, distillation, pruning, evaluation) into one directory, then write the report.

    A killed run, rerun with the same command, skips finished stages and resumes the one it was in.

    Example: netcompress run recipes/demo.toml --out runs/demo --target-bytes 300000 --set student.epochs=5
    """
    from .pipeline import run_recipe
    from .recipe import load_recipe
    from .report import write_report
    from .runtime import resolve_device

    parsed = load_recipe(recipe, overrides)
    summary = run_recipe(parsed, out, resolve_device(device), target_bytes=target_bytes, target_params=target_params,
                         cache_dir=cache_dir, progress=progress)
    md, html = write_report(out)
    table = Table(title=f"{recipe.name} -> {out}")
    for col in ["model", "bytes", "params", "val acc", "test acc"]:
        table.add_column(col, justify="right")
    for a in summary["artifacts"]:
        table.add_row(a["name"], f"{a['file_bytes']:,}", f"{a['params']:,}", f"{a['val_accuracy']:.4f}",
                      f"{summary['test'][a['name']]:.4f}" if a["name"] in summary["test"] else "")
    if as_json:
        _emit(summary, True)
    else:
        console.print(table)
        if summary["budget"]:
            console.print(f"budget choice: {summary['budget']['chosen']} ({summary['budget']['file']})")
        console.print(f"report: {html}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory made by `netcompress run`.")):
    """Write RUN_DIR/report.md and a self-contained RUN_DIR/report.html (tables, plots, environment).

    Example: netcompress report runs/demo
    """
    from .report import write_report

    md, html = write_report(run_dir)
    console.print(f"wrote {md} and {html}")


def _validation_accuracy(nets: dict, data: Path, size: int, cache_dir: Optional[Path], num_classes: int,
                         model_file: Path) -> dict:
    """Validation accuracy of each model in `nets` (fp32 first) on one decoded split."""
    import torch

    from .data import load_split
    from .evaluate import predict_logits

    ds = load_split(data, "validation", size, cache_dir=cache_dir)
    if ds.num_classes != num_classes:
        raise NetcompressError(f"{model_file} predicts {num_classes} classes but {data} has {ds.num_classes}")
    cpu = torch.device("cpu")
    return {k: (predict_logits(n, ds, cpu).argmax(1) == ds.labels).float().mean().item() for k, n in nets.items()}


@app.command()
def quantize(
    model_file: Path = typer.Argument(..., help="Model file to compress (.safetensors, or a course .bin)."),
    out: Path = typer.Option(..., "--out", help="Quantized model file to write (.ncq)."),
    codec: str = typer.Option("int8-minmax", "--codec",
                              help="fp16 | int8-minmax (the course's) | int8-channel | kbit | kmeans."),
    bits: int = typer.Option(8, "--bits", help="Bits per weight for kbit and kmeans (2-8)."),
    entropy: bool = typer.Option(False, "--entropy", help="LZMA-compress the stored codes."),
    fold_bn: Optional[bool] = typer.Option(None, "--fold-bn/--no-fold-bn",
                                           help="Fold BatchNorm into the conv before it [default: on for "
                                                "int8-channel, kbit, kmeans]."),
    budget: Optional[int] = typer.Option(None, "--budget", help="File size limit in bytes: per-tensor widths "
                                         "(2..--bits) chosen by measured sensitivity; needs --data, kbit or kmeans."),
    calibration: int = typer.Option(256, "--calibration", help="Training images that measure sensitivity (--budget)."),
    finetune: int = typer.Option(0, "--finetune", help="Epochs of quantization-aware fine-tuning (distilled from "
                                 "the fp32 model) on --data's training split; 0: none."),
    finetune_lr: float = typer.Option(3e-4, "--finetune-lr", help="AdamW learning rate for --finetune (cosine)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Also report validation accuracy, fp32 vs quantized."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Default: the model's own input size."),
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
    from .quantize import QuantConfig, load_quantized, save_quantized

    if out.suffix != ".ncq":
        raise NetcompressError(f"--out {out}: quantized files end in .ncq (other tools pick the loader by suffix)")
    net, spec = open_model(model_file)
    if not _is_torch(net):
        raise NetcompressError(f"{model_file} is an ONNX file; quantize a .safetensors model (or use `netcompress "
                               "export --int8` for an int8 ONNX model)")
    cfg = QuantConfig(codec=codec, bits=bits, entropy=entropy, fold_bn=fold_bn).checked()
    if (budget is not None or finetune) and data is None:
        raise NetcompressError("--budget and --finetune need --data DIR: they use its training images")
    stored = net
    if budget is not None or finetune:
        from .data import load_split

        train_split = load_split(data, "training", image_size or spec.input_size, cache_dir=cache_dir,
                                 progress=progress)
    if budget is not None:
        from .bit_allocation import allocate_bits, calibration_images

        cfg = allocate_bits(net, spec, cfg, calibration_images(train_split, calibration), budget, progress)
    if finetune:
        from .qat import finetune_quantized

        stored = finetune_quantized(net, spec, cfg, train_split, epochs=finetune, lr=finetune_lr, progress=progress)
        spec.info = {**spec.info, "quantization_aware_finetune": {"epochs": finetune, "lr": finetune_lr}}
    save_quantized(out, stored, spec, cfg)
    result = {"model": str(model_file), "out": str(out), "codec": cfg.codec, "bits": cfg.bits, "entropy": cfg.entropy,
              "fold_bn": cfg.fold_bn, "bytes": out.stat().st_size}
    if cfg.tensor_bits:
        result["bits"] = "/".join(str(b) for b in cfg.tensor_bits.values()) + " (per tensor)"
    if model_file.exists():
        result["source_bytes"] = model_file.stat().st_size
    if data is not None:
        accs = _validation_accuracy({"fp32": net, "quantized": load_quantized(out)[0]}, data,
                                    image_size or spec.input_size, cache_dir, spec.num_classes, model_file)
        result.update(val_accuracy_fp32=accs["fp32"], val_accuracy=accs["quantized"])
    _emit(result, as_json, _kv_table(f"quantize {model_file.name}", result))


@app.command()
def export(
    model_file: Path = typer.Argument(..., help="Model file (.safetensors, .ncq or a course .bin)."),
    out: Path = typer.Option(..., "--out", help="ONNX file to write (.onnx)."),
    onnx: bool = typer.Option(True, "--onnx", help="Export to ONNX (the only export format here; kept explicit)."),
    int8: bool = typer.Option(False, "--int8", help="Static int8 (QDQ) quantization with ONNX Runtime; needs --data."),
    calibration: int = typer.Option(256, "--calibration", help="Training images used to calibrate int8 ranges."),
    method: str = typer.Option("minmax", "--calibration-method", help="minmax, entropy or percentile."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder: calibration images (training split) "
                                                             "and, when given, fp32 vs exported validation accuracy."),
    cache_dir: Optional[Path] = CacheOpt,
    as_json: bool = JsonOpt,
):
    """Export a model to ONNX (fp32, dynamic batch), optionally int8 for ONNX Runtime.

    Example: netcompress export runs/kd/best.safetensors --onnx --int8 --calibration 256 --data ../shared/data/food101_10 --out kd-int8.onnx
    """
    import tempfile

    from .data import load_split
    from .onnx_export import export_onnx, load_onnx, quantize_onnx_int8

    if out.suffix != ".onnx":
        raise NetcompressError(f"--out {out}: ONNX files end in .onnx")
    if int8 and data is None:
        raise NetcompressError("--int8 needs --data DIR: its training images calibrate the activation ranges")
    net, spec = open_model(model_file)
    if not _is_torch(net):
        raise NetcompressError(f"{model_file} is already ONNX; export a .safetensors or .ncq model")
    if int8:
        train_split = load_split(data, "training", spec.input_size, cache_dir=cache_dir)
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(net, spec, Path(tmp) / "fp32.onnx")
            quantize_onnx_int8(fp32, out, train_split, calibration, method=method)
    else:
        export_onnx(net, spec, out)
    result = {"model": str(model_file), "out": str(out), "precision": "int8 (QDQ)" if int8 else "fp32",
              "bytes": out.stat().st_size}
    if data is not None:
        accs = _validation_accuracy({"fp32": net, "onnx": load_onnx(out)[0]}, data, spec.input_size, cache_dir,
                                    spec.num_classes, model_file)
        result.update(val_accuracy_fp32=accs["fp32"], val_accuracy=accs["onnx"])
    _emit(result, as_json, _kv_table(f"export {model_file.name}", result))


@app.command("course-pkl")
def course_pkl(
    model_file: Path = typer.Argument(..., help="A StudentNet model file (.safetensors, .ncq or course .bin)."),
    out: Path = typer.Option(..., "--out", help="Pickle to write (.pkl)."),
    bits: int = typer.Option(8, "--bits", help="8 (min-max uint8) or 16 (float16), as the course's encode8/encode16."),
    protocol: int = typer.Option(3, "--protocol", help="Pickle protocol (the course's files: 3)."),
    as_json: bool = JsonOpt,
):
    """Write the course's 8- or 16-bit weight pickle; `.pkl` files load back in every verb (safely, no code runs).

    Example: netcompress course-pkl ../shared/data/hw7/student_custom_small.bin --bits 8 --protocol 3 --out student8.pkl
    """
    from .course_pkl import save_course_pkl

    net, spec = open_model(model_file)
    if not spec.arch.startswith("studentnet"):
        raise NetcompressError(f"{model_file} is a {spec.arch}; the course's pickle format holds StudentNet only")
    save_course_pkl(out, net, bits, protocol)
    result = {"model": str(model_file), "out": str(out), "bits": bits, "protocol": protocol,
              "bytes": out.stat().st_size}
    _emit(result, as_json, _kv_table("course pickle", result))


def main() -> None:
    from .runtime import tune_allocator

    tune_allocator()
    try:
        app()
    except NetcompressError as exc:
        print(f"error: {exc}", file=sys.stderr)  # one unwrapped line: greppable, no traceback
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume where it stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
