"""Dataset folders, decoded once into a uint8 cache: Food-11, ImageFolder and CSV layouts, splits carved when missing.

Split folders may be named training|train, validation|val|valid and testing|test. Layouts:
  Food-11      ROOT/<split>/<label>_<k>.jpg; unlabeled test files NNNN.jpg
  ImageFolder  ROOT/<split>/<class>/*.jpg, or ROOT/<class>/*.jpg with no split folders at all
  CSV          any images under ROOT (or its split folders), labels from a `file,label` CSV
Class indices come from ROOT/classes.txt, or from all splits together (the union of class folder
names, the largest Food-11 label, the CSV's labels): never from one split's listing, so a split
that lacks a class keeps every label right. Without a validation folder, a seeded, stratified
`val_fraction` of training is carved off (the same carve on every rerun); a folder with no split
folders gives up `val_fraction` for validation and `test_fraction` for testing.

Decoding a JPEG costs more than a student's training step, so every image is decoded, converted
(RGB or grayscale), resized (shorter side) and center-cropped once; the result is cached on disk
keyed by the folder's contents and the settings, and every later epoch reads tensors.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import NetcompressError
from ..runtime import bars_off
from .split import UNLABELED, Split

SPLITS = ("training", "validation", "testing")
ALIASES = {"training": ("training", "train"), "validation": ("validation", "val", "valid"),
           "testing": ("testing", "test")}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CHANNEL_MODES = {3: "RGB", 1: "L"}
CACHE_VERSION = 2


def default_cache_dir() -> Path:
    return Path(os.environ.get("NETCOMPRESS_CACHE", Path.home() / ".cache" / "netcompress"))


def check_folder(root: str | Path, image_size: int) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise NetcompressError(f"dataset folder {root} does not exist: give a folder that holds {', '.join(SPLITS)} "
                               "(or train, val, test) folders, or one folder per class")
    if not 8 <= image_size <= 4096:
        raise NetcompressError(f"--image-size {image_size} is out of range; use 8..4096 (the course used 256)")
    return root


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


def read_labels_csv(path: str | Path) -> dict[str, str]:
    """A `file,label` CSV (header row; other columns ignored) -> {file as written: label}."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = {c.strip().lower(): c for c in reader.fieldnames or []}
            if not {"file", "label"} <= set(columns):
                raise NetcompressError(f"{path}: needs a header row with the columns file and label "
                                       f"(found {', '.join(reader.fieldnames or []) or 'none'})")
            return {row[columns["file"]].strip().replace("\\", "/"): row[columns["label"]].strip() for row in reader}
    except FileNotFoundError as exc:
        raise NetcompressError(f"labels file {path} does not exist") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise NetcompressError(f"{path}: not a readable CSV file ({exc})") from exc


def label_from_name(path: Path) -> int | None:
    """Food-11 names: '<label>_<k>.jpg' -> label; 'NNNN.jpg' (unlabeled test file) -> None."""
    prefix, sep, _ = path.stem.partition("_")
    if sep and prefix.isascii() and prefix.isdigit():
        return int(prefix)
    if not sep and path.stem.isascii() and path.stem.isdigit():
        return None
    raise NetcompressError(
        f"{path}: cannot read a label from the file name; Food-11 files are named <label>_<k>.jpg "
        "(unlabeled test files NNNN.jpg); rename it, or use the ImageFolder layout <split>/<class>/*.jpg"
    )


