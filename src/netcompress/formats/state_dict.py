"""Checkpoints as users have them: a plain torch state_dict (legacy or zip format), read with
`weights_only=True`, loaded into a registered architecture or the user's own module.

Every difference between the checkpoint and the model is listed per tensor, with the likely fix:
another class count, another input channel count, other per-layer widths (read from the
checkpoint for the StudentNet and CNN families), a key prefix left by a wrapper.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import NetcompressError
from ..models import create_model, model_kwargs
from ..spec import ModelSpec, attach, copy_model, spec_of

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
WRAPPER_PREFIXES = ("module.", "model.", "net.")


def read_torch_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a torch checkpoint, unwrapped from {"state_dict": ...}-style dicts; no code runs."""
    path = Path(path)
    if not path.is_file():
        raise NetcompressError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise NetcompressError(
                f"{path}: holds Python objects besides tensors (a whole pickled model?), which netcompress never "
                "unpickles; in the code that made it, save model.state_dict() instead") from None
        raise NetcompressError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    while isinstance(obj, dict) and not _is_state(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not _is_state(obj):
        raise NetcompressError(f"{path}: not a state_dict (a dict of tensors); found {type(obj).__name__}"
                               + (f" with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, dict) else ""))
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in WRAPPER_PREFIXES:  # DataParallel and similar wrappers
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _is_state(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) for k in obj) and \
        sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def differences(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """One line per tensor that the checkpoint lacks, has in excess or has in another shape, then the likely fix."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, list(state[k].shape), list(v.shape)) for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    lines = [f"missing from the checkpoint: {k} {list(expected[k].shape)}" for k in missing]
    lines += [f"not in the model: {k} {list(state[k].shape)}" for k in unexpected]
    lines += [f"{k}: checkpoint {a}, model {b}" for k, a, b in shapes]
    if lines:
        lines += [f"likely fix: {fix}" for fix in _likely_fixes(model, state, missing, unexpected, shapes)]
    return lines


def _likely_fixes(model, state, missing, unexpected, shapes) -> list[str]:
    fixes = []
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    changed = {k for k, _, _ in shapes}
    if linears and f"{linears[-1]}.weight" in changed:
        fixes.append(f"the checkpoint predicts {state[linears[-1] + '.weight'].shape[0]} classes: build the model with "
                     f"num_classes={state[linears[-1] + '.weight'].shape[0]}")
    if convs and f"{convs[0]}.weight" in changed and state[convs[0] + ".weight"].shape[1] != \
            model.get_submodule(convs[0]).weight.shape[1]:
        fixes.append(f"the checkpoint's first convolution takes {state[convs[0] + '.weight'].shape[1]} channel(s): "
                     f"build the model with in_channels={state[convs[0] + '.weight'].shape[1]}")
    inferred = kwargs_from_state(model, state)
    if inferred and (missing or unexpected or shapes):
        fixes.append(f"the checkpoint's architecture: {', '.join(f'{k}={v}' for k, v in inferred.items())}")
    for prefix in {k.split(".")[0] + "." for k in unexpected}:
        if missing and all(k.startswith(prefix) and k[len(prefix):] in set(missing) for k in unexpected):
            fixes.append(f"the checkpoint's keys carry the prefix {prefix!r}: remove it")
    return fixes or ["the checkpoint was made from another architecture: build the model it was saved from"]


def kwargs_from_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """The constructor arguments a model family reads from a checkpoint (widths, groups...), or {}."""
    infer = getattr(type(model), "kwargs_from_state", None)
    try:
        return infer(state) if infer else {}
    except (KeyError, IndexError, ValueError):
        return {}


def load_state_dict(checkpoint: str | Path | dict, model: nn.Module, *, class_names: list[str] | None = None,
                    input_size: int | None = None, strict: bool = True) -> nn.Module:
    """A copy of `model` holding a checkpoint's weights (a path to a torch state_dict file, or the dict).

    Every missing, unexpected or differently shaped tensor is listed with the likely fix; with
    strict=False the tensors that fit are loaded and the rest keep the model's values. class_names
    and input_size complete the spec (default: the model's, or "0".."C-1").
    """
    state = read_torch_state(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    source = checkpoint if not isinstance(checkpoint, dict) else "the checkpoint"
    problems = differences(model, state)
    if problems and strict:
        raise NetcompressError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))
    expected = model.state_dict()
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
    return attach(net.eval(), spec)


def load_into_registered(checkpoint: str | Path, arch: str, kwargs: dict | None = None, *,
                         class_names: list[str] | None = None, input_size: int = 0) -> nn.Module:
    """A registered architecture built to fit a checkpoint: the class count, input channels and (for the
    StudentNet and CNN families) widths and groups come from the tensors unless `kwargs` sets them."""
    state = read_torch_state(checkpoint)
    given = dict(kwargs or {})
    probe = create_model(arch, **{**given, **({"pretrained": False} if "pretrained" in model_kwargs(arch) else {})})
    inferred = {**kwargs_from_state(probe, state), **_head_and_stem(probe, state)}
    full = model_kwargs(arch, **{**inferred, **given}, **({"pretrained": False} if "pretrained" in model_kwargs(arch)
                                                        else {}))
    names = class_names or [str(i) for i in range(full.get("num_classes", 0))]
    base = ModelSpec(arch, full, list(names), input_size, channels=full.get("in_channels", 3)).build()
    return load_state_dict(state, base, class_names=names, input_size=input_size).eval()


def _head_and_stem(model: nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """num_classes and in_channels as the checkpoint's last Linear and first Conv2d have them."""
    out = {}
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears and f"{linears[-1]}.weight" in state:
        out["num_classes"] = int(state[f"{linears[-1]}.weight"].shape[0])
    first = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and f"{first}.weight" in state and state[f"{first}.weight"].shape[1] in (1, 3):
        out["in_channels"] = int(state[f"{first}.weight"].shape[1])
    return out
