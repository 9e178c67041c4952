"""`netcompress train` and `netcompress distill`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import (
    AugmentConfig,
    DistillConfig,
    TeacherViews,
    TrainConfig,
    ViewConfig,
    fit,
    load,
    new_model,
    spec_of,
)
from ..preflight import Preflight, training_bytes
from ..process import resolve_device, seed_everything
from ..spec import attach
from ..train.distill import list_kd_losses
from ..train.distributed import init_from_env
from .common import (
    NAME_IMAGE_SIZE,
    BatchSizeOpt,
    BlocksOpt,
    CacheOpt,
    ChannelsOpt,
    CutmixOpt,
    DataOpt,
    DeviceOpt,
    HeadOpt,
    JsonOpt,
    LabelsOpt,
    MixupOpt,
    NprocOpt,
    PrecisionOpt,
    ProgressOpt,
    Registered,
    SeedOpt,
    SkipBadOpt,
    TestFromOpt,
    ThreadsOpt,
    ValFractionOpt,
    app,
    emit,
    folder,
    input_size_of,
    kv_table,
    launch_if_asked,
    set_threads,
)


@app.command()
def train(
    model: str = typer.Option(..., "--model", help="Registered model name, e.g. studentnet, resnet18 (`netcompress "
                              "models` lists them)."),
    data: Path = DataOpt,
    out: Path = typer.Option(Path("runs/train"), "--out", help="Run directory (resumes if it holds an interrupted run)."),
    image_size: int = typer.Option(96, "--image-size", help="Images are resized (shorter side) and center-cropped to this."),
    epochs: int = typer.Option(30, "--epochs"),
    batch_size: int = BatchSizeOpt,
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    weight_decay: float = typer.Option(1e-2, "--weight-decay"),
    schedule: str = typer.Option("cosine", "--schedule", help="cosine or constant learning rate."),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing"),
    mixup: float = MixupOpt,
    cutmix: float = CutmixOpt,
    width_mult: Optional[float] = typer.Option(None, "--width-mult", help="StudentNet width multiplier."),
    blocks: Optional[int] = BlocksOpt,
    head: Optional[int] = HeadOpt,
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--scratch", help="Start from ImageNet weights (teachers)."),
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
    precision: str = PrecisionOpt,
    nproc: int = NprocOpt,
    as_json: bool = JsonOpt,
):
    """Train a model from scratch (or from pretrained weights) with the course's augmentation.

    Keeps the best-validation model in OUT/best.safetensors; Ctrl-C, then the same command again,
    resumes after the last finished epoch. --data takes split folders (training|train,
    validation|val|valid, testing|test) in the Food-11 (<label>_<k>.jpg) or ImageFolder
    (<split>/<class>/*.jpg) layout, one folder per class with no split folders, or any of these
    with --labels labels.csv; a missing validation or testing split is carved from training
    (--val-fraction, --test-from). Data, output folder and model are checked before the first epoch.

    Example: netcompress train --model studentnet --data ../shared/data/food101_10 --image-size 64 --epochs 10 --out runs/student
    """
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
                      label_smoothing=label_smoothing, seed=seed, precision=precision,
                      augment=AugmentConfig(mixup=mixup, cutmix=cutmix))
    launch_if_asked(nproc)
    set_threads(threads)
    world, dev = init_from_env(resolve_device(device))
    seed_everything(seed)
    check = Preflight("train")
    ds = folder(data, image_size, cache_dir, skip_bad, progress and world.main, channels=channels, labels=labels,
                val_fraction=val_fraction, test_from=test_from, check=check)
    net = None if ds is None else check.attempt(new_model, model, _class_names(ds, world), image_size, channels,
                                                width_mult=width_mult, pretrained=pretrained, blocks=blocks, head=head)
    check.output(out, training_bytes(sum(p.numel() for p in net.parameters()) if net is not None else 0))
    check.raise_if_any()
    best = fit(net, ds, cfg, run_dir=out, device=dev, progress=progress, world=world)
    if world.main:
        _report(best, out, {"model": model}, as_json, f"train {model}")


@app.command()
def distill(
    teacher: Path = typer.Option(..., "--teacher", help="Teacher model file (.safetensors) trained on this data."),
    student: str = typer.Option("studentnet", "--student", help="Student model name, or a model file to start from."),
    data: Path = DataOpt,
    out: Path = typer.Option(Path("runs/distill"), "--out", help="Run directory (resumes if it holds an interrupted run)."),
    temperature: float = typer.Option(DistillConfig.temperature, "--temperature", "-T",
                                      help="Softmax temperature (the course's: 20)."),
    alpha: float = typer.Option(DistillConfig.alpha, "--alpha", help="Weight of the soft (teacher) term; 0 = plain "
                                "cross-entropy (the course's: 0.5)."),
    method: str = Registered(DistillConfig.method, "--method", names=list_kd_losses, help="One of {names}: logits "
                             "is Hinton's KD, rkd adds relational KD, dkd is decoupled KD (target and non-target "
                             "terms), dist is DIST (Pearson correlations)."),
    rkd_weight: float = typer.Option(1.0, "--rkd-weight", help="Weight of the relational term (method rkd)."),
    teacher_precision: str = typer.Option("auto", "--teacher-precision",
                                          help="auto (bf16 where the hardware has it natively), fp32 or bf16."),
    augment: bool = typer.Option(True, "--augment/--no-augment",
                                 help="The course's augmentation; without it the teacher runs once per image."),
    mixup: float = MixupOpt,
    cutmix: float = CutmixOpt,
    views: int = typer.Option(0, "--views", help="Cache the teacher's outputs for this many fixed views of every "
                              "image (their own warps, --mixup and --cutmix; kept in OUT/teacher_views.safetensors): "
                              "long schedules at the student's cost. 0: the teacher runs at every step."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="The student's input size [default: the "
                                             "teacher's]. Smaller than the teacher's: the teacher sees each augmented "
                                             "image at its own size, the student the same image shrunk."),
    epochs: int = typer.Option(30, "--epochs"),
    batch_size: int = BatchSizeOpt,
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(1e-2, "--weight-decay"),
    schedule: str = typer.Option("cosine", "--schedule"),
    width_mult: Optional[float] = typer.Option(None, "--width-mult", help="StudentNet width multiplier."),
    blocks: Optional[int] = BlocksOpt,
    head: Optional[int] = HeadOpt,
    labels: Optional[Path] = LabelsOpt,
    val_fraction: Optional[float] = ValFractionOpt,
    test_from: Optional[str] = TestFromOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    skip_bad: bool = SkipBadOpt,
    cache_dir: Optional[Path] = CacheOpt,
    progress: bool = ProgressOpt,
    precision: str = PrecisionOpt,
    nproc: int = NprocOpt,
    as_json: bool = JsonOpt,
):
    """Distill a teacher into a student: (1-a)*CE + a*T^2*KL(teacher/T || student/T), as the course did.

    The defaults, T=4 and alpha=0.9, did better here than the course's T=20, alpha=0.5 (pass
    -T 20 --alpha 0.5 for those); every verb that fine-tunes with --teacher and every recipe uses
    the same. Teacher and student see the same augmented batch; the teacher runs in eval mode with
    no gradients. --method rkd adds relational KD (distances and angles between the samples'
    penultimate features). Same run directory, resume, data layouts and outputs as `train`; the
    student takes the teacher's channels.

    Example: netcompress distill --teacher runs/teacher/best.safetensors --student studentnet --data ../shared/data/food101_10 --out runs/kd

    Example: netcompress distill --teacher runs/teacher/best.safetensors --student studentnet --data ../shared/data/food101_10 -T 20 --alpha 0.5 --out runs/kd-course
    """
    kd = DistillConfig(temperature=temperature, alpha=alpha, method=method, rkd_weight=rkd_weight,
                       teacher_precision=teacher_precision)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
                      seed=seed, augment=AugmentConfig(mixup=mixup, cutmix=cutmix) if augment else None,
                      precision=precision, input_size=image_size)
    launch_if_asked(nproc)
    set_threads(threads)
    world, dev = init_from_env(resolve_device(device))
    seed_everything(seed)
    check = Preflight("distill")
    teacher_spec = check.model_file(teacher, "teacher")
    size = image_size or (teacher_spec and check.attempt(input_size_of, teacher_spec, teacher)) or NAME_IMAGE_SIZE
    channels = teacher_spec.channels if teacher_spec else 3
    ds = folder(data, max(size, teacher_spec.input_size if teacher_spec else 0), cache_dir, skip_bad,
                progress and world.main, channels=channels, labels=labels, val_fraction=val_fraction,
                test_from=test_from, check=check)
    check.matches(teacher_spec, ds, teacher, "teacher")
    if Path(student).suffix == ".safetensors":
        net = check.attempt(load, student)
        if net is not None:
            attach(net, spec_of(net).replace(input_size=size))
    else:
        net = None if ds is None else check.attempt(new_model, student, _class_names(ds, world), size, channels,
                                                    width_mult=width_mult, blocks=blocks, head=head)
    check.output(out, training_bytes(sum(p.numel() for p in net.parameters()) if net is not None else 0))
    check.raise_if_any()
    teaching = teacher
    if views:
        plan = ViewConfig(views=views, augment=AugmentConfig(mixup=mixup, cutmix=cutmix), seed=seed)
        teaching = TeacherViews.cached(load(teacher).to(dev), ds.split("training"), plan,
                                       out / "teacher_views.safetensors", progress=progress and world.main)
    best = fit(net, ds, cfg, teacher=teaching, distill=kd, run_dir=out, device=dev, progress=progress, world=world,
               settings={"student": student})
    if world.main:
        _report(best, out, {"student": student, "teacher": str(teacher)}, as_json, "distill")


def _class_names(ds, world) -> list[str]:
    """The folder's classes; under torchrun the other ranks wait until rank 0 has decoded (and cached) it."""
    if world.main:
        names = ds.class_names
        world.barrier()
    else:
        world.barrier()
        names = ds.class_names
    return names


def _report(best, out: Path, head: dict, as_json: bool, title: str) -> None:
    info = spec_of(best).info
    summary = {**head, "best_val_accuracy": info.val_accuracy, "best_epoch": info.epoch,
               "model_file": str(out / "best.safetensors")}
    emit(summary, as_json, kv_table(title, summary))
