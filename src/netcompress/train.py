"""Fit a model: AdamW, optional cosine schedule, best-validation checkpoint, resume after interruption.

A run directory holds:
  run.json         the settings (a rerun with other settings is refused, not mixed in)
  metrics.jsonl    one JSON line per finished epoch
  state.pt         model + optimizer + schedule after the last finished epoch (tensors only)
  best.safetensors the model file with the best validation accuracy so far
Rerunning the same command after Ctrl-C or a kill continues after the last finished epoch.
Each epoch's shuffling, augmentation and dropout draw from seed + epoch, so a resumed run sees
the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .artifact import ModelSpec, save_model
from .augment import AugmentConfig, Batch, iterate_batches
from .data import Split
from .distributed import World
from .errors import NetcompressError
from .evaluate import classification_metrics, predict_logits
from .files import atomic_write, atomic_write_text

# loss_fn(student logits, batch) -> scalar loss; distillation plugs in its own
LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    schedule: str = "cosine"  # cosine | constant
    label_smoothing: float = 0.0
    seed: int = 0
    channels_last: bool = True
    precision: str = "fp32"  # fp32 | bf16 (autocast forward passes; weights and optimizer stay fp32)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: no augmentation
    eval_batch_size: int = 256

    def check(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs={self.epochs} (must be >= 1)")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} (must be >= 1)")
        if not self.lr > 0:
            problems.append(f"lr={self.lr} (must be > 0)")
        if self.schedule not in ("cosine", "constant"):
            problems.append(f"schedule={self.schedule!r} (cosine or constant)")
        if self.precision not in ("fp32", "bf16"):
            problems.append(f"precision={self.precision!r} (fp32 or bf16)")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing={self.label_smoothing} (must be in [0, 1))")
        if problems:
            raise NetcompressError("bad training settings: " + "; ".join(problems))


@dataclass
class FitResult:
    best_accuracy: float
    best_epoch: int
    epochs_run: int
    model_path: Path
    history: list[dict]


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    return lambda logits, batch: F.cross_entropy(logits, batch.labels, label_smoothing=label_smoothing)


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps: int):
    """AdamW over trainable parameters, with a per-step cosine or constant schedule over `steps`."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def fit(
    model: nn.Module,
    spec: ModelSpec,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    device: torch.device,
    loss_fn: LossFn | None = None,
    settings: dict | None = None,
    progress: bool = True,
    after_step: Callable[[nn.Module], None] | None = None,
    world: World = World(),
) -> FitResult:
    """Train `model` on `train`, keep the best model on `val` in run_dir/best.safetensors.

    `settings` are extra facts that define the run (the loss, the teacher...) and must match on
    resume; `after_step` runs after every optimizer step (e.g. to keep pruning masks applied).
    Under torchrun (`world.size` > 1) each rank trains on its shard with batch_size / ranks
    images per step and DistributedDataParallel averages the gradients.
    """
    cfg.check()
    if cfg.batch_size % world.size:
        raise NetcompressError(f"--batch-size {cfg.batch_size} must be divisible by the {world.size} processes")
    if train.num_classes != spec.num_classes:
        raise NetcompressError(f"the model has {spec.num_classes} classes but the data has {train.num_classes}; "
                               "build the model for the data's classes")
    if not val.labeled:
        raise NetcompressError(f"validation split {val.name} has unlabeled files; validation needs labels")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    loss_fn = loss_fn or cross_entropy_loss(cfg.label_smoothing)
    local_batch = cfg.batch_size // world.size
    shard = math.ceil(len(train) / world.size)  # images per rank (padded: every rank runs as many steps)
    steps_per_epoch = math.ceil(shard / local_batch)
    progress = progress and world.main
    run_info = {"config": asdict(cfg), "arch": spec.arch, "kwargs": spec.kwargs, "train_images": len(train),
                **(settings or {})}

    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    start_epoch, best_acc, best_epoch, history = _resume(run_dir, run_info, model, opt, sched, device)
    if start_epoch > cfg.epochs:
        return FitResult(best_acc, best_epoch, 0, run_dir / "best.safetensors", history)
    world.barrier()  # every rank has read the old run.json before rank 0 rewrites it
    if world.main:
        atomic_write_text(run_dir / "run.json", json.dumps(run_info, indent=2))
    net = model
    if world.size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    for epoch in range(start_epoch, cfg.epochs + 1):
        torch.manual_seed(cfg.seed + epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        model.train()
        t0 = time.perf_counter()
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        batches = iterate_batches(train, local_batch, device=device, shuffle=True, augment=cfg.augment,
                                  generator=gen, channels_last=cfg.channels_last, shard=(world.rank, world.size))
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
                   disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            y = batch.labels
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                logits = net(batch.images)
                loss = loss_fn(logits.float(), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(model)
            total_loss += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if progress and step % 10 == 0:
                bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
        total_loss, correct, seen = world.sum(total_loss, correct, torch.tensor(float(seen)))
        correct, seen = int(correct), int(seen)
        train_seconds = time.perf_counter() - t0
        val_metrics = classification_metrics(
            predict_logits(model, val, device, cfg.eval_batch_size, cfg.channels_last), val.labels, val.num_classes)
        eval_seconds = time.perf_counter() - t0 - train_seconds
        row = {
            "epoch": epoch,
            "train_loss": round(total_loss.item() / seen, 5),
            "train_accuracy": round(correct / seen, 5),
            "val_loss": round(val_metrics["loss"], 5),
            "val_accuracy": round(val_metrics["accuracy"], 5),
            "lr": opt.param_groups[0]["lr"],
            "train_seconds": round(train_seconds, 3),
            "images_per_second": round(seen / train_seconds, 1),
            "eval_seconds": round(eval_seconds, 3),
        }
        if val_metrics["accuracy"] > best_acc:  # every rank evaluates the same weights: same decision
            best_acc, best_epoch = val_metrics["accuracy"], epoch
            spec.info.update({"val_accuracy": best_acc, "epoch": epoch})
            if world.main:
                save_model(run_dir / "best.safetensors", model, spec)
        row["best_val_accuracy"] = round(best_acc, 5)
        history.append(row)
        if world.main:
            _checkpoint(run_dir, model, opt, sched, epoch, best_acc, best_epoch, history)
        world.barrier()
        if world.main:
            tqdm.write(f"epoch {epoch:3d}  loss {row['train_loss']:.3f}  train acc {row['train_accuracy']:.3f}  "
                       f"val acc {row['val_accuracy']:.3f}  best {best_acc:.3f}  ({train_seconds:.1f} s, "
                       f"{row['images_per_second']:.0f} img/s)", file=sys.stderr)
    return FitResult(best_acc, best_epoch, cfg.epochs - start_epoch + 1, run_dir / "best.safetensors", history)


def _checkpoint(run_dir: Path, model, opt, sched, epoch, best_acc, best_epoch, history) -> None:
    """Write state.pt, then metrics.jsonl: on resume both agree on the last finished epoch."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": epoch, "best_accuracy": best_acc, "best_epoch": best_epoch}
    atomic_write(run_dir / "state.pt", lambda tmp: torch.save(state, tmp))
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def _resume(run_dir: Path, run_info: dict, model, opt, sched, device) -> tuple[int, float, int, list[dict]]:
    """Load state.pt if the run directory holds an interrupted run with the same settings."""
    state_path = run_dir / "state.pt"
    if not state_path.exists():
        return 1, -1.0, 0, []
    old = json.loads((run_dir / "run.json").read_text())
    old_cfg, new_cfg = old.get("config", {}), run_info["config"]
    differ = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
    differ += sorted(k for k in set(old) | set(run_info) if k != "config" and old.get(k) != run_info.get(k))
    if differ:
        raise NetcompressError(f"{run_dir} holds a run with other settings ({', '.join(differ)} differ); "
                               "rerun with the same settings to resume, or choose another --out")
    state = torch.load(state_path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    history = []
    if (run_dir / "metrics.jsonl").exists():
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    history = [r for r in history if r["epoch"] <= state["epoch"]]
    return state["epoch"] + 1, state["best_accuracy"], state["best_epoch"], history
