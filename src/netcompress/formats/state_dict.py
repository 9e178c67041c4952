"""Checkpoints as users have them, loaded into a registered architecture or the user's own module.

The file may be any kind `checkpoint.read_checkpoint` reads (a torch state_dict, the course's
8/16-bit pickles, a .npz), under any name. Renamed layers are matched by position where that is
unambiguous (`key_match`), and said so. Every other difference between the checkpoint and the
model is listed per tensor, with facts read from the tensors (class count, input channels) and a
way to build a model that fits, offered only when a model built that way was checked to load it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import NetcompressError
from ..models import create_model, model_kwargs
from ..models.registry import unseen_kwargs
from ..spec import ModelSpec, attach, copy_model, spec_of
from .checkpoint import read_checkpoint
from .key_match import first_misfit, leaf, match_by_position


def differences(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """One line per tensor that the checkpoint lacks, has in excess or has in another shape, then what the tensors
    show and, where one was checked to load it, how to build a model that fits."""
    lines = mismatches(model.state_dict(), state)
    if lines:
        lines += [f"likely fix: {fix}" for fix in likely_fixes(model, state)]
    return lines


def mismatches(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """The tensors missing, in excess or in another shape, one line each."""
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    lines = [f"missing from the checkpoint: {k} {list(expected[k].shape)}" for k in missing]
    lines += [f"not in the model: {k} {list(state[k].shape)}" for k in unexpected]
    lines += [f"{k}: checkpoint {list(state[k].shape)}, model {list(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    return lines


def fits(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether the checkpoint loads into `model` (by name, or by position where renamed)."""
    matched, _ = match_by_position(model.state_dict(), state)
    return not mismatches(model.state_dict(), matched)


def likely_fixes(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """What the tensors show about the model they came from, and a build of `model`'s class that loads them where
    one was checked to."""
    facts = []
    linears = [v for k, v in state.items() if leaf(k) == "weight" and v.dim() == 2]
    convs = [v for k, v in state.items() if leaf(k) == "weight" and v.dim() == 4]
    if linears:
        facts.append(f"the checkpoint predicts {linears[-1].shape[0]} classes"
                     + (f" through {len(linears)} Linear layers ({' -> '.join(str(int(v.shape[1])) for v in linears)}"
                        f" -> {linears[-1].shape[0]})" if len(linears) > 1 else ""))
    if convs:
        facts.append(f"the checkpoint's first convolution takes {convs[0].shape[1]} channel(s)")
    misfit = first_misfit(model.state_dict(), state)
    if misfit:
        facts.append(f"its tensors do not line up with the model's: {misfit}")
    kwargs = fitting_kwargs(model, state)
    if kwargs:
        facts.append(f"build the model with `{', '.join(f'{k}={v!r}' for k, v in kwargs.items())}`: it loads then")
    return facts


def fitting_kwargs(model: nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """Constructor arguments read from the checkpoint with which the model's class was checked to load it, or {}:
    those that differ from the model's own for a registered model, all of them for another class."""
    found = {**head_and_stem(model, state), **kwargs_from_state(model, state)}
    spec = spec_of(model)
    if not found:
        return {}
    try:
        if spec.arch:
            current = {k: v for k, v in spec.kwargs.items() if k != "pretrained"}
            changed = {k: v for k, v in found.items() if k in current and current[k] != v}
            candidate = create_model(spec.arch, **{**current, **changed}, **pretrained_off(spec.arch))
        else:
            changed, candidate = own_class_with(type(model), found, head_and_stem(model, state))
    except (TypeError, ValueError, NetcompressError):
        return {}
    return changed if changed and fits(candidate, state) else {}


def own_class_with(cls, found: dict, head: dict) -> tuple[dict, nn.Module]:
    """The user's class built with what the tensors show, or with the class count and channels alone."""
    try:
        return found, cls(**found)
    except TypeError:
        return head, cls(**head)


def pretrained_off(arch: str) -> dict:
    return {"pretrained": False} if "pretrained" in model_kwargs(arch) else {}


def kwargs_from_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """The constructor arguments a model family reads from a checkpoint (widths, groups...), or {}."""
    infer = getattr(type(model), "kwargs_from_state", None)
    try:
        return infer(state) if infer else {}
    except (KeyError, IndexError, ValueError):
        return {}


def load_state_dict(checkpoint: str | Path | dict, model: nn.Module, *, class_names: list[str] | None = None,
                    input_size: int | None = None, strict: bool = True, source: str | Path | None = None) -> nn.Module:
    """A copy of `model` holding a checkpoint's weights: a path to any checkpoint (torch state_dict, the course's
    8/16-bit pickle, .npz; its kind told by its bytes) or the dict of tensors.

    Layers named differently are matched by position where the names' last parts and the shapes
    agree throughout (a warning names them). Every missing, unexpected or differently shaped tensor
    is listed with the likely fix; with strict=False the tensors that fit are loaded and the rest keep
    the model's values. class_names and input_size complete the spec (default: the model's, or
    "0".."C-1"). source: the file a dict of tensors came from, for messages.
    """
    state = read_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    source = source or (checkpoint if not isinstance(checkpoint, dict) else "the checkpoint")
    expected = model.state_dict()
    state, renamed = match_by_position(expected, state)
    problems = differences(model, state)
    if problems and strict:
        raise NetcompressError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))
    if renamed:
        warnings.warn(f"{source}: its layers are named differently; matched to the model's by position (names' "
                      f"last parts and shapes agree throughout): "
                      + ", ".join(f"{old or '(top)'} -> {new or '(top)'}" for old, new in renamed[:6])
                      + (f" and {len(renamed) - 6} more" if len(renamed) > 6 else ""), stacklevel=2)
    net = copy_model(model)
    fitting = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    net.load_state_dict(fitting, strict=False)
    spec = spec_of(model)
    outputs = [m for m in net.modules() if isinstance(m, nn.Linear)]
    names = class_names or spec.class_names or [str(i) for i in range(outputs[-1].out_features if outputs else 0)]
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    spec = spec.replace(class_names=list(names), input_size=input_size or spec.input_size,
                        channels=first.in_channels if first is not None else spec.channels)
    if not isinstance(checkpoint, dict):
        spec = spec.with_info(imported_from=Path(checkpoint).name)
    if renamed:
        spec = spec.with_info(extra={**spec.info.extra, "renamed_by_position": [list(pair) for pair in renamed]})
    return attach(net.eval(), spec)


