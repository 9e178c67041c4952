"""The course's files: StudentNet state_dicts (.bin) and 8/16-bit weight pickles (.pkl), in and out.

Whatever a file is called, its kind is read from its bytes (`checkpoint.read_checkpoint`): a torch
state_dict (legacy or zip), the course's pickles (read by `course_pickle`'s restricted
unpickler), a .npz of arrays. The StudentNet's widths, class count, classifier head, conv biases
and pointwise BatchNorms come from the tensors (`studentnet_from_tensors`); where it downsamples,
its activations and its preprocessing do not, so those are either given or assumed to be the
registered layout's, and the spec's info says which.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import NetcompressError
from ..files import atomic_write
from ..models import model_kwargs
from ..models.studentnet_layout import studentnet_from_tensors
from ..spec import ModelSpec, spec_of
from .checkpoint import read_checkpoint
from .course_pickle import CoursePickler, SafeUnpickler, course_decode, course_encode, read_course_pkl
from .state_dict import load_state_dict

__all__ = ["FOOD11_CLASSES", "import_course_checkpoint", "load_course_pkl", "course_model_from_state", "layout_text",
           "check_course_model", "export_course_state_dict", "save_course_pkl", "course_encode", "course_decode",
           "read_course_pkl", "SafeUnpickler", "REGISTERED_POOLS"]

FOOD11_CLASSES = ["Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat", "Noodles/Pasta",
                  "Rice", "Seafood", "Soup", "Vegetable/Fruit"]
REGISTERED_POOLS = {8: [0, 1, 2, 3], 9: [0, 1, 2, 5]}  # the course's StudentNet, the seed report's 9-block one
DEFAULT_POOLS = [0, 1, 2, 3]  # StudentNet's own default for other block counts


def import_course_checkpoint(path: str | Path, *, class_names: list[str] | None = None, input_size: int = 0,
                             pool_after: list[int] | None = None, strided: list[int] | None = None) -> nn.Module:
    """A course-style StudentNet checkpoint of any kind (torch file, 8/16-bit pickle, .npz; told by its bytes, not
    its name), rebuilt from its tensors without running pickle code.

    The file records neither the input size (0: unknown until given) nor where the net downsamples:
    give `pool_after` (blocks ending in a MaxPool) and `strided` (blocks whose first conv has stride
    2); otherwise the registered layout is assumed (MaxPool after blocks 0-3, or 0, 1, 2, 5 for 9
    blocks; no stride 2) and the spec's info says so. Check an assumption on labelled images
    (`netcompress import-course --data`) or load with your own class: `load(path, model=YourNet())`.
    """
    return course_model_from_state(read_checkpoint(path), Path(path), class_names=class_names, input_size=input_size,
                                   pool_after=pool_after, strided=strided)


load_course_pkl = import_course_checkpoint  # a course pickle is told by its bytes like every other kind


def course_model_from_state(state: dict, path: Path, *, class_names: list[str] | None = None, input_size: int = 0,
                            pool_after: list[int] | None = None, strided: list[int] | None = None) -> nn.Module:
    """Rebuild a StudentNet from a checkpoint's tensors; `path` names the source."""
    try:
        found = studentnet_from_tensors(state)
    except ValueError as exc:
        raise NetcompressError(f"{path}: its tensors do not fit a StudentNet ({exc}); load it with your own class, "
                               "nc.load_state_dict(path, YourNet()), or into a registered architecture with "
                               "netcompress import-state-dict") from None
    num_classes = found["num_classes"]
    if class_names is None:
        class_names = FOOD11_CLASSES if num_classes == 11 else [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise NetcompressError(f"{path} has {num_classes} outputs but {len(class_names)} class names were given")
    assumed = pool_after is None and strided is None
    blocks = len(found["widths"])
    if pool_after is None:
        pool_after = REGISTERED_POOLS.get(blocks, DEFAULT_POOLS) if strided is None else []
    arch = "studentnet9" if blocks == 9 else "studentnet"
    kwargs = model_kwargs(arch, **found, pool_after=list(pool_after), strided=list(strided or []))
    layout = layout_text(kwargs)
    info = {"imported_from": path.name,
            "layout": f"assumed, not in the file: {layout}" if assumed else f"given: {layout}"}
    spec = ModelSpec(arch, kwargs, list(class_names), input_size, info=info, channels=found["in_channels"])
    return load_state_dict(state, spec.build(), class_names=list(class_names), input_size=input_size,
                           source=path).eval()


def layout_text(kwargs: dict) -> str:
    """What a StudentNet's tensors do not show: where it downsamples, its activations, its preprocessing."""
    pools, strided = kwargs.get("pool_after") or [], kwargs.get("strided") or []
    return (f"MaxPool after blocks {', '.join(map(str, pools)) or 'none'}; stride 2 in blocks "
            f"{', '.join(map(str, strided)) or 'none'}; ReLU6 in the blocks"
            + (", ReLU in the classifier" if kwargs.get("head") else "") + "; inputs in [0, 1], not normalized")


def check_course_model(model: nn.Module, source) -> None:
    """The course's formats hold a plain StudentNet: nothing else, and no replaced layers."""
    spec = spec_of(model)
    if not (spec.arch or "").startswith("studentnet"):
        raise NetcompressError(f"{source} is a {spec.arch or spec.info.module}; the course's formats hold "
                               "StudentNet only")
    if spec.overrides:
        raise NetcompressError(f"{source} has replaced layers ({', '.join(spec.overrides)}), e.g. low-rank factors, "
                               "which the course's StudentNet cannot load; export the model before that step")


def export_course_state_dict(model: nn.Module, path: str | Path, *, legacy: bool = True) -> Path:
    """Write a plain state_dict like the course's (legacy serialization by default, as the course had)."""
    check_course_model(model, path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp, _use_new_zipfile_serialization=not legacy))
    return Path(path)


def save_course_pkl(model: nn.Module, path: str | Path, bits: int = 8, protocol: int = 3) -> Path:
    """Write the course's 8- or 16-bit pickle of a StudentNet's state_dict (atomically)."""
    check_course_model(model, path)
    obj = course_encode(model.state_dict(), bits)
    if not 2 <= protocol <= pickle.HIGHEST_PROTOCOL:
        raise NetcompressError(f"--protocol {protocol}: choose 2..{pickle.HIGHEST_PROTOCOL} (the course used 3)")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            CoursePickler(f, protocol).dump(obj)

    return atomic_write(Path(path), write)
