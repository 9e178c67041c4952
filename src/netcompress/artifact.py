"""Model files: safetensors tensors plus a JSON spec in the metadata; no pickle anywhere.

The spec names the registered architecture and its exact keyword arguments (per-layer widths of
a pruned net included), the class names and the input preprocessing, so `load_model` rebuilds
the model with no user code. The course's legacy checkpoints import and export here too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .errors import NetcompressError
from .files import atomic_write
from .models import create_model, model_kwargs
from .surgery import apply_overrides

FORMAT = "netcompress-model"
FORMAT_VERSION = 1
SPARSE_MASK = ".__nonzero_bits"
FOOD11_CLASSES = ["Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat", "Noodles/Pasta",
                  "Rice", "Seafood", "Soup", "Vegetable/Fruit"]


@dataclass
class ModelSpec:
    """Everything needed to rebuild and feed a model, stored as JSON in the model file."""

    arch: str
    kwargs: dict
    class_names: list[str]
    input_size: int
    preprocessing: dict = field(default_factory=lambda: {"resize": "shorter-side", "crop": "center", "range": "0-1"})
    info: dict = field(default_factory=dict)  # free-form provenance: metrics, how it was made
    overrides: dict = field(default_factory=dict)  # layer name -> new layer (pruned torchvision models)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build(self, **kwarg_overrides) -> nn.Module:
        return apply_overrides(create_model(self.arch, **{**self.kwargs, **kwarg_overrides}), self.overrides)


def new_model(arch: str, class_names: list[str], input_size: int, **kwargs) -> tuple[nn.Module, ModelSpec]:
    """Build a registered model for `class_names`; returns it with the spec that rebuilds it."""
    full = model_kwargs(arch, **kwargs, num_classes=len(class_names))
    spec = ModelSpec(arch, full, list(class_names), input_size)
    return spec.build(), spec


def save_model(path: str | Path, model: nn.Module, spec: ModelSpec, *, sparse: bool = False) -> Path:
    """Write a model file (atomically); returns its path.

    sparse=True stores each float tensor that has zeros as a bitmask (1 bit per element) plus its
    nonzero values whenever that is smaller: what unstructured pruning really saves on disk.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "netcompress": __version__, **asdict(spec)}
    if sparse:
        meta["sparse"] = {}
        for name, t in list(tensors.items()):
            nonzero = t != 0
            if t.is_floating_point() and (t.numel() + 7) // 8 + int(nonzero.sum()) * t.element_size() < t.nbytes:
                bits = np.packbits(nonzero.flatten().numpy())
                tensors[name + SPARSE_MASK] = torch.from_numpy(bits)
                tensors[name] = t[nonzero].contiguous()
                meta["sparse"][name] = list(t.shape)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"netcompress": json.dumps(meta)}))
    return path


