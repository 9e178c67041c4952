"""Labels of dataset folders: classes.txt, a `file,label` CSV, Food-11 file names, and class indices."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import NetcompressError
from .split import UNLABELED


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
            labels: dict[str, str] = {}
            first: dict[str, int] = {}
            for row in reader:
                file = (row[columns["file"]] or "").strip().replace("\\", "/")
                label = (row[columns["label"]] or "").strip()
                if file in labels and labels[file] != label:
                    raise NetcompressError(
                        f"{path}: line {reader.line_num} labels {file} {label!r} but line {first[file]} labels it "
                        f"{labels[file]!r}; keep one row per file")
                labels.setdefault(file, label)
                first.setdefault(file, reader.line_num)
            return labels
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
