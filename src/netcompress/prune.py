"""Structured channel pruning that really removes channels, and unstructured magnitude pruning.

Methods (all rank, then remove, then fine-tune; repeated `steps` times):
  slim       the course's rule: each prunable layer keeps its channels with the largest |γ| of the
             BatchNorm that follows them; every prunable layer shrinks by the same factor per step
             (width R^k after step k). On StudentNet this is the course's exact selection; with
             --global, or on other models, Torch-Pruning's BN-scale importance over its dependency graph.
  l1, l2     Torch-Pruning group magnitude importance (L1 or L2 norm of every weight a channel touches)
  taylor     Torch-Pruning first-order Taylor importance (|weight x gradient|) from a few training batches
  magnitude  unstructured: zero the smallest weights globally (masks kept through fine-tuning). The
             dense file does not shrink and nothing runs faster; only sparse storage saves bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .artifact import ModelSpec, load_model, save_model
from .augment import iterate_batches
from .data import Split
from .errors import NetcompressError
from .evaluate import classification_metrics, predict_logits
from .files import atomic_write_text
from .measure import measure_model
from .models.studentnet import StudentNet
from .surgery import layer_overrides
from .train import LossFn, TrainConfig, cross_entropy_loss, fit

METHODS = ("slim", "l1", "l2", "taylor", "magnitude")


@dataclass
class PruneConfig:
    method: str = "slim"
    rate: float = 0.95  # fraction of each prunable layer (or of all weights: magnitude) kept per step
    steps: int = 5
    global_ranking: bool = False  # rank channels across layers instead of per layer
    sparsity: float = 0.0  # Network Slimming: L1 penalty on BatchNorm γ during a training phase before pruning
    sparsity_epochs: int = 0
    taylor_batches: int = 8

    def check(self, model: nn.Module) -> None:
        if self.method not in METHODS:
            raise NetcompressError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if not 0 < self.rate < 1:
            raise NetcompressError(f"--rate {self.rate} must lie strictly between 0 and 1 "
                                   "(the fraction of channels kept per step; the course used 0.95)")
        if self.steps < 1:
            raise NetcompressError(f"--steps {self.steps} must be >= 1")
        if self.sparsity < 0 or (self.sparsity > 0) != (self.sparsity_epochs > 0):
            raise NetcompressError("--sparsity and --sparsity-epochs go together: a positive L1 weight and epochs")
        if self.method == "slim" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise NetcompressError("--method slim ranks channels by BatchNorm γ, but this model has no BatchNorm; "
                                   "use --method l1, l2 or taylor")


# ---- the course's rule on StudentNet -------------------------------------------------------------

def course_widths_at(widths: list[int], rate: float, step: int) -> list[int]:
    """Widths after `step` steps: the course scales widths 3..n-2 by rate^step (int truncation)."""
    mult = 1.0
    for _ in range(step):
        mult *= rate  # repeated products, as the course computed its width_mult
    return [int(w * mult) if 3 <= i < len(widths) - 1 else w for i, w in enumerate(widths)]


def slim_selection(model: StudentNet, new_widths: list[int]) -> list[torch.Tensor]:
    """Kept channels per width: the largest |γ| of the BatchNorm after them (block i+1's), in index order."""
    keep = []
    for i, (old, new) in enumerate(zip(model.widths, new_widths)):
        if i + 1 == len(model.widths):
            if new != old:
                raise NetcompressError("the course's rule never prunes the classifier's input width")
            keep.append(torch.arange(old))
            continue
        gamma = model.cnn[i + 1][1].weight.detach().abs()
        keep.append(torch.argsort(gamma, descending=True, stable=True)[:new].sort().values)
    return keep


@torch.no_grad()
def slim_studentnet(model: StudentNet, spec: ModelSpec, new_widths: list[int]) -> tuple[StudentNet, ModelSpec]:
    """A new StudentNet of `new_widths` holding the surviving slices of `model`'s weights."""
    keep = slim_selection(model, new_widths)
    new_spec = replace(spec, kwargs={**spec.kwargs, "widths": list(new_widths)}, info=dict(spec.info))
    new = new_spec.build()
    old_state, new_state = model.state_dict(), {}
    for name, target in new.state_dict().items():
        value = old_state[name]
        parts = name.split(".")
        if parts[0] == "cnn":
            block, layer = int(parts[1]), int(parts[2])
            if value.dim() > 0:
                if block == 0:
                    value = value[keep[0]]  # first conv's outputs and their BatchNorm
                elif layer in (0, 1):
                    value = value[keep[block - 1]]  # depthwise conv and BatchNorm on widths[block-1]
                elif parts[3] == "weight":
                    value = value[keep[block]][:, keep[block - 1]]  # pointwise: outputs x inputs
                else:
                    value = value[keep[block]]
        new_state[name] = value.clone()
        assert new_state[name].shape == target.shape, name
    new.load_state_dict(new_state)
    return new.train(model.training), new_spec


# ---- Torch-Pruning for every method and model -----------------------------------------------------

def _importance(method: str):
    import torch_pruning as tp

    return {
        "slim": lambda: tp.importance.BNScaleImportance(),
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
    }[method]()


def tp_prune(model: nn.Module, spec: ModelSpec, cfg: PruneConfig, train: Split | None,
             device: torch.device) -> tuple[nn.Module, ModelSpec]:
    """One step with Torch-Pruning's dependency graph: residual adds and depthwise convs stay consistent."""
    import torch_pruning as tp

    model = model.to(device).eval()
    example = torch.rand(1, 3, spec.input_size, spec.input_size, device=device)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(model, example, importance=_importance(cfg.method), pruning_ratio=1 - cfg.rate,
                                  global_pruning=cfg.global_ranking, ignored_layers=classifier)
    if cfg.method == "taylor":
        if train is None:
            raise NetcompressError("taylor importance needs training data")
        model.zero_grad()
        gen = torch.Generator().manual_seed(0)
        batches = iterate_batches(train, 64, device=device, shuffle=True, generator=gen, channels_last=False)
        for _, batch in zip(range(cfg.taylor_batches), batches):
            F.cross_entropy(model(batch.images), batch.labels).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    if isinstance(model, StudentNet):  # record the pruned StudentNet as plain per-layer widths
        widths = [model.cnn[0][0].out_channels] + [b[3].out_channels for b in model.cnn[1:-1]]
        new_spec = replace(spec, kwargs={**spec.kwargs, "widths": widths}, info=dict(spec.info))
        clean = new_spec.build()
        clean.load_state_dict(model.state_dict())
        return clean.eval(), new_spec
    base = ModelSpec(spec.arch, spec.kwargs, spec.class_names, spec.input_size).build()
    return model, replace(spec, overrides=layer_overrides(base, model), info=dict(spec.info))


# ---- unstructured magnitude pruning ---------------------------------------------------------------

def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def magnitude_masks(model: nn.Module, keep_fraction: float) -> list[torch.Tensor]:
    """Masks keeping the largest-magnitude `keep_fraction` of all conv and linear weights (one global threshold)."""
    weights = weight_tensors(model)
    scores = torch.cat([w.abs().flatten() for w in weights])
    n_keep = max(1, int(round(keep_fraction * scores.numel())))
    threshold = torch.topk(scores, n_keep, sorted=True).values[-1]
    return [(w.abs() >= threshold).to(w.dtype) for w in weights]


def apply_masks(model: nn.Module, masks: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for w, m in zip(weight_tensors(model), masks):
            w.mul_(m)


# ---- the iterative schedule ---------------------------------------------------------------------

def bn_l1_penalty(model: nn.Module, weight: float, base: LossFn) -> LossFn:
    """Network Slimming's training loss: base loss + weight * sum |γ| over every BatchNorm."""
    gammas = [m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    return lambda logits, batch: base(logits, batch) + weight * sum(g.abs().sum() for g in gammas)


def prune_schedule(
    model: nn.Module,
    spec: ModelSpec,
    train: Split,
    val: Split,
    cfg: PruneConfig,
    train_cfg: TrainConfig,
    run_dir: str | Path,
    *,
    device: torch.device,
    make_loss: callable = None,
    progress: bool = True,
) -> list[dict]:
    """Prune `steps` times, fine-tuning after each step with a fresh optimizer (the course forgot to).

    Each step fine-tunes in run_dir/step{k}/ (resumable) from the best model of the step before and
    keeps its best-validation model; run_dir/pruning.jsonl gets one row per step (step 0 = input).
    `make_loss(model)` gives the fine-tuning loss (distillation when a teacher is given).
    """
    cfg.check(model)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {"prune": vars(cfg)}
    sparse = cfg.method == "magnitude"

    def record(k: int, net: nn.Module, net_spec: ModelSpec, extra: dict) -> None:
        path = run_dir / f"step{k}.safetensors"
        save_model(path, net, net_spec)
        sparse_path = save_model(run_dir / f"step{k}.sparse.safetensors", net, net_spec, sparse=True) if sparse else None
        rows.append({"step": k, "method": cfg.method, "rate": cfg.rate, "kept": round(cfg.rate**k, 5),
                     **measure_model(net, net_spec, path, val, device, sparse_path), **extra, "model_file": path.name})
        atomic_write_text(run_dir / "pruning.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        if progress:
            r = rows[-1]
            print(f"step {k}: {r['params']:,} params, {r['file_bytes']:,} bytes, val acc {r['val_accuracy']:.4f}, "
                  f"{r['latency_ms_batch64']:.1f} ms at batch 64", flush=True)

    rows: list[dict] = []
    if cfg.sparsity > 0:
        sparse_cfg = replace(train_cfg, epochs=cfg.sparsity_epochs)
        loss = bn_l1_penalty(model, cfg.sparsity, make_loss(model) if make_loss else cross_entropy_loss())
        result = fit(model, spec, train, val, sparse_cfg, run_dir / "sparsity", device=device, loss_fn=loss,
                     settings={**settings, "phase": "sparsity"}, progress=progress)
        model, spec = load_model(result.model_path)
    record(0, model.to(device), spec, {})
    original_widths = list(getattr(model, "widths", []))
    current, current_spec = model, spec
    for k in range(1, cfg.steps + 1):
        if cfg.method == "magnitude":
            pruned, pruned_spec = current, replace(current_spec, info=dict(current_spec.info))
            masks = magnitude_masks(pruned, cfg.rate**k)
            apply_masks(pruned, masks)
            keep_masks = lambda net, m=masks: apply_masks(net, m)  # noqa: E731
        elif cfg.method == "slim" and isinstance(current, StudentNet) and not cfg.global_ranking:
            pruned, pruned_spec = slim_studentnet(current, current_spec, course_widths_at(original_widths, cfg.rate, k))
            keep_masks = None
        else:
            pruned, pruned_spec = tp_prune(current, current_spec, cfg, train, device)
            keep_masks = None
        pruned.to(device)
        before = classification_metrics(predict_logits(pruned, val, device), val.labels, val.num_classes)["accuracy"]
        pruned_spec.info.update({"pruned": {"method": cfg.method, "rate": cfg.rate, "step": k}})
        result = fit(pruned, pruned_spec, train, val, train_cfg, run_dir / f"step{k}", device=device,
                     loss_fn=make_loss(pruned) if make_loss else None, settings={**settings, "step": k},
                     progress=progress, after_step=keep_masks)
        current, current_spec = load_model(result.model_path)
        current.to(device)
        record(k, current, current_spec, {"val_accuracy_before_finetune": round(before, 5)})
    return rows