def _densify(tensors: dict[str, torch.Tensor], sparse: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    for name, shape in sparse.items():
        values = tensors.pop(name)
        n = int(np.prod(shape))
        mask = torch.from_numpy(np.unpackbits(tensors.pop(name + SPARSE_MASK).numpy(), count=n).astype(bool))
        dense = torch.zeros(n, dtype=values.dtype)
        dense[mask] = values
        tensors[name] = dense.view(shape)
    return tensors


def read_spec(path: str | Path) -> ModelSpec:
    """Read a model file's spec without loading its tensors."""
    path = Path(path)
    if not path.exists():
        raise NetcompressError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("netcompress")
    except (SafetensorError, OSError) as exc:
        raise NetcompressError(f"{path} is not a netcompress model file (not readable safetensors: {exc})") from exc
    if raw is None:
        raise NetcompressError(f"{path} is safetensors but has no netcompress spec; save it with netcompress")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise NetcompressError(f"{path}: format {meta.get('format')} v{meta.get('format_version')} is not "
                               f"readable by this netcompress ({__version__}); upgrade netcompress")
    return ModelSpec(meta["arch"], meta["kwargs"], meta["class_names"], meta["input_size"],
                     meta.get("preprocessing", {}), meta.get("info", {}), meta.get("overrides", {}))


def load_model(path: str | Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a model from its file: architecture from the spec, weights from the tensors."""
    spec = read_spec(path)
    # the file holds the weights: don't fetch pretrained ones again
    model = spec.build(**({"pretrained": False} if spec.kwargs.get("pretrained") else {}))
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        sparse = json.loads(f.metadata()["netcompress"]).get("sparse", {})
    state = _densify(state, sparse)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise NetcompressError(f"{path}: tensors do not match the spec's architecture: {exc}") from exc
    return model.eval(), spec


def import_course_checkpoint(path: str | Path, *, class_names: list[str] | None = None,
                             input_size: int = 256, pool_after: list[int] | None = None) -> tuple[nn.Module, ModelSpec]:
    """Load the course's StudentNet state_dict (legacy or zip torch format) without running pickle code.

    Per-layer widths and the class count come from the tensor shapes; 8-block nets get the course's
    MaxPools after blocks 0-3, 9-block nets the seed report's after 0, 1, 2 and 5.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise NetcompressError(f"checkpoint {path} does not exist") from exc
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise NetcompressError(f"{path}: not a readable torch state_dict ({exc})") from exc
    return course_model_from_state(state, path, class_names=class_names, input_size=input_size, pool_after=pool_after)


def course_model_from_state(state: dict, path: Path, *, class_names: list[str] | None = None, input_size: int = 256,
                            pool_after: list[int] | None = None) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a course StudentNet from its state_dict (from a .bin or a course .pkl); `path` names the source."""
    if not isinstance(state, dict) or "fc.0.weight" not in state or "cnn.0.0.weight" not in state:
        raise NetcompressError(f"{path}: not a course StudentNet state_dict (needs keys cnn.0.0.weight and fc.0.weight)")
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("cnn."))
    widths = [state["cnn.0.0.weight"].shape[0]] + [state[f"cnn.{i}.3.weight"].shape[0] for i in range(1, n_blocks)]
    num_classes = state["fc.0.weight"].shape[0]
    if class_names is None:
        class_names = FOOD11_CLASSES if num_classes == 11 else [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise NetcompressError(f"{path} has {num_classes} outputs but {len(class_names)} class names were given")
    arch = "studentnet9" if n_blocks == 9 else "studentnet"
    kwargs = model_kwargs(arch, num_classes=num_classes, widths=widths)
    if pool_after is not None:
        kwargs["pool_after"] = pool_after
    spec = ModelSpec(arch, kwargs, list(class_names), input_size, info={"imported_from": path.name})
    model = spec.build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise NetcompressError(f"{path}: tensors do not fit a StudentNet with widths {widths}: {exc}") from exc
    return model.eval(), spec


def export_course_state_dict(model: nn.Module, path: str | Path, *, legacy: bool = True) -> Path:
    """Write a plain state_dict like the course's (legacy serialization by default, as the course had)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp, _use_new_zipfile_serialization=not legacy))
    return Path(path)


def load_any(path: str | Path) -> tuple[nn.Module, ModelSpec]:
    """Any model file -> (model, spec), picked by suffix: .safetensors, .ncq (quantized), .onnx (ONNX
    Runtime), .bin/.pt/.pth (course checkpoint), .pkl (course 8/16-bit pickle, loaded without running code)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".bin", ".pt", ".pth"):
        return import_course_checkpoint(path)
    if suffix == ".ncq":
        from .quantize import load_quantized

        return load_quantized(path)
    if suffix == ".pkl":
        from .course_pkl import load_course_pkl

        return load_course_pkl(path)
    if suffix == ".onnx":
        from .onnx_export import load_onnx

        return load_onnx(path)
    return load_model(path)
