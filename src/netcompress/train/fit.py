"""Fit a model: AdamW, cosine schedule, best-validation model, distillation when a teacher is given.

`fit(model, data, ...)` trains a copy of any nn.Module and returns the best one on the validation
split. With a run directory it also survives interruptions (checkpoint.py: run.json, metrics.jsonl,
state.pt), and best.safetensors holds the model file with the best validation accuracy so far.
Rerunning the same call after Ctrl-C or a kill continues after the last finished epoch. Each
epoch's shuffling, augmentation and dropout draw from seed + epoch, so a resumed run sees the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..compress.batchnorm import recalibrate_batchnorm
from ..compress.pruners import apply_masks, weight_tensors
from ..data.augment import Batch, iterate_batches, resize_batch
from ..data.split import Split, split_of
from ..errors import NetcompressError
from ..files import RunLock, atomic_write_text
from ..formats.integrity import MAX_CLASSES
from ..formats.load import load
from ..formats.model_file import save_model
from ..measure.evaluate import classification_metrics, predict_logits
from ..process import bars_off, log, model_device, resolve_device
from ..spec import attach, copy_model, spec_of
from .average import WeightAverage
from .checkpoint import resume, save_checkpoint
from .memory import check_training_memory
from .config import TrainConfig
from .distill import DistillConfig, DistillLoss, check_teacher
from .distributed import World
from .views import TeacherViews

# loss_fn(student logits, batch) -> scalar loss
LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    return lambda logits, batch: F.cross_entropy(logits, batch.targets, label_smoothing=label_smoothing)


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps: int):
    """AdamW over trainable parameters, with a per-step cosine or constant schedule over `steps`."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def training_splits(data, val=None, world: World = World()) -> tuple[Split, Split | None]:
    """(training, validation) from a dataset folder, or from the user's own data and `val`.

    Under torchrun rank 0 decodes (and caches) a folder first; the other ranks then read its cache.
    """
    def load_both():
        train = split_of(data, "training")
        if val is not None:
            return train, split_of(val, "validation")
        return train, data.split("validation") if callable(getattr(data, "split", None)) else None

    if world.main:
        splits = load_both()
        world.barrier()
    else:
        world.barrier()
        splits = load_both()
    return splits