def load_into_registered(checkpoint: str | Path, arch: str, kwargs: dict | None = None, *,
                         class_names: list[str] | None = None, input_size: int = 0) -> nn.Module:
    """A registered architecture built to fit a checkpoint: the class count, input channels and (for the
    StudentNet and CNN families) widths, groups, classifier head and conv biases come from the tensors unless
    `kwargs` sets them. What the tensors cannot show (registered as the model's `unseen` arguments: pooling,
    strides, input scaling) is the registered value unless `kwargs` sets it; `assumed_layout` says which."""
    state = read_checkpoint(checkpoint)
    given = dict(kwargs or {})
    probe = create_model(arch, **{**given, **pretrained_off(arch)})
    inferred = {**kwargs_from_state(probe, state), **head_and_stem(probe, state)}
    full = model_kwargs(arch, **{**inferred, **assumed_layout(arch, given), **given}, **pretrained_off(arch))
    names = class_names or [str(i) for i in range(full.get("num_classes", 0))]
    base = ModelSpec(arch, full, list(names), input_size, channels=full.get("in_channels", 3)).build()
    state = inside_scaling(base, state)
    problems = differences(base, match_by_position(base.state_dict(), state)[0])
    if problems:
        raise NetcompressError(f"{checkpoint} does not fit {arch}:\n  " + "\n  ".join(problems)
                               + kwargs_hint(state, arch, given, inferred, input_size))
    net = load_state_dict(state, base, class_names=names, input_size=input_size, source=checkpoint)
    return attach(net, spec_of(net).with_info(imported_from=Path(checkpoint).name))


def inside_scaling(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint of a bare network, placed inside the input-scaling wrapper `model` puts around it (its mean and
    std buffers are the wrapper's own); as it is where `model` has no such wrapper or the checkpoint has it too."""
    inner, own = getattr(model, "net", None), dict(model.named_buffers(recurse=False))
    if not isinstance(inner, nn.Module) or set(own) != {"mean", "std"} or "mean" in state:
        return state
    return {**{f"net.{k}": v for k, v in state.items()}, **{k: v.clone() for k, v in own.items()}}


def assumed_layout(arch: str, kwargs: dict) -> dict:
    """The constructor arguments of `arch` that leave no trace in tensors (registered as `unseen`: pooling,
    strides, input scaling) and are not among `kwargs`, with the values an import assumes."""
    return {k: v for k, v in unseen_kwargs(arch).items() if k not in kwargs}


def kwargs_hint(state: dict, arch: str, given: dict, inferred: dict, input_size: int) -> str:
    """`--kwargs '...'` that loads the checkpoint (checked), the given arguments corrected by the tensors and
    the layout the import would otherwise assume stated; "" where none does."""
    corrected = {**given, **{k: v for k, v in inferred.items() if k in given}}
    if corrected == given:
        return ""
    corrected.update(assumed_layout(arch, corrected))
    try:
        model = ModelSpec(arch, model_kwargs(arch, **{**inferred, **corrected}, **pretrained_off(arch)), [],
                          input_size).build()
    except (NetcompressError, TypeError, ValueError):
        return ""
    if not fits(model, state):
        return ""
    return f"\n  rerun with `--kwargs '{json.dumps(corrected)}'`"


def head_and_stem(model: nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """num_classes and in_channels as the checkpoint's last Linear and first Conv2d have them (in order, whatever
    their names)."""
    out = {}
    linears = [v for k, v in state.items() if leaf(k) == "weight" and v.dim() == 2]
    if linears and any(isinstance(m, nn.Linear) for m in model.modules()):
        out["num_classes"] = int(linears[-1].shape[0])
    convs = [v for k, v in state.items() if leaf(k) == "weight" and v.dim() == 4]
    if convs and any(isinstance(m, nn.Conv2d) for m in model.modules()) and convs[0].shape[1] in (1, 3):
        out["in_channels"] = int(convs[0].shape[1])
    return out