def _visible(folder: Path) -> list[Path]:
    """A folder's entries in name order, without hidden ones (.ipynb_checkpoints, .DS_Store, ...)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__pycache__")


def _images(folder: Path, recursive: bool = False) -> list[Path]:
    """Regular image files in name order; FIFOs, devices and dangling or looping links are left out with a note
    (never opened: reading a FIFO would block forever)."""
    entries = sorted(folder.rglob("*")) if recursive else _visible(folder)
    named = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    files = [p for p in named if p.is_file()]
    others = [p.name for p in named if not p.is_file() and not p.is_dir()]
    if others:
        warnings.warn(f"{folder}: left out {len(others)} entr{'y that is' if len(others) == 1 else 'ies that are'} not "
                      f"a regular file (FIFO, device, dangling link): {', '.join(others[:5])}", stacklevel=4)
    return files


def find_split_folders(root: Path) -> dict[str, Path]:
    """The split folders present under their usual names; two names for one split are refused."""
    found = {}
    for split, names in ALIASES.items():
        present = [root / n for n in names if (root / n).is_dir()]
        if len(present) > 1:
            raise NetcompressError(f"{root} has both {present[0].name}/ and {present[1].name}/ for the {split} split; "
                                   "keep one")
        if present:
            found[split] = present[0]
    return found


def list_folder(folder: Path, root: Path, csv_labels: dict[str, str] | None) -> tuple[list[Path], list]:
    """A folder's image files in Id order and their raw labels: an int (Food-11), a str (class folder or
    CSV label) or None (unlabeled)."""
    if csv_labels is not None:
        files = _images(folder, recursive=True)
        by_name = {Path(k).name: v for k, v in csv_labels.items()}
        labels = [csv_labels.get(f.relative_to(root).as_posix(), by_name.get(f.name)) for f in files]
        return files, labels
    subdirs = [p for p in _visible(folder) if p.is_dir()]
    if subdirs:  # ImageFolder: one folder per class
        files, labels = [], []
        for d in subdirs:
            for f in _images(d):
                files.append(f)
                labels.append(d.name)
        return files, labels
    files = _images(folder)
    return files, [_food11_label(f) for f in files]


def _food11_label(path: Path):
    """The label in a Food-11 file name, or the error itself (raised later, unless --skip-bad leaves the file out)."""
    try:
        return label_from_name(path)
    except NetcompressError as exc:
        return exc


def class_names_of(root: Path, raw_labels: list) -> list[str]:
    """classes.txt, or the classes every split's labels name together."""
    listed = read_class_names(root)
    if listed is not None:
        return listed
    known = [y for y in raw_labels if y is not None and not isinstance(y, NetcompressError)]
    if all(isinstance(y, int) or (isinstance(y, str) and y.isascii() and y.isdigit()) for y in known):
        return [str(i) for i in range(max((int(y) for y in known), default=-1) + 1)]
    return sorted({str(y) for y in known})


def label_index(raw, class_names: list[str], index: dict[str, int], where: Path) -> int:
    """The class index of a raw label, or a clear error naming the file."""
    if isinstance(raw, NetcompressError):
        raise raw
    if raw is None:
        return UNLABELED
    if isinstance(raw, str) and raw in index:
        return index[raw]
    if isinstance(raw, int) or (isinstance(raw, str) and raw.isascii() and raw.isdigit()):
        if int(raw) < len(class_names):
            return int(raw)
        raise NetcompressError(f"{where}: label {raw} is out of range: there are {len(class_names)} classes "
                               f"(0..{len(class_names) - 1}); fix the label or classes.txt")
    raise NetcompressError(f"{where}: label {raw!r} is not a class of the dataset ({', '.join(class_names[:8])}"
                           f"{', ...' if len(class_names) > 8 else ''}); add it to classes.txt or fix the label")


def decode_image(path: Path, size: int, channels: int = 3) -> tuple[np.ndarray, str | None]:
    """One image as uint8 [size, size, channels] (shorter side resized, then center-cropped), and the mode it
    was converted from (None when it already had the dataset's mode)."""
    mode = CHANNEL_MODES[channels]
    try:
        with Image.open(path) as img:
            converted = None if img.mode == mode else img.mode
            img.draft(mode, (size, size))  # JPEG: decode at a reduced scale when it is still >= size
            img = img.convert(mode)
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
            left, top = (nw - size) // 2, (nh - size) // 2
            array = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
            return array.reshape(size, size, channels), converted
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise NetcompressError(
            f"{path}: unreadable or corrupt image ({exc}); replace or delete it, or pass --skip-bad to leave it out"
        ) from exc


