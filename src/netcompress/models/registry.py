"""Model registry: every architecture is built from a name and JSON-serialisable keyword arguments.

That pair is what a model file stores, so any registered model reloads with no user code.
"""

from __future__ import annotations

import fnmatch
from typing import Callable

import torch.nn as nn

from ..errors import NetcompressError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DEFAULTS: dict[str, dict] = {}
_UNSEEN: dict[str, dict] = {}


def register_model(name: str, *, unseen: dict | None = None, **defaults):
    """Decorator: register a constructor under `name`; `defaults` are stored with every model. `unseen`: the
    constructor arguments that leave no trace in a checkpoint's tensors (pooling, strides, input scaling), with
    the value an import of a checkpoint assumes unless they are given."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        _DEFAULTS[name] = dict(defaults)
        _UNSEEN[name] = dict(unseen or {})
        return fn

    return wrap


def unseen_kwargs(name: str) -> dict:
    """What an import of a checkpoint into `name` must assume: argument -> the registered layout's value."""
    _load_families()
    return dict(_UNSEEN.get(name, {}))


def list_models(pattern: str = "*") -> list[str]:
    _load_families()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_kwargs(name: str, **overrides) -> dict:
    """The complete keyword arguments a model is built with: registered defaults, then overrides."""
    _load_families()
    if name not in _REGISTRY:
        raise NetcompressError(
            f"unknown model {name!r}: choose one of {', '.join(list_models())} "
            "(or any torchvision classifier name, e.g. resnet18)"
        )
    return {**_DEFAULTS[name], **{k: v for k, v in overrides.items() if v is not None}}


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown names get a clear error listing the known ones."""
    full = model_kwargs(name, **kwargs)
    try:
        return _REGISTRY[name](**full)
    except TypeError as exc:
        raise NetcompressError(f"model {name!r}: bad arguments {full}: {exc}") from exc


def _load_families() -> None:
    # Importing the family modules runs their @register_model decorators.
    from . import cnn, studentnet, teachers  # noqa: F401
