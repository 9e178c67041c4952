"""A checkpoint's tensors, whatever the file is called: the kind is read from the file's first bytes.

Students saved the same weights in many ways: torch's legacy or zip serialization (`.bin`, `.pt`,
`.pth`), the course's 8/16-bit pickles under any name (an 8-bit pickle called `.bin`), numpy
`.npz` archives (float16, say) and plain safetensors. Every kind is read without running code:
torch files with `weights_only=True`, pickles through the course's restricted unpickler, `.npz`
with `allow_pickle=False`. Wrappers left by training code (`{"state_dict": ...}`, `module.` key
prefixes) are removed.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import NetcompressError
from .course_pickle import read_course_pkl

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
WRAPPER_PREFIXES = ("module.", "model.", "net.")
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # pickled 0x1950a86a20f9469cfc6c


def checkpoint_kind(path: str | Path) -> str | None:
    """"torch" (legacy or zip), "npz", "pickle", "safetensors", or None for anything else; from the bytes alone."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(TORCH_LEGACY_MAGIC):
        return "torch"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return None
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "torch" if any(n.endswith("data.pkl") for n in names) else None
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30):
        return "safetensors"
    if head[:1] == b"\x80" or head[:1] in (b"}", b"("):  # pickle protocols 2-5, and 0-1 dicts
        return "pickle"
    return None


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of any checkpoint kind `checkpoint_kind` knows, unwrapped; no code runs."""
    path = Path(path)
    if not path.is_file():
        raise NetcompressError(f"checkpoint {path} does not exist")
    kind = checkpoint_kind(path)
    if kind is None:
        raise NetcompressError(f"{path}: not a checkpoint netcompress reads (a torch state_dict, the course's 8/16-bit "
                               "pickle, a .npz of arrays or safetensors), whatever its name says")
    state = READERS[kind](path)
    for prefix in WRAPPER_PREFIXES:  # DataParallel and similar wrappers
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    """A torch file's tensors, unwrapped from {"state_dict": ...}-style dicts."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise NetcompressError(
                f"{path}: holds Python objects besides tensors (a whole pickled model?), which netcompress never "
                "unpickles; in the code that made it, save model.state_dict() instead") from None
        raise NetcompressError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    while isinstance(obj, dict) and not is_state(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not is_state(obj):
        raise NetcompressError(f"{path}: not a state_dict (a dict of tensors); found {type(obj).__name__}"
                               + (f" with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, dict) else ""))
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def is_state(obj: dict) -> bool:
    """A dict that is mostly tensors under string keys."""
    return bool(obj) and all(isinstance(k, str) for k in obj) and \
        sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    """A numpy archive of named arrays, in the order they were saved (object arrays are refused)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: torch.from_numpy(np.array(archive[name])) for name in archive.files}
    except ValueError as exc:
        raise NetcompressError(f"{path}: a .npz whose arrays are not all numbers ({exc}); save numeric arrays "
                               "only") from None
    except Exception as exc:  # zip and npy parsing raise many types
        raise NetcompressError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise NetcompressError(f"{path}: not a readable safetensors file ({exc})") from None


READERS = {"torch": read_torch_state, "npz": read_npz, "pickle": read_course_pkl, "safetensors": read_safetensors}