def _cache_key(files: list[Path], size: int, channels: int, skip_bad: bool) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION} size={size} channels={channels} skip_bad={skip_bad}\n".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def decode_files(name: str, files: list[Path], labels: list[int], class_names: list[str], image_size: int, *,
                 channels: int = 3, cache_dir: str | Path | None = None, skip_bad: bool = False,
                 progress: bool = True) -> Split:
    """Decode (or read from the cache) a list of image files into a Split; unreadable ones stop the run
    unless skip_bad, which leaves them out (they keep their place in `Split.skipped`)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = cache / f"{name}-{image_size}px-{_cache_key(files, image_size, channels, skip_bad)}.npz"
    cached = _read_cache(cache_file, image_size, channels)
    if cached is not None:
        images, kept = cached
    else:
        images, kept = _decode(name, files, image_size, channels, skip_bad, progress)
        _atomic_savez(cache_file, images=images, kept=np.asarray(kept, dtype=np.int64))
    skipped = sorted(set(range(len(files))) - set(kept))
    return Split(name, torch.from_numpy(images), torch.tensor([labels[i] for i in kept], dtype=torch.int64),
                 [files[i].name for i in kept], list(class_names), tuple((i, files[i].name) for i in skipped))


def _read_cache(path: Path, size: int, channels: int) -> tuple[np.ndarray, list[int]] | None:
    """A decode cache file's images and kept positions; a damaged one is deleted (and the images decoded again)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, kept = z["images"], z["kept"].tolist()
        if images.shape[1:] != (channels, size, size) or len(kept) != len(images):
            raise ValueError(f"shape {images.shape}")
        return images, kept
    except Exception as exc:  # numpy and zipfile raise many types for damaged files
        warnings.warn(f"decode cache {path} is damaged ({type(exc).__name__}); decoding the images again",
                      stacklevel=3)
        path.unlink(missing_ok=True)
        return None


def _decode(name: str, files: list[Path], size: int, channels: int, skip_bad: bool,
            progress: bool) -> tuple[np.ndarray, list[int]]:
    def work(path: Path):
        try:
            return decode_image(path, size, channels)
        except NetcompressError as exc:
            if not skip_bad:
                raise
            return exc

    images, kept, bad, converted = [], [], [], Counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = pool.map(work, files)
        for i, result in enumerate(tqdm(results, total=len(files), desc=f"decode {name}", unit="img",
                                        disable=bars_off(progress), leave=False)):
            if isinstance(result, NetcompressError):
                bad.append(str(result))
            else:
                images.append(result[0])
                kept.append(i)
                if result[1] is not None:
                    converted[result[1]] += 1
    if converted:
        modes = ", ".join(f"{n} {mode}" for mode, n in sorted(converted.items()))
        warnings.warn(f"{name}: converted {sum(converted.values())} image(s) ({modes}) to {CHANNEL_MODES[channels]}",
                      stacklevel=3)
    if bad:
        warnings.warn(f"skipped {len(bad)} bad image(s) in {name}:\n  " + "\n  ".join(bad[:10]), stacklevel=3)
    if not images:
        raise NetcompressError(f"{name}: no readable images left after skipping bad ones")
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)), kept


def _atomic_savez(path: Path, **arrays) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs speed
        warnings.warn(f"could not write the decode cache {path}: {exc}", stacklevel=3)


