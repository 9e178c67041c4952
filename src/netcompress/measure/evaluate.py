"""Accuracy of a model on a split: predictions, classification metrics, confusion plots and submission files."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
import torch.nn as nn

from ..data.augment import iterate_batches, resize_batch
from ..data.split import Split, split_of
from ..errors import NetcompressError
from ..files import atomic_write_text
from ..plots import pyplot, save_figure
from ..process import model_device, resolve_device
from ..spec import copy_model, spec_of


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split, device: torch.device, batch_size: int = 256,
                   channels_last: bool = True, input_size: int | None = None) -> torch.Tensor:
    """Logits [N, C] for a whole split, in file order (center crop: the cached image as is, resized to
    `input_size` when given); `model` on `device`."""
    was_training = model.training
    model.eval()
    outs = [model(resize_batch(b.images, input_size)).float().cpu()
            for b in iterate_batches(split, batch_size, device=device, channels_last=channels_last)]
    model.train(was_training)
    return torch.cat(outs)


def predict(model: nn.Module, data, split: str = "testing", *, device: str | torch.device | None = None,
            batch_size: int = 256) -> torch.Tensor:
    """Logits [N, C] of `model` for split `split` of a dataset folder (or for your own data), in file order.

    device: where to run (default: where the model is; elsewhere, a copy runs there).
    """
    dev = model_device(model) if device is None else resolve_device(device)
    net = model if dev == model_device(model) else copy_model(model).to(dev)
    return predict_logits(net, split_of(data, split), dev, batch_size)


def evaluate(model: nn.Module, data, split: str = "validation", *, device: str | torch.device | None = None,
             batch_size: int = 256) -> dict:
    """Accuracy, mean cross-entropy, per-class accuracy and confusion matrix of `model` on a labeled split."""
    images, logits = scored_logits(model, data, split, device=device, batch_size=batch_size)
    return {"split": images.name, "images": len(images),
            **classification_metrics(logits, images.labels, images.num_classes)}


def scored_logits(model: nn.Module, data, split: str = "validation", *, device: str | torch.device | None = None,
                  batch_size: int = 256) -> tuple[Split, torch.Tensor]:
    """A labeled split and `model`'s logits on it with the columns in the data's class order: what `evaluate`
    scores, for a caller that needs both the metrics and the predictions."""
    images = split_of(data, split)
    if not images.labeled:
        raise NetcompressError(f"split {images.name} has unlabeled files; evaluation needs labels "
                               "(predict works on unlabeled test sets)")
    num_classes = spec_of(model).num_classes
    if num_classes and num_classes != images.num_classes:
        raise NetcompressError(f"the model predicts {num_classes} classes but the data has {images.num_classes}")
    order = data_order(spec_of(model).class_names, images.class_names)
    logits = predict(model, images, split, device=device, batch_size=batch_size)
    return images, logits if order is None else logits[:, order]


def data_order(model_classes: list[str], data_classes: list[str]) -> list[int] | None:
    """For each of the data's classes, the model output that predicts it: None when they are the same list, a
    permutation when the same names come in another order; names that differ are refused, since scoring one
    class's output as another's would give a silently wrong accuracy. Models or data without class names (their
    classes are only numbered) are compared by count alone."""
    if not model_classes or list(model_classes) == list(data_classes) or _numbered(model_classes) \
            or _numbered(data_classes):
        return None
    if set(model_classes) != set(data_classes) or len(set(data_classes)) != len(data_classes):
        missing = [c for c in data_classes if c not in model_classes]
        extra = [c for c in model_classes if c not in data_classes]
        raise NetcompressError(
            f"the model's classes ({_listed(model_classes)}) are not the data's ({_listed(data_classes)}): the data "
            f"has {_listed(missing) or 'no other class'} that the model lacks, and the model has "
            f"{_listed(extra) or 'no other class'} that the data lacks; evaluate it on data of its own classes")
    return [list(model_classes).index(c) for c in data_classes]


def _numbered(names: list[str]) -> bool:
    return list(names) == [str(i) for i in range(len(names))]


def _listed(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Accuracy, mean cross-entropy, per-class accuracy and the confusion matrix (rows: true class)."""
    pred = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)
    per_class = confusion.diag().float() / confusion.sum(1).clamp(min=1).float()
    return {
        "accuracy": (pred == labels).float().mean().item(),
        "loss": nn.functional.cross_entropy(logits, labels).item(),
        "per_class_accuracy": per_class.tolist(),
        "confusion": confusion.tolist(),
    }


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: str | Path, title: str = "") -> Path:
    plt = pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    im = ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(r) for r in confusion) or 1
    for i in range(n):
        for j in range(n):
            v = confusion[i][j]
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > peak / 2 else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, Path(path))


def write_submission(pred: torch.Tensor, split: Split, path: str | Path, with_filenames: bool = False) -> Path:
    """The course's format: header Id,label; Id = the file's place in the split's sorted listing. Files left
    out as unreadable keep their Id with an empty label; with_filenames adds a file column."""
    skipped = dict(split.skipped)
    kept = iter(zip(split.files, pred.tolist()))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Id", "label"] + (["file"] if with_filenames else []))
    for i in range(len(split) + len(skipped)):
        name, label = (skipped[i], "") if i in skipped else next(kept)
        writer.writerow([i, label] + ([name] if with_filenames else []))
    return atomic_write_text(path, out.getvalue())