def fit(
    model: nn.Module,
    data,
    config: TrainConfig | None = None,
    *,
    val=None,
    teacher: nn.Module | str | Path | TeacherViews | None = None,
    distill: DistillConfig | None = None,
    run_dir: str | Path | None = None,
    device: str | torch.device = "auto",
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    settings: dict | None = None,
    world: World = World(),
    progress: bool = True,
    **overrides,
) -> nn.Module:
    """Train a copy of `model` and return the copy with the best validation accuracy (`model` is left as it is).

    data: a dataset folder (`ImageFolderData`: its training and validation splits), or your own
    training data (Split, torch Dataset of (image, label), DataLoader) with `val` the same kind
    (without `val`, the last epoch's model is returned). Keyword overrides replace config fields:
    fit(model, data, epochs=3). With `teacher` (a module or a model file), the loss is the
    distillation loss of `distill` (default DistillConfig(): T=4, alpha=0.9; DistillConfig.course() for the course's); with
    `TeacherViews` the batches are its cached views and the loss reads the teacher's cached logits.
    `penalty(model)` is added to every step's loss; `after_step(model)` runs after every
    optimizer step. A model whose spec says it is sparse (magnitude pruning) keeps its zeros.
    `settings`: extra facts that define the run and must match on resume. Under torchrun
    (`world.size` > 1) each rank trains on its shard with batch_size / ranks images per step.
    The returned module's spec records the classes, the input size and, in `info`, the best
    validation accuracy and its epoch.
    """
    try:
        cfg = replace(config or TrainConfig(), **overrides)
    except TypeError as exc:
        raise NetcompressError(f"fit: {exc}") from exc
    if cfg.batch_size % world.size:
        raise NetcompressError(f"batch_size = {cfg.batch_size} must be divisible by the {world.size} processes")
    dev = resolve_device(device)
    train, val_split = training_splits(data, val, world)
    if val_split is not None and not val_split.labeled:
        raise NetcompressError(f"validation split {val_split.name} has unlabeled files; validation needs labels")
    if train.num_classes > MAX_CLASSES:
        raise NetcompressError(f"the data has {train.num_classes:,} classes; model files hold at most "
                               f"{MAX_CLASSES:,}: merge classes or split the dataset")
    spec = spec_of(model)
    if spec.class_names and spec.num_classes != train.num_classes:
        raise NetcompressError(f"the model has {spec.num_classes} classes but the data has {train.num_classes}; "
                               "build the model for the data's classes")
    if spec.arch is not None and spec.channels != train.channels:
        raise NetcompressError(f"the model takes {spec.channels}-channel images but the data has {train.channels}: "
                               f"build it for the data (channels={train.channels}, --channels {train.channels})")
    spec = spec.replace(class_names=list(train.class_names), input_size=cfg.input_size or train.image_size,
                        channels=train.channels)
    settings = dict(settings or {})
    if getattr(data, "provenance", None):  # how the splits were made (a carved validation split, say)
        settings["data"] = data.provenance
        spec = spec.with_info(data=data.provenance)
    check_training_memory(model, min(cfg.batch_size // world.size, len(train)), train.channels, spec.input_size, dev)
    net = attach(copy_model(model), spec).to(dev)
    _check_outputs(net, train, dev, input_size=spec.input_size)
    loss_fn = cross_entropy_loss(cfg.label_smoothing)
    views = teacher if isinstance(teacher, TeacherViews) else None
    if views is not None:
        views.check(train)
        distill = distill or DistillConfig()
        loss_fn = DistillLoss(None, net, distill)
        settings.update(distill=asdict(distill), teacher={"views": views.meta})
        attach(net, spec.with_info(distilled_from={"views": views.meta["config"]}))
    elif teacher is not None:
        distill = distill or DistillConfig()
        teacher_net = _teacher_module(teacher, train)
        loss_fn = DistillLoss(teacher_net.to(dev), net, distill, cfg.channels_last)
        if cfg.augment is None:
            loss_fn.precompute(train)
        settings.update(distill=asdict(distill), teacher=str(teacher) if isinstance(teacher, (str, Path)) else
                        spec_of(teacher).arch or spec_of(teacher).info.module)
        attach(net, spec.with_info(distilled_from=settings["teacher"]))
    spec = spec_of(net)
    if penalty is not None:
        base_loss = loss_fn
        loss_fn = lambda logits, batch: base_loss(logits, batch) + penalty(net)  # noqa: E731
    if spec.info.sparse:
        after_step = _keep_zeros(net, after_step)
    loop = _Loop(net, train, val_split, cfg, loss_fn, dev, world, progress, after_step, views)
    run_info = {"config": asdict(cfg), "arch": spec.arch, "kwargs": spec.kwargs, "train_images": len(train),
                **settings}
    if run_dir is None:
        return loop.run(None, run_info)
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NetcompressError(f"{run_dir} is a file; the run needs a folder there: choose another output folder")
    if not world.main:
        return loop.run(run_dir, run_info)
    with RunLock(run_dir):
        return loop.run(run_dir, run_info)


def _teacher_module(teacher, train: Split) -> nn.Module:
    """The teacher as a private copy, checked against the data's classes."""
    net = load(teacher) if isinstance(teacher, (str, Path)) else copy_model(teacher)
    spec = spec_of(net)
    if spec.class_names:
        check_teacher(spec.class_names, train.class_names, teacher if isinstance(teacher, (str, Path)) else "module")
    _check_outputs(net, train, model_device(net), "the teacher")
    return net


@torch.no_grad()
def _check_outputs(net: nn.Module, train: Split, device: torch.device, what: str = "the model",
                   input_size: int | None = None) -> None:
    was_training = net.training
    try:
        out = net.eval()(resize_batch(next(iterate_batches(train, 2, device=device, channels_last=False)).images,
                                      input_size))
    except RuntimeError as exc:
        raise NetcompressError(f"{what} cannot run on the data's {train.channels}-channel "
                               f"{input_size or train.image_size}px images ({exc})") from exc
    finally:
        net.train(was_training)
    if out.dim() != 2 or out.shape[1] != train.num_classes:
        raise NetcompressError(f"{what} outputs shape {list(out.shape)} but the data has {train.num_classes} "
                               "classes: give it a classifier with that many outputs")


def _keep_zeros(net: nn.Module, then: Callable | None) -> Callable[[nn.Module], None]:
    """after_step that re-applies the zeros of every conv and linear weight (unstructured pruning's masks)."""
    masks = [(w != 0).to(w.dtype) for w in weight_tensors(net)]

    def keep(model: nn.Module) -> None:
        apply_masks(net, masks)
        if then is not None:
            then(model)

    return keep


class _Loop:
    """The epochs of one fit: train, validate, keep the best model, checkpoint to run_dir (if any)."""

    def __init__(self, net, train, val, cfg, loss_fn, device, world, progress, after_step, views):
        self.net, self.train, self.val, self.cfg, self.loss_fn = net, train, val, cfg, loss_fn
        self.device, self.world, self.after_step, self.views = device, world, after_step, views
        self.progress = progress and world.main
        self.average: WeightAverage | None = None  # made by run(), which knows the steps per epoch

    def run(self, run_dir: Path | None, run_info: dict) -> nn.Module:
        cfg, net, world = self.cfg, self.net, self.world
        local_batch = cfg.batch_size // world.size
        steps_per_epoch = math.ceil(math.ceil(len(self.train) / world.size) / local_batch)
        if cfg.channels_last:
            net.to(memory_format=torch.channels_last)
        opt, sched = make_optimizer(net, cfg, cfg.epochs * steps_per_epoch)
        self.average = WeightAverage(net, cfg.average_epochs, steps_per_epoch) if cfg.average_epochs else None
        start, best_acc, best_epoch, history = 1, -1.0, 0, []
        best_state = None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            start, best_acc, best_epoch, history = resume(run_dir, run_info, net, opt, sched, self.device,
                                                          self.average)
            world.barrier()  # every rank has read the old run.json before rank 0 rewrites it
            if world.main and start <= cfg.epochs:
                atomic_write_text(run_dir / "run.json", json.dumps(run_info, indent=2))
        ddp = net
        if world.size > 1:
            ddp = nn.parallel.DistributedDataParallel(net, device_ids=[self.device] if self.device.type == "cuda"
                                                      else None)
        for epoch in range(start, cfg.epochs + 1):
            row = self._epoch(ddp, opt, sched, epoch, local_batch, steps_per_epoch)
            acc = row.get("val_accuracy", 0.0)
            if self.val is None or acc > best_acc:  # every rank evaluates the same weights: same decision
                best_acc, best_epoch = acc, epoch
                attach(net, spec_of(net).with_info(val_accuracy=acc if self.val is not None else None, epoch=epoch))
                with self._averaged():
                    if run_dir is None:
                        best_state = copy.deepcopy(net.state_dict())
                    elif world.main:
                        save_model(net, run_dir / "best.safetensors")
            row["best_val_accuracy"] = round(best_acc, 5)
            history.append(row)
            if run_dir is not None and world.main:
                save_checkpoint(run_dir, net, opt, sched, epoch, best_acc, best_epoch, history, self.average)
            world.barrier()
            if world.main and self.progress:
                log(f"epoch {epoch:3d}  loss {row['train_loss']:.3f}  train acc {row['train_accuracy']:.3f}  "
                    + (f"val acc {acc:.3f}  best {best_acc:.3f}  " if self.val is not None else "")
                    + f"({row['train_seconds']:.1f} s, {row['images_per_second']:.0f} img/s)")
        if run_dir is not None:  # the best model is the file (also when every epoch ran before a rerun)
            net = load(run_dir / "best.safetensors", model=net)
        else:
            net.load_state_dict(best_state)
        return net.eval().to(memory_format=torch.contiguous_format)

    def _averaged(self):
        """The network with its averaged weights where the config averages them (validated and kept), else as is."""
        return self.average.applied(self.net) if self.average is not None else nullcontext()

    def _epoch(self, ddp, opt, sched, epoch: int, local_batch: int, steps: int) -> dict:
        cfg, world, device = self.cfg, self.world, self.device
        torch.manual_seed(cfg.seed + epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        self.net.train(not cfg.eval_mode)
        t0 = time.perf_counter()
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        if self.views is not None:  # cached teacher outputs: the views' own warps and mixing
            batches = self.views.batches(self.train, local_batch, device=device, generator=gen,
                                         shard=(world.rank, world.size), channels_last=cfg.channels_last)
        else:
            batches = iterate_batches(self.train, local_batch, device=device, shuffle=True, augment=cfg.augment,
                                      generator=gen, channels_last=cfg.channels_last, shard=(world.rank, world.size))
        bar = tqdm(batches, total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=bars_off(self.progress),
                   leave=False)
        for step, batch in enumerate(bar):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                logits = ddp(resize_batch(batch.images, cfg.input_size))  # the loss's teacher sees the full size
                loss = self.loss_fn(logits.float(), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if self.after_step is not None:
                self.after_step(self.net)
            if self.average is not None:
                self.average.update(self.net)
            total_loss += loss.detach() * len(batch.labels)
            correct += (logits.detach().argmax(1) == batch.labels).sum()
            seen += len(batch.labels)
            if self.progress and step % 10 == 0:
                bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
        total_loss, correct, seen = world.sum(total_loss, correct, torch.tensor(float(seen)))
        correct, seen = int(correct), int(seen)
        train_seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": round(total_loss.item() / seen, 5),
               "train_accuracy": round(correct / seen, 5), "lr": opt.param_groups[0]["lr"],
               "train_seconds": round(train_seconds, 3), "images_per_second": round(seen / train_seconds, 1)}
        if cfg.precise_bn:  # every rank draws the same images: the same statistics
            recalibrate_batchnorm(self.net, self.train, device, cfg.precise_bn, input_size=cfg.input_size,
                                  channels_last=cfg.channels_last, seed=cfg.seed + epoch)
        if self.val is not None:
            with self._averaged():
                logits = predict_logits(self.net, self.val, device, cfg.eval_batch_size, cfg.channels_last,
                                        cfg.input_size)
            metrics = classification_metrics(logits, self.val.labels, self.val.num_classes)
            row.update(val_loss=round(metrics["loss"], 5), val_accuracy=round(metrics["accuracy"], 5),
                       eval_seconds=round(time.perf_counter() - t0 - train_seconds, 3))
        return row