def carve(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Seeded, stratified split of positions: `fractions` of every class (rounded) go to each named split,
    the rest to "training"; every class keeps at least one training image. Positions stay in file order."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {name: [] for name in ["training", *fractions]}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for name, fraction in fractions.items():
            take = min(int(round(fraction * len(members))), max(0, len(members) - start - 1))
            out[name].extend(members[start:start + take])
            start += take
        out["training"].extend(members[start:])
    return {name: np.sort(np.asarray(positions, dtype=np.int64)) for name, positions in out.items()}


class ImageFolderData:
    """A dataset folder at one image size; splits decode on first use.

    data = ImageFolderData("path/to/data", image_size=96); data.split("training") -> Split.
    channels: 3 (RGB; grayscale, palette and CMYK images are converted, with a note) or 1 (grayscale,
    for 1-channel models). labels_csv: a `file,label` CSV (paths relative to the folder, or bare file
    names). val_fraction / test_fraction: what is carved off where a split has no folder (seeded by
    `seed`, stratified by class); `provenance` records it for the run and the model file.
    """

    def __init__(self, root: str | Path, image_size: int = 96, *, channels: int = 3,
                 labels_csv: str | Path | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 0, cache_dir: str | Path | None = None, skip_bad: bool = False, progress: bool = True):
        if channels not in CHANNEL_MODES:
            raise NetcompressError(f"--channels {channels}: use 3 (RGB) or 1 (grayscale)")
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise NetcompressError(f"--val-fraction {val_fraction} and --test-fraction {test_fraction} must lie in "
                                   "(0, 1) and leave images for training")
        self.root, self.image_size, self.channels = check_folder(root, image_size), image_size, channels
        self.cache_dir, self.skip_bad, self.progress, self.seed = cache_dir, skip_bad, progress, seed
        self._splits: dict[str, Split] = {}
        csv_labels = None if labels_csv is None else read_labels_csv(labels_csv)
        folders = find_split_folders(self.root)
        self._folders = folders or {"all": self.root}
        self._listings = {name: list_folder(folder, self.root, csv_labels) for name, folder in self._folders.items()}
        self.class_names = class_names_of(self.root, [y for _, raw in self._listings.values() for y in raw])
        self.carved = ({"validation": val_fraction, "testing": test_fraction} if not folders
                       else {"validation": val_fraction} if "training" in folders and "validation" not in folders
                       else {})
        self.provenance = {"carved": self.carved, "carve_seed": seed} if self.carved else {}

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise NetcompressError(f"unknown split {name!r}: choose one of {', '.join(SPLITS)}")
        if name not in self._splits:
            if name in self.carved or (name == "training" and self.carved):
                self._splits.update(self._carve())
            elif name not in self._listings:
                raise NetcompressError(f"{self.root} has no {name} split: add a {'/'.join(ALIASES[name])} folder")
            else:
                self._splits[name] = self._decode(name, labeled=name != "testing")
        return self._splits[name]

    def _decode(self, name: str, labeled: bool) -> Split:
        files, raw = self._listings[name]
        index = {n: i for i, n in enumerate(self.class_names)}
        kept, labels, bad = [], [], []
        for f, y in zip(files, raw):
            try:
                if y is None and labeled:
                    raise NetcompressError(f"{f}: no label; {name} images need one")
                labels.append(label_index(y, self.class_names, index, f))
                kept.append(f)
            except NetcompressError as exc:
                if not self.skip_bad:
                    raise
                bad.append(str(exc))
        if bad:
            warnings.warn(f"skipped {len(bad)} unlabeled or mislabeled file(s) in {name}:\n  " + "\n  ".join(bad[:10]),
                          stacklevel=3)
        if any(y == UNLABELED for y in labels) and any(y != UNLABELED for y in labels):
            raise NetcompressError(f"{self.root}: the {name} split mixes labeled and unlabeled files; keep one kind")
        if not kept:
            raise NetcompressError(f"{self._folders[name]} holds no images "
                                   f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or fix --data")
        return decode_files(name, kept, labels, self.class_names, self.image_size,
                            channels=self.channels, cache_dir=self.cache_dir, skip_bad=self.skip_bad,
                            progress=self.progress)

    def _carve(self) -> dict[str, Split]:
        source = self._decode("all" if "all" in self._listings else "training", labeled=True)
        parts = carve(source.labels.numpy(), self.carved, self.seed)
        return {name: source.subset(name, torch.from_numpy(positions)) for name, positions in parts.items()}

    def __repr__(self) -> str:
        return f"ImageFolderData({str(self.root)!r}, image_size={self.image_size}, channels={self.channels})"


def load_split(root: str | Path, split: str, image_size: int, **options) -> Split:
    """One split of a dataset folder (see ImageFolderData for the options)."""
    return ImageFolderData(root, image_size, **options).split(split)


def scan_split(root: str | Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """A split folder's image files in Id order, with their class indices (-1: unlabeled) and the class names."""
    data = ImageFolderData(root, 8, progress=False)
    if split not in data._listings:
        raise NetcompressError(f"{data.root} has no {split} folder")
    files, raw = data._listings[split]
    index = {n: i for i, n in enumerate(data.class_names)}
    return files, [label_index(y, data.class_names, index, f) for f, y in zip(files, raw)], data.class_names
