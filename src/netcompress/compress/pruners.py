"""Pruning methods: how one step chooses and removes channels (or weights), one class per method.

A method is a `Pruner` subclass registered with `@register_pruner`; `PruneConfig`, the CLI and
recipes read the registry. Built in:
  slim       the course's rule: each prunable layer keeps its channels with the largest |γ| of the
             BatchNorm that follows them; every prunable layer shrinks by the same factor per step
             (width R^k after step k): Torch-Pruning's BN-scale importance over its dependency graph.
             A model may declare its own rule (`prune_channels`, see compress/prune.py): StudentNet
             does, to select exactly the course's channels.
  l1, l2     Torch-Pruning group magnitude importance (L1 or L2 norm of every weight a channel touches)
  taylor     Torch-Pruning first-order Taylor importance (|weight x gradient|) from a few training batches
  magnitude  unstructured: zero the smallest weights globally (kept at zero through fine-tuning). The
             dense file does not shrink and nothing runs faster; only sparse storage saves bytes.
Torch-Pruning's dependency graph keeps residual adds and depthwise convolutions consistent.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import iterate_batches
from ..data.split import Split
from ..errors import NetcompressError


class Pruner:
    """One pruning method. Subclass it, set `name`, implement `prune`, and register it."""

    name: str = ""
    structured: bool = True  # removes channels; False: zeros weights (the model keeps its shape)
    needs_batchnorm: bool = False
    needs_data: bool = False  # needs training images to rank (pass data= to prune)

    @property
    def ranks_single_groups(self) -> bool:
        """Whether it can rank the channels of one layer group without data (what latency pruning asks)."""
        return isinstance(self, TorchPruningPruner) and not self.needs_data

    def prune(self, model: nn.Module, cfg, *, step: int, example_input: torch.Tensor,
              data: Split | None) -> nn.Module:
        """Prune `model` (a private copy: change it in place or build a new one) by one step of `cfg`.

        `step` counts the steps of this method and rate so far, this one included (1 for the first).
        """
        raise NotImplementedError


_PRUNERS: dict[str, Pruner] = {}


def register_pruner(cls: type[Pruner]) -> type[Pruner]:
    """Class decorator: make a pruning method available by its name."""
    if not cls.name:
        raise ValueError(f"pruner {cls.__name__} needs a name")
    _PRUNERS[cls.name] = cls()
    return cls


def get_pruner(name: str) -> Pruner:
    if name not in _PRUNERS:
        raise NetcompressError(f"method = {name!r}: choose one of {', '.join(list_pruners())}")
    return _PRUNERS[name]


def list_pruners() -> list[str]:
    return list(_PRUNERS)


# ---- Torch-Pruning for every model ------------------------------------------------------------------

class TorchPruningPruner(Pruner):
    """Structured pruning over Torch-Pruning's dependency graph, ranked by `importance()`."""

    def importance(self):
        raise NotImplementedError

    def rank_with_gradients(self, model: nn.Module, data: Split | None, device: torch.device, cfg) -> None:
        """Methods that rank by gradients compute them here."""

    def prune(self, model, cfg, *, step, example_input, data):
        import torch_pruning as tp

        model.eval()
        classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
        pruner = tp.pruner.MetaPruner(model, example_input, importance=self.importance(), pruning_ratio=1 - cfg.rate,
                                      global_pruning=cfg.global_ranking, ignored_layers=classifier)
        self.rank_with_gradients(model, data, example_input.device, cfg)
        pruner.step()
        model.zero_grad(set_to_none=True)
        return model


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Every group of coupled channels that can be pruned, by the name of the layer that produces them, with its
    width (Torch-Pruning's dependency graph: a depthwise conv or a residual add couples layers)."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    names = {module: name for name, module in model.named_modules()}
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    groups = {}
    for group in graph.get_all_groups(ignored_layers=classifier, root_module_types=[nn.Conv2d, nn.Linear]):
        root = group[0].dep.target.module
        if root not in classifier:
            groups[names[root]] = len(group[0].idxs)
    return groups


def prune_group(model: nn.Module, layer: str, remove: int, pruner: Pruner, example_input: torch.Tensor) -> nn.Module:
    """Remove the `remove` least important output channels of `layer` (and every layer coupled to them), ranked
    by `pruner`'s importance, from `model` in place."""
    import torch_pruning as tp

    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    module = model.get_submodule(layer)
    handler = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
    width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    group = graph.get_pruning_group(module, handler, idxs=list(range(width)))
    scores = pruner.importance()(group)
    drop = torch.argsort(scores, stable=True)[:remove].tolist()
    graph.get_pruning_group(module, handler, idxs=drop).prune()
    return model


@register_pruner
class Slim(TorchPruningPruner):
    name, needs_batchnorm = "slim", True

    def importance(self):
        import torch_pruning as tp

        return tp.importance.BNScaleImportance()



@register_pruner
class L1(TorchPruningPruner):
    name = "l1"

    def importance(self):
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=1)


@register_pruner
class L2(TorchPruningPruner):
    name = "l2"

    def importance(self):
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=2)


@register_pruner
class Taylor(TorchPruningPruner):
    name, needs_data = "taylor", True

    def importance(self):
        import torch_pruning as tp

        return tp.importance.GroupTaylorImportance()

    def rank_with_gradients(self, model, data, device, cfg):
        model.zero_grad()
        gen = torch.Generator().manual_seed(0)
        batches = iterate_batches(data, 64, device=device, shuffle=True, generator=gen, channels_last=False)
        for _, batch in zip(range(cfg.taylor_batches), batches):
            F.cross_entropy(model(batch.images), batch.labels).backward()


# ---- unstructured magnitude pruning ---------------------------------------------------------------

@register_pruner
class Magnitude(Pruner):
    name, structured = "magnitude", False

    def prune(self, model, cfg, *, step, example_input, data):
        apply_masks(model, magnitude_masks(model, cfg.rate**step))
        return model


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
