"""Where a dataset folder's images are: its split folders, its image files, and each file's raw label.

Split folders may be named training|train, validation|val|valid and testing|test. Layouts:
  Food-11      ROOT/<split>/<label>_<k>.jpg; unlabeled test files NNNN.jpg
  ImageFolder  ROOT/<split>/<class>/*.jpg, or ROOT/<class>/*.jpg with no split folders at all
  CSV          any images under ROOT (or its split folders), labels from a `file,label` CSV
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import NetcompressError
from .labels import label_from_name

SPLITS = ("training", "validation", "testing")
ALIASES = {"training": ("training", "train"), "validation": ("validation", "val", "valid"),
           "testing": ("testing", "test")}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def split_name(name: str, allowed: tuple[str, ...], field: str) -> str:
    """A split's canonical name from any of its usual names (val -> validation), among `allowed`."""
    for split in allowed:
        if name in ALIASES[split]:
            return split
    raise NetcompressError(f"{field} = {name!r}: choose one of {', '.join(allowed)}")


def check_folder(root: str | Path) -> Path:
    """`root` as a Path when it is a folder, else an error that says what a dataset folder holds."""
    root = Path(root)
    if not root.is_dir():
        raise NetcompressError(f"dataset folder {root} does not exist: give a folder that holds {', '.join(SPLITS)} "
                               "(or train, val, test) folders, or one folder per class")
    return root


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


def empty_class_folders(folder: Path) -> list[tuple[str, str]]:
    """Class folders (of an ImageFolder split) that hold no image a run would read, each with a hint: where its
    images are when they sit a level deeper. Such a class would otherwise vanish from the model without a word."""
    subdirs = [p for p in _visible(folder) if p.is_dir()]
    if not subdirs or not any(_images(d) for d in subdirs):
        return []  # not a folder of class folders (or every one is empty: "holds no images" says so)
    empty = []
    for d in subdirs:
        if _images(d):
            continue
        deeper = sorted({p.parent.relative_to(folder).as_posix() for p in _images(d, recursive=True)})
        others = sorted({p.suffix.lower() for p in d.iterdir() if p.is_file() and p.suffix})
        empty.append((d.name, f": its images sit in {', '.join(deeper[:3])}; move them up into {d.name}/" if deeper
                      else f" (it holds {', '.join(others[:5])} files)" if others else ": add images or remove it"))
    return empty


def nested_datasets_hint(root: Path) -> str:
    """Where `root` holds no images but folders below it look like datasets: the --data to give instead."""
    found = [p for p in _visible(root) if p.is_dir() and (has_split_folders(p) or
                                                          any(_images(d) for d in _visible(p) if d.is_dir()))]
    if not found:
        return ""
    return f"; {root} looks one level too high: its dataset folder(s) {', '.join(p.name for p in found[:5])} " \
           f"hold the splits or classes (e.g. --data {found[0]})"


def has_split_folders(root: Path) -> bool:
    """Whether `root` has at least one split folder under a usual name."""
    return any((root / n).is_dir() for names in ALIASES.values() for n in names)
