"""The course's 8/16-bit weight pickles, read without running code and written as the course's numpy could read.

The pickles are HW7's `encode16` / `encode8`: the course turned every state_dict entry into
`np.float64(tensor.numpy())`, then stored 16-bit: name -> float16 array; 8-bit: name -> (min, max,
uint8 array) with float64 min and max. A 0-dim entry (`num_batches_tracked`) is a numpy scalar
after that conversion and was stored as is. The dict was written with `pickle.dump` (protocol 3 in
the course's Python).

A pickle can run any code while loading, so reading goes through `SafeUnpickler`, which allows
only numpy's reconstructors for arrays, dtypes and scalars (what these files hold) and refuses
everything else before it runs.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path

import numpy as np
import torch

from ..compress.codecs import minmax8_decode, minmax8_encode
from ..errors import NetcompressError


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
