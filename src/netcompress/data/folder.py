"""Dataset folders in the Food-11 layout or torchvision's ImageFolder layout, decoded once into a uint8 cache.

Food-11: ROOT/{training,validation,testing}/<label>_<k>.jpg, unlabeled test files NNNN.jpg.
ImageFolder: ROOT/<split>/<class>/*.jpg. Class names come from ROOT/classes.txt when present.

Decoding a JPEG costs more than a student's training step, so every image is decoded, resized
(shorter side) and center-cropped once; the result is cached on disk keyed by the folder's
contents and the image size, and every later epoch reads tensors.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import NetcompressError
from .split import UNLABELED, Split

SPLITS = ("training", "validation", "testing")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("NETCOMPRESS_CACHE", Path.home() / ".cache" / "netcompress"))


def read_class_names(root: Path) -> list[str] | None:
    """classes.txt: one class a line, either 'name' or '<index><tab or space><name>'."""
    path = root / "classes.txt"
    if not path.exists():
        return None
    names: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1].strip()
        else:
            names[len(names)] = line.strip()
    if sorted(names) != list(range(len(names))):
        raise NetcompressError(f"{path}: class indices must run 0..N-1 without gaps; fix the file or delete it")
    return [names[i] for i in range(len(names))]


def label_from_name(path: Path) -> int | None:
    """Food-11 names: '<label>_<k>.jpg' -> label; 'NNNN.jpg' (unlabeled test file) -> None."""
    prefix, sep, _ = path.stem.partition("_")
    if sep and prefix.isdigit():
        return int(prefix)
    if not sep and path.stem.isdigit():
        return None
    raise NetcompressError(
        f"{path}: cannot read a label from the file name; Food-11 files are named <label>_<k>.jpg "
        "(unlabeled test files NNNN.jpg); rename it, or use the ImageFolder layout <split>/<class>/*.jpg"
    )


def scan_split(root: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """List a split's image files (sorted by name: the submission's Id order) with labels and classes."""
    folder = root / split
    if not folder.is_dir():
        raise NetcompressError(
            f"missing split folder {folder}: a dataset needs {', '.join(SPLITS)} folders "
            "(Food-11 layout <label>_<k>.jpg, or ImageFolder layout <split>/<class>/*.jpg)"
        )
    class_names = read_class_names(root)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if subdirs:  # ImageFolder layout
        class_names = class_names or [d.name for d in subdirs]
        index = {name: i for i, name in enumerate(class_names)}
        files, labels = [], []
        for d in subdirs:
            if d.name not in index:
                raise NetcompressError(f"{d}: class folder not listed in {root / 'classes.txt'}; add it there")
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(f)
                    labels.append(index[d.name])
    else:  # Food-11 layout
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        parsed = [label_from_name(f) for f in files]
        if any(p is None for p in parsed) and any(p is not None for p in parsed):
            raise NetcompressError(f"{folder}: mixes labeled (<label>_<k>.jpg) and unlabeled (NNNN.jpg) files; keep one kind")
        if parsed and parsed[0] is None and split != "testing":
            raise NetcompressError(f"{folder}: {split} files need labels (<label>_<k>.jpg); found {files[0].name}")
        labels = [UNLABELED if p is None else p for p in parsed]
        if class_names is None:
            class_names = [str(i) for i in range(max(labels, default=-1) + 1)]
        for f, y in zip(files, labels):
            if y >= len(class_names):
                raise NetcompressError(
                    f"{f}: label {y} is out of range: {root / 'classes.txt'} lists {len(class_names)} classes "
                    f"(0..{len(class_names) - 1}); fix the file name or classes.txt"
                )
    if not files:
        raise NetcompressError(f"{folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or fix --data")
    return files, labels, class_names


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode one image to uint8 [size, size, 3]: shorter side resized to `size`, then center-cropped."""
    try:
        with Image.open(path) as img:
            if img.mode != "RGB":
                raise NetcompressError(
                    f"{path}: image mode is {img.mode}, the dataset's images are RGB; convert it to RGB "
                    "or pass --skip-bad to leave it out"
                )
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when it is still >= size
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
            left, top = (nw - size) // 2, (nh - size) // 2
            return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except NetcompressError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise NetcompressError(
            f"{path}: unreadable or corrupt image ({exc}); replace or delete it, or pass --skip-bad to leave it out"
        ) from exc


def _cache_key(files: list[Path], size: int, skip_bad: bool) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION} size={size} skip_bad={skip_bad}\n".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def load_split(
    root: str | Path,
    split: str,
    image_size: int,
    *,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> Split:
    """Decode (or read from cache) one split of a dataset folder."""
    root = check_folder(root, image_size)
    files, labels, class_names = scan_split(root, split)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = cache / f"{split}-{image_size}px-{_cache_key(files, image_size, skip_bad)}.npz"
    if cache_file.exists():
        with np.load(cache_file) as z:
            kept = z["kept"].tolist()
            return Split(split, torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]),
                         [files[i].name for i in kept], class_names)

    def work(path: Path):
        try:
            return decode_image(path, image_size)
        except NetcompressError as exc:
            if not skip_bad:
                raise
            return exc

    images, kept, bad = [], [], []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = pool.map(work, files)
        for i, result in enumerate(tqdm(results, total=len(files), desc=f"decode {split}", unit="img",
                                        disable=not progress, leave=False)):
            if isinstance(result, NetcompressError):
                bad.append(str(result))
            else:
                images.append(result)
                kept.append(i)
    if bad:
        warnings.warn(f"skipped {len(bad)} bad image(s) in {root / split}:\n  " + "\n  ".join(bad[:10]), stacklevel=2)
    if not images:
        raise NetcompressError(f"{root / split}: no readable images left after skipping bad ones")
    array = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    label_array = np.asarray([labels[i] for i in kept], dtype=np.int64)
    _atomic_savez(cache_file, images=array, labels=label_array, kept=np.asarray(kept, dtype=np.int64))
    return Split(split, torch.from_numpy(array), torch.from_numpy(label_array), [files[i].name for i in kept], class_names)


def check_folder(root: str | Path, image_size: int) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise NetcompressError(f"dataset folder {root} does not exist: give a folder that holds {', '.join(SPLITS)}")
    if image_size < 8:
        raise NetcompressError(f"--image-size {image_size} is too small; use 8 or more (the course used 256)")
    return root


def _atomic_savez(path: Path, **arrays) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs speed
        warnings.warn(f"could not write the decode cache {path}: {exc}", stacklevel=3)



class ImageFolderData:
    """A dataset folder (Food-11 or ImageFolder layout) at one image size; splits decode on first use.

    data = ImageFolderData("path/to/data", image_size=96); data.split("training") -> Split.
    """

    def __init__(self, root: str | Path, image_size: int = 96, *, cache_dir: str | Path | None = None,
                 skip_bad: bool = False, progress: bool = True):
        self.root, self.image_size = check_folder(root, image_size), image_size
        self.cache_dir, self.skip_bad, self.progress = cache_dir, skip_bad, progress
        self._splits: dict[str, Split] = {}

    def split(self, name: str) -> Split:
        if name not in self._splits:
            self._splits[name] = load_split(self.root, name, self.image_size, cache_dir=self.cache_dir,
                                            skip_bad=self.skip_bad, progress=self.progress)
        return self._splits[name]

    @property
    def class_names(self) -> list[str]:
        return self.split("training").class_names

    def __repr__(self) -> str:
        return f"ImageFolderData({str(self.root)!r}, image_size={self.image_size})"
