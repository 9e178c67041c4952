"""Model files: safetensors tensors plus the model's JSON spec in the metadata; no pickle anywhere.

The spec names the architecture and its exact keyword arguments (per-layer widths of a pruned
StudentNet included), the layers that pruning or factorization replaced, the class names and the
input preprocessing, so `load_model` rebuilds a registered model with no user code, and a user's
own module from a fresh instance of its class.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from ..errors import NetcompressError
from ..files import atomic_write
from .integrity import check_digest, check_size, digest, validate_spec_fields
from ..spec import ModelInfo, ModelSpec, spec_of
from ..version import __version__

FORMAT = "netcompress-model"
FORMAT_VERSION = 1
SPARSE_MASK = ".__nonzero_bits"


def spec_from_dict(meta: dict, source: str) -> ModelSpec:
    """A ModelSpec from the JSON a file stored (older files lack some optional fields), checked field by field."""
    validate_spec_fields(meta, source)
    try:
        return ModelSpec(meta["arch"], meta["kwargs"], meta["class_names"], meta["input_size"],
                         meta.get("preprocessing", {}), ModelInfo.from_dict(meta.get("info", {})),
                         meta.get("overrides", {}), meta.get("channels", 3))
    except (KeyError, TypeError) as exc:
        raise NetcompressError(f"{source}: its model spec lacks {exc}; re-create the file with netcompress") from exc
    except NetcompressError as exc:
        raise NetcompressError(f"{source}: its model spec is damaged ({exc}); re-create the file with netcompress") \
            from None


def encode(model: nn.Module, *, sparse: bool = False) -> bytes:
    """The model file as bytes (see `save_model`)."""
    spec = spec_of(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "netcompress": __version__, **spec.to_dict()}
    if sparse:
        meta["sparse"] = {}
        for name, t in list(tensors.items()):
            nonzero = t != 0
            if t.is_floating_point() and (t.numel() + 7) // 8 + int(nonzero.sum()) * t.element_size() < t.nbytes:
                tensors[name + SPARSE_MASK] = torch.from_numpy(np.packbits(nonzero.flatten().numpy()))
                tensors[name] = t[nonzero].contiguous()
                meta["sparse"][name] = list(t.shape)
    meta["checksum"] = digest(meta, tensors)
    return safetensors_bytes(tensors, metadata={"netcompress": json.dumps(meta)})


def save_model(model: nn.Module, path: str | Path, *, sparse: bool = False) -> Path:
    """Write a model file (atomically); returns its path.

    sparse=True stores each float tensor that has zeros as a bitmask (1 bit per element) plus its
    nonzero values whenever that is smaller: what unstructured pruning really saves on disk.
    """
    blob = encode(model, sparse=sparse)
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(blob))


def _densify(tensors: dict[str, torch.Tensor], sparse: dict, like: dict[str, torch.Tensor], source) -> dict:
    """Sparse tensors (bitmask + nonzero values) back to dense ones of the model's shapes."""
    for name, shape in sparse.items():
        if name not in like or list(like[name].shape) != shape or name + SPARSE_MASK not in tensors:
            raise NetcompressError(f"{source}: sparse tensor {name} of shape {shape} does not fit the architecture; "
                                   "the file is damaged or was edited")
        values, bits = tensors.pop(name), tensors.pop(name + SPARSE_MASK)
        n = like[name].numel()
        mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool))
        if bits.numel() != (n + 7) // 8 or int(mask.sum()) != values.numel():
            raise NetcompressError(f"{source}: sparse tensor {name} holds {values.numel():,} values for "
                                   f"{int(mask.sum()):,} nonzeros; the file is damaged or was edited")
        dense = torch.zeros(n, dtype=values.dtype)
        dense[mask] = values
        tensors[name] = dense.view(shape)
    return tensors


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        raise NetcompressError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("netcompress")
    except (SafetensorError, OSError) as exc:
        raise NetcompressError(f"{path} is not a netcompress model file (not readable safetensors: {exc})") from exc
    if raw is None:
        raise NetcompressError(f"{path} is safetensors but has no netcompress spec: load its tensors into your module "
                               "with load_state_dict, then save it with netcompress")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise NetcompressError(f"{path}: its spec is not readable JSON ({type(exc).__name__}); the file is damaged, "
                               "re-create it") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(version, int) or \
            version > FORMAT_VERSION:
        raise NetcompressError(f"{path}: not a netcompress model file of a format this netcompress ({__version__}) "
                               "reads; re-create it, or upgrade netcompress")
    return meta


def read_spec(path: str | Path) -> ModelSpec:
    """A model file's spec, without loading its tensors."""
    return spec_from_dict(_read_meta(Path(path)), str(path))


def load_model(path: str | Path, base: nn.Module | None = None, *, verify: bool = True) -> nn.Module:
    """Rebuild a model from its file: architecture from the spec (on `base` for a user's own module), weights from
    the tensors. verify: check the file's checksum and that its weights are finite."""
    path = Path(path)
    meta = _read_meta(path)
    spec = spec_from_dict(meta, str(path))
    if base is None:
        check_size(lambda: spec.build(), path)
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise NetcompressError(f"{path}: its tensors are not readable ({exc}); the file is damaged, re-create it") \
            from None
    if verify:
        check_digest(meta, state, path)
    model = spec.build(base)
    state = _densify(state, meta.get("sparse", {}), model.state_dict(), path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise NetcompressError(f"{path}: tensors do not match the architecture"
                               f"{' of the base module given' if base is not None else ''}: "
                               f"{str(exc).splitlines()[-1].strip()}") from None
    if verify:
        check_finite(model, path)
    return model.eval()


def check_finite(model: nn.Module, source) -> None:
    """A model whose weights hold NaN or infinity computes nothing useful: refuse it by name."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NetcompressError(f"{source}: tensor {bad[0]} holds NaN or infinite values"
                               + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                               + "; the training diverged or the file was edited")
