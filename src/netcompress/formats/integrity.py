"""What a model file must prove before it is believed: a checksum, a sane spec, a bounded size.

A model file names an architecture and its arguments; a damaged or crafted one could ask for a
layer of 10^12 weights, a 30,000-wide network or a million-pixel input. Every spec is checked field
by field against limits, and the memory its architecture needs is counted on PyTorch's "meta"
device (shapes, no storage) before anything real is built. Files netcompress writes carry a
SHA-256 of their spec and tensors, checked on load (verify=False skips it).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os

import torch

from ..errors import NetcompressError
from ..models import list_models, model_kwargs
from ..models.surgery import LAYERS

MAX_MODEL_BYTES = int(os.environ.get("NETCOMPRESS_MAX_MODEL_BYTES", 4 * 1024**3))  # 4 GiB of weights and buffers
MAX_CLASSES = 100_000
MAX_INPUT_SIZE = 4096
MAX_JSON_DEPTH = 8
MAX_LIST = MAX_CLASSES  # the longest list a spec holds is its class names: what training takes, loading takes
LAYER_LIMITS = {"in_channels": 65_536, "out_channels": 65_536, "num_features": 65_536, "in_features": 1 << 24,
                "out_features": 1 << 24, "groups": 65_536}


def digest(meta: dict, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a file's spec (without its own checksum) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\n{name}\t{t.dtype}\t{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_digest(meta: dict, tensors: dict[str, torch.Tensor], source) -> None:
    expected = meta.get("checksum")
    if expected is None:
        return  # written before checksums (netcompress 0.1): nothing to compare
    if digest(meta, tensors) != expected:
        raise NetcompressError(f"{source}: checksum mismatch: the file is damaged or was edited; re-create it, or "
                               "load it anyway with --no-verify (verify=False)")


def _depth(value, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()] or [level + 1])
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            return MAX_JSON_DEPTH + 1
        return max([_depth(v, level + 1) for v in value] or [level + 1])
    return level


def validate_spec_fields(meta: dict, source) -> None:
    """Every field a spec may have, of the right type and within limits (before anything is built)."""
    def bad(field: str, why: str):
        return NetcompressError(f"{source}: spec field {field} {why}; the file is damaged or was edited, re-create it")

    if not isinstance(meta, dict):
        raise bad("(the whole spec)", "is not a JSON object")
    if _depth(meta) > MAX_JSON_DEPTH:
        raise bad("(the whole spec)", f"is nested deeper than {MAX_JSON_DEPTH} levels or holds a list longer than "
                                      f"{MAX_LIST:,}")
    arch = meta.get("arch")
    if arch is not None and (not isinstance(arch, str) or arch not in list_models()):
        raise bad("arch", f"= {arch!r} names no registered architecture")
    kwargs = meta.get("kwargs")
    if not isinstance(kwargs, dict):
        raise bad("kwargs", "is not an object")
    if arch is not None:
        unknown = sorted(set(kwargs) - set(model_kwargs(arch)))
        if unknown:
            raise bad("kwargs", f"has arguments {arch} does not take: {', '.join(unknown)}")
    defaults = model_kwargs(arch) if arch is not None else {}
    for key, value in kwargs.items():
        kind = _number_kind(defaults.get(key))
        if kind is not None and value is not None and not _is_kind(value, kind):
            raise bad(f"kwargs.{key}", f"= {value!r} must be {'true or false' if kind is bool else 'a number'}")
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v) for v in numbers):
            raise bad(f"kwargs.{key}", "is not a finite number")
        if key in ("num_classes", "base", "widths") and value is not None:
            top = MAX_CLASSES if key == "num_classes" else 65_536
            if any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top for v in numbers):
                raise bad(f"kwargs.{key}", f"= {value!r} must hold integers in 1..{top:,}")
    names = meta.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) > MAX_CLASSES:
        raise bad("class_names", f"must be a list of at most {MAX_CLASSES:,} strings")
    size = meta.get("input_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_INPUT_SIZE:
        raise bad("input_size", f"= {size!r} must be an integer in 0..{MAX_INPUT_SIZE}")
    if meta.get("channels", 3) not in (1, 3):
        raise bad("channels", f"= {meta.get('channels')!r} must be 1 or 3")
    for field in ("preprocessing", "info", "overrides", "sparse"):
        if not isinstance(meta.get(field, {}), dict):
            raise bad(field, "is not an object")
    for name, shape in meta.get("sparse", {}).items():
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise bad(f"sparse.{name}", "is not a tensor shape")
    for name, desc in meta.get("overrides", {}).items():
        _validate_layer(desc, f"overrides.{name}", bad)


def _number_kind(default) -> type | None:
    """bool, float (any number) or None (no rule) for an argument whose registered default is `default`."""
    if isinstance(default, bool):
        return bool
    return float if isinstance(default, (int, float)) else None


def _is_kind(value, kind: type) -> bool:
    if kind is bool:  # 0 and 1 too: a recipe's `bias = 1` builds, so its file must load
        return isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate_layer(desc, where: str, bad) -> None:
    if not isinstance(desc, dict):
        raise bad(where, "is not a layer description")
    if desc.get("type") == "Sequential":
        layers = desc.get("layers")
        if not isinstance(layers, list) or not layers:
            raise bad(where, "is a Sequential without layers")
        for i, layer in enumerate(layers):
            _validate_layer(layer, f"{where}.{i}", bad)
        return
    layer = LAYERS.get(desc.get("type"))
    if layer is None:
        raise bad(f"{where}.type", f"= {desc.get('type')!r} is not one of {', '.join(LAYERS)} or Sequential")
    params = inspect.signature(layer).parameters
    unknown = sorted(set(desc) - set(params) - {"type", "resized", "device", "dtype"})
    if unknown:
        raise bad(where, f"gives a {desc['type']} arguments it does not take: {', '.join(unknown)}")
    missing = [k for k, p in params.items() if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
               and k not in desc]
    if missing:
        raise bad(where, f"describes a {desc['type']} without {', '.join(missing)}")
    for key, limit in LAYER_LIMITS.items():
        value = desc.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
            raise bad(f"{where}.{key}", f"= {value!r} must be an integer in 1..{limit:,}")


def implied_bytes(build) -> int:
    """Bytes of the parameters and buffers `build()` would allocate, counted on the meta device."""
    with torch.device("meta"):
        model = build()
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def check_size(build, source) -> None:
    """Refuse an architecture whose weights would exceed MAX_MODEL_BYTES, before allocating them."""
    try:
        n = implied_bytes(build)
    except NetcompressError:
        raise
    except Exception as exc:  # constructors raise many types for impossible arguments
        raise NetcompressError(f"{source}: its spec describes no buildable network ({type(exc).__name__}: {exc})") \
            from None
    if n > MAX_MODEL_BYTES:
        raise NetcompressError(f"{source}: its spec asks for {n:,} bytes of weights, above the {MAX_MODEL_BYTES:,}-byte "
                               "limit (NETCOMPRESS_MAX_MODEL_BYTES); the file is damaged or was edited")
