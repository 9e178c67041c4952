"""The course's files: StudentNet state_dicts (.bin) and 8/16-bit weight pickles (.pkl), in and out.

A course checkpoint is a plain state_dict in torch's legacy serialization; it loads with
`weights_only=True`, and the StudentNet's per-layer widths and class count come from the
tensor shapes.

The pickles are HW7's `encode16` / `encode8`: the course turned every state_dict entry into `np.float64(tensor.numpy())`, then stored
16-bit: name -> float16 array; 8-bit: name -> (min, max, uint8 array) with float64 min and max.
A 0-dim entry (`num_batches_tracked`) is a numpy scalar after that conversion and was stored as
is. The dict was written with `pickle.dump` (protocol 3 in the course's Python).

A pickle can run any code while loading, so import goes through `SafeUnpickler`, which allows only
numpy's reconstructors for arrays, dtypes and scalars (what these files hold) and refuses
everything else before it runs.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..compress.codecs import minmax8_decode, minmax8_encode
from ..errors import NetcompressError
from ..files import atomic_write
from ..models import model_kwargs
from ..models.studentnet import StudentNet
from ..spec import ModelSpec, spec_of
from .state_dict import load_state_dict, read_torch_state

FOOD11_CLASSES = ["Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat", "Noodles/Pasta",
                  "Rice", "Seafood", "Soup", "Vegetable/Fruit"]


def import_course_checkpoint(path: str | Path, *, class_names: list[str] | None = None, input_size: int = 0,
                             pool_after: list[int] | None = None) -> nn.Module:
    """Load the course's StudentNet state_dict (legacy or zip torch format) without running pickle code.

    Per-layer widths and the class count come from the tensor shapes. The file records neither the
    input size (0: unknown until given) nor the MaxPool positions: give `pool_after`, or 8-block
    nets get the course's (after blocks 0-3) and 9-block nets the seed report's (0, 1, 2, 5), noted
    in the spec's info as a guess.
    """
    return course_model_from_state(read_torch_state(path), Path(path), class_names=class_names, input_size=input_size,
                                   pool_after=pool_after)


GUESSED_POOLS = {8: [0, 1, 2, 3], 9: [0, 1, 2, 5]}  # the course's StudentNet, the seed report's 9-block one


def course_model_from_state(state: dict, path: Path, *, class_names: list[str] | None = None, input_size: int = 0,
                            pool_after: list[int] | None = None) -> nn.Module:
    """Rebuild a course StudentNet from its state_dict (from a .bin or a course .pkl); `path` names the source."""
    if not isinstance(state, dict) or "fc.0.weight" not in state or "cnn.0.0.weight" not in state:
        raise NetcompressError(f"{path}: not a course StudentNet state_dict (needs keys cnn.0.0.weight and fc.0.weight); "
                               "for other architectures use `netcompress import-state-dict CKPT --arch NAME` or "
                               "nc.load_state_dict(path, model)")
    try:
        found = StudentNet.kwargs_from_state(state)
    except (KeyError, ValueError, IndexError, AttributeError) as exc:
        raise NetcompressError(f"{path}: not a course StudentNet state_dict (its keys do not follow cnn.<block>.<layer>: "
                               f"{exc}); for other architectures use `netcompress import-state-dict`") from None
    widths, num_classes = found["widths"], found["num_classes"]
    if class_names is None:
        class_names = FOOD11_CLASSES if num_classes == 11 else [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise NetcompressError(f"{path} has {num_classes} outputs but {len(class_names)} class names were given")
    info = {"imported_from": path.name}
    if pool_after is None:
        if len(widths) not in GUESSED_POOLS:
            raise NetcompressError(f"{path}: a {len(widths)}-block StudentNet; its MaxPool positions are not in the file: "
                                   "give them (--pool-after 0,1,2,3 or pool_after=[...])")
        pool_after = GUESSED_POOLS[len(widths)]
        info["pool_after"] = f"guessed from the block count ({len(widths)}): {pool_after}"
    arch = "studentnet9" if len(widths) == 9 else "studentnet"
    kwargs = model_kwargs(arch, **found, pool_after=pool_after)
    spec = ModelSpec(arch, kwargs, list(class_names), input_size, info=info, channels=found["in_channels"])
    return load_state_dict(state, spec.build(), class_names=list(class_names), input_size=input_size).eval()


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


def course_encode(state: dict[str, torch.Tensor], bits: int) -> dict:
    """The course's encode16 / encode8 dict (a constant tensor gets q = 0 instead of the course's NaN)."""
    if bits not in (8, 16):
        raise NetcompressError(f"--bits {bits}: the course's pickle format is 8- or 16-bit")
    out = {}
    for name, t in state.items():
        value = np.float64(t.detach().cpu().numpy())
        if type(value) is not np.ndarray:  # 0-dim: the course kept the float64 scalar
            out[name] = value
        elif bits == 16:
            out[name] = np.float16(value)
        else:
            lo, hi, q = minmax8_encode(value)
            out[name] = (np.float64(lo), np.float64(hi), q)
    return out


def course_decode(obj: dict, source: str) -> dict[str, torch.Tensor]:
    """A loaded course dict -> tensors (decode8's float64 arithmetic; 16-bit arrays as they are)."""
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise NetcompressError(f"{source}: not a course weight pickle (expected a dict of tensor names)")
    state = {}
    for name, value in obj.items():
        try:
            if isinstance(value, tuple) and len(value) == 3 and isinstance(value[2], np.ndarray):
                lo, hi, q = value
                value = minmax8_decode(float(lo), float(hi), q)
            if isinstance(value, np.ndarray) and value.dtype.hasobject:
                raise NetcompressError(f"{source}: entry {name} is an object array; course files hold numbers only")
            if not isinstance(value, (np.ndarray, np.generic, int, float)):
                raise NetcompressError(f"{source}: entry {name} is a {type(value).__name__}; expected an array, "
                                       "a number or a (min, max, uint8 array) tuple")
            state[name] = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, OverflowError) as exc:
            raise NetcompressError(f"{source}: entry {name} holds no usable numbers ({exc})") from None
    return state


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


def _numpy_reconstructors() -> dict[tuple[str, str], object]:
    """numpy's array, scalar and buffer reconstructors under the names numpy 1.x gives them."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    return {("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy.core.multiarray", "scalar"): multiarray.scalar,
            ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer}  # protocol 5


class CoursePickler(pickle._Pickler):
    """pickle's own Python pickler, writing numpy's reconstructors as numpy.core.* (numpy 2 writes
    numpy._core.*, a module numpy < 1.26 lacks): the course's environments can read the file."""

    LEGACY = {id(fn): name for name, fn in _numpy_reconstructors().items()}

    def save_global(self, obj, name=None):
        legacy = self.LEGACY.get(id(obj))
        if legacy is None:
            return super().save_global(obj, name)
        module, qualname = legacy
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, types.FunctionType: save_global}  # Python functions come here directly


def _allowed_globals() -> dict[tuple[str, str], object]:
    import codecs

    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for (module, name), fn in _numpy_reconstructors().items():  # files from numpy 1.x and 2.x
        allowed[(module, name)] = allowed[(module.replace("numpy.core", "numpy._core"), name)] = fn
    allowed[("_codecs", "encode")] = codecs.encode  # protocol 2 writes bytes through it
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array, dtype and scalar reconstructors."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise NetcompressError(
                f"{self.source}: refused to load: the pickle asks for {module}.{name}, but a course weight file "
                "holds only numpy arrays, dtypes and scalars (this file may be malicious; do not unpickle it "
                "elsewhere either)")
        return found


def read_course_pkl(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a course .pkl safely and decode it to a state_dict of tensors."""
    path = Path(path)
    if not path.exists():
        raise NetcompressError(f"course pickle {path} does not exist")
    try:
        with open(path, "rb") as f:
            obj = SafeUnpickler(f, str(path)).load()
    except NetcompressError:
        raise
    except Exception as exc:  # truncated or foreign files raise many types
        raise NetcompressError(f"{path}: not a readable course weight pickle ({type(exc).__name__}: {exc})") from exc
    return course_decode(obj, str(path))


def load_course_pkl(path: str | Path, *, class_names: list[str] | None = None, input_size: int = 0,
                    pool_after: list[int] | None = None) -> nn.Module:
    """A course .pkl -> StudentNet rebuilt from the tensor shapes (as `import_course_checkpoint`); the file records
    no input size (0: unknown until given)."""
    return course_model_from_state(read_course_pkl(path), Path(path), class_names=class_names, input_size=input_size,
                                   pool_after=pool_after)
