"""Dataset folders, decoded once into a uint8 cache: Food-11, ImageFolder and CSV layouts, splits carved when missing.

The layouts are described in layout.py; labels.py reads classes.txt and label CSVs, decode.py
decodes images, cache.py keeps them decoded on disk and carve.py carves missing splits.
Class indices come from ROOT/classes.txt, or from all splits together (the union of class folder
names, the largest Food-11 label, the CSV's labels): never from one split's listing, so a split
that lacks a class keeps every label right. A split without a folder of its own is carved from
training (seeded, stratified, the same on every rerun): `val_fraction` of every class for
validation, `test_fraction` for testing; a folder with no split folders is training for this
purpose. `test_from="validation"` makes the validation split the test split instead (choice and
test are then the same images, which `provenance` records). `describe()` says where every split
comes from and how many images of each class it holds, before anything is decoded.

Decoding a JPEG costs more than a student's training step, so every image is decoded, converted
(RGB or grayscale), resized (shorter side) and center-cropped once; the result is cached on disk
keyed by the folder's contents and the settings, and every later epoch reads batches from a memory map of
it (cache.py), so a dataset larger than RAM trains too.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import NetcompressError
from .cache import decode_files, default_cache_dir
from .carve import carve
from .decode import CHANNEL_MODES
from .labels import class_names_of, label_from_name, label_index, read_class_names, read_labels_csv
from .layout import (ALIASES, IMAGE_EXTENSIONS, SPLITS, check_folder, empty_class_folders, find_split_folders,
                     list_folder, nested_datasets_hint, split_name)
from .sizes import check_image_size
from .split import UNLABELED, Split

# default_cache_dir, label_from_name and read_class_names are imported from here too (cli, measure, tests)
__all__ = ["ImageFolderData", "default_cache_dir", "label_from_name", "load_split", "read_class_names", "scan_split"]

TEST_SOURCES = ("training", "validation")  # where a dataset without a testing folder takes its test split from


class ImageFolderData:
    """A dataset folder at one image size; splits decode on first use.

    data = ImageFolderData("path/to/data", image_size=96); data.split("training") -> Split.
    channels: 3 (RGB; grayscale, palette and CMYK images are converted, with a note) or 1 (grayscale,
    for 1-channel models). labels_csv: a `file,label` CSV (paths relative to the folder, or bare file
    names). val_fraction / test_fraction: what is carved off training where a split has no folder (seeded
    by `seed`, stratified by class). test_from: "training" (carve the missing test split) or "validation"
    (report test figures on the validation split). `provenance` records all of it for the run and the model.
    """

    def __init__(self, root: str | Path, image_size: int = 96, *, channels: int = 3,
                 labels_csv: str | Path | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 0, cache_dir: str | Path | None = None, skip_bad: bool = False, progress: bool = True,
                 test_from: str = "training"):
        if channels not in CHANNEL_MODES:
            raise NetcompressError(f"--channels {channels}: use 3 (RGB) or 1 (grayscale)")
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise NetcompressError(f"val_fraction = {val_fraction} and test_fraction = {test_fraction} must lie in "
                                   "(0, 1) and leave images for training")
        self.root = check_folder(root)
        self.image_size, self.channels = check_image_size(image_size, "--image-size"), channels
        self.cache_dir, self.skip_bad, self.progress, self.seed = cache_dir, skip_bad, progress, seed
        self._splits: dict[str, Split] = {}
        csv_labels = None if labels_csv is None else read_labels_csv(labels_csv)
        folders = find_split_folders(self.root)
        self._folders = folders or {"all": self.root}
        self._listings = {name: list_folder(folder, self.root, csv_labels) for name, folder in self._folders.items()}
        self.class_names = class_names_of(self.root, [y for _, raw in self._listings.values() for y in raw])
        self.test_from = split_name(test_from, TEST_SOURCES, "test_from")
        self.source = "all" if not folders else "training"  # what missing splits are carved from
        wanted = {"validation": val_fraction, "testing": test_fraction}
        missing = [s for s in wanted if s not in folders and (s == "validation" or self.test_from == "training")]
        self.carved = {s: wanted[s] for s in missing} if self.source in self._folders else {}
        self.test_is_validation = "testing" not in folders and self.test_from == "validation"
        self.provenance = ({"carved": self.carved, "carve_seed": seed} if self.carved else {}) | (
            {"test_from": "validation"} if self.test_is_validation else {})

    @staticmethod
    def options_from(provenance: dict | None) -> dict:
        """The split options recorded in `provenance` (a model's spec.info.data), so that a later verb reads the
        splits the model was trained with: the same carve, the same test split."""
        made = provenance or {}
        carved = made.get("carved") or {}
        return {"val_fraction": carved.get("validation", 0.1), "test_fraction": carved.get("testing", 0.1),
                "seed": made.get("carve_seed", 0), "test_from": made.get("test_from", "training")}

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise NetcompressError(f"unknown split {name!r}: choose one of {', '.join(SPLITS)}")
        if name not in self._splits:
            if name == "testing" and self.test_is_validation:
                self._splits[name] = replace(self.split("validation"), name="testing")
            elif name in self.carved or (name == "training" and self.carved):
                self._splits.update(self._carve())
            elif name not in self._listings:
                raise NetcompressError(f"{self.root} has no {name} split: add a {'/'.join(ALIASES[name])} folder")
            else:
                self._splits[name] = self._decode(name, labeled=name != "testing")
        if not len(self._splits[name]):  # a carve that left this split empty: too few images of every class
            carved = [s for s in ("training", *self.carved) if s in self._splits]
            raise NetcompressError(self._too_few(name, sum(len(self._splits[s]) for s in carved)))
        return self._splits[name]

    def _decode(self, name: str, labeled: bool) -> Split:
        files, labels = self._labeled_files(name, labeled)
        return self._decode_files(name, files, labels)

    def _labeled_files(self, name: str, labeled: bool) -> tuple[list[Path], list[int]]:
        """A listing's files and class indices; files without a (known) label stop the run, or with skip_bad are
        left out with a note."""
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
                          stacklevel=4)
        if any(y == UNLABELED for y in labels) and any(y != UNLABELED for y in labels):
            raise NetcompressError(f"{self.root}: the {name} split mixes labeled and unlabeled files; keep one kind")
        if not kept:
            raise NetcompressError(self._no_images(name))
        return kept, labels

    def _decode_files(self, name: str, files: list[Path], labels: list[int]) -> Split:
        return decode_files(name, files, labels, self.class_names, self.image_size, channels=self.channels,
                            cache_dir=self.cache_dir, skip_bad=self.skip_bad, progress=self.progress)

    def _carve(self) -> dict[str, Split]:
        """The carved splits and the rest of training, from one decode of the source in carve order (training's
        files, then validation's, then testing's): each split is a range of the cache's rows, mapped, not copied.
        The carve is drawn from the listing's labels, so an image that fails to decode (skip_bad) leaves a gap in
        its split rather than moving the others."""
        files, labels = self._labeled_files(self.source, labeled=True)
        parts = carve(np.asarray(labels, dtype=np.int64), self.carved, self.seed)
        order = np.concatenate(list(parts.values())).tolist()
        whole = self._decode_files(self.source, [files[i] for i in order], [labels[i] for i in order])
        bounds = np.cumsum([0, *map(len, parts.values())])
        skipped = np.asarray([i for i, _ in whole.skipped], dtype=np.int64)
        rows = (bounds - np.searchsorted(skipped, bounds)).tolist()  # positions -> rows of the decoded images
        bounds = bounds.tolist()
        return {name: Split(name, whole.images[ra:rb], whole.labels[ra:rb], whole.files[ra:rb], whole.class_names,
                            tuple((i - a, f) for i, f in whole.skipped if a <= i < b))
                for name, a, b, ra, rb in zip(parts, bounds[:-1], bounds[1:], rows[:-1], rows[1:])}

    def _too_few(self, split: str, images: int) -> str:
        if split == "training":
            return f"{self._folders[self.source]} holds {images} labeled image(s): too few to train on after carving"
        fix = "raise --val-fraction" if split == "validation" else "use --test-from validation"
        return (f"{self._folders[self.source]} holds {images} labeled image(s): too few to carve a {split} split "
                f"({self.carved[split]:.0%} of each class rounds to none); add a {'/'.join(ALIASES[split])} folder "
                f"or {fix}")

    def listed_files(self, name: str) -> list[Path]:
        """The image files of a split folder ("all": a folder without split folders), as listed; [] without one."""
        return list(self._listings[name][0]) if name in self._listings else []

    def _no_images(self, name: str) -> str:
        return (f"{self._folders[name]} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or fix "
                f"--data" + nested_datasets_hint(self.root))

    def describe(self) -> dict[str, dict]:
        """Every split: where it comes from and how many images of each class it holds (from the file listing,
        before decoding: files a --skip-bad decode leaves out are still counted)."""
        index = {n: i for i, n in enumerate(self.class_names)}
        described = {}
        for name in SPLITS:
            if name in self._listings:
                described[name] = self._count(name, self._labels_of(name, index), f"{self._folders[name]}/")
        if self.carved:
            labels = self._labels_of(self.source, index)
            parts = carve(labels, self.carved, self.seed)
            origin = f"{self._folders[self.source]}/"
            for name, positions in parts.items():
                how = ("the rest of " if name == "training" else f"carved from {self.source} (")
                text = (f"{how}{origin}" if name == "training"
                        else f"{how}{self.carved[name]:.0%} of each class, seed {self.seed}) of {origin}")
                described[name] = self._count(name, labels[positions], text)
        if self.test_is_validation:
            described["testing"] = {**described["validation"], "from": "the validation split (test = validation)"}
        return {name: described[name] for name in SPLITS if name in described}

    def _labels_of(self, name: str, index: dict) -> np.ndarray:
        """Class indices of a listing's files (-1: unlabeled; files whose label is unreadable are left out)."""
        labels = []
        for f, y in zip(*self._listings[name]):
            try:
                labels.append(label_index(y, self.class_names, index, f))
            except NetcompressError:
                continue
        return np.asarray(labels, dtype=np.int64)

    def _count(self, name: str, labels: np.ndarray, origin: str) -> dict:
        labeled = labels[labels >= 0]
        return {"from": origin, "images": int(len(labels)), "labeled": bool(len(labeled) == len(labels)),
                "per_class": {c: int((labeled == i).sum()) for i, c in enumerate(self.class_names)}}

    def problems(self, splits: tuple[str, ...] = SPLITS) -> list[str]:
        """What would stop a run that reads `splits`, found from the listing alone: a missing or empty split,
        a class with no training image, class folders whose images sit where they are not read."""
        index = {n: i for i, n in enumerate(self.class_names)}
        found = [f"{folder}/{name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}){hint}"
                 for folder in self._folders.values() for name, hint in empty_class_folders(folder)]
        described = self.describe()
        for split in splits:
            if split not in described:
                if split != "training" and "training" in splits and "training" not in described:
                    continue  # the missing training folder is the problem: the others would be carved from it
                found.append(f"{self.root} has no {split} split: add a {'/'.join(ALIASES[split])} folder"
                             + ("" if "training" in self._folders else
                                "; splits without a folder are carved from a training folder"))
            elif not described[split]["images"]:
                carved = split in self.carved or (split == "training" and self.carved)
                source = len(self._labels_of(self.source, index)) if carved else 0
                found.append(self._too_few(split, source) if source else self._no_images(self.source if carved
                                                                                          else split))
        training = described.get("training")
        if training and "training" in splits and training["images"]:
            absent = [c for c, n in training["per_class"].items() if not n]
            if absent:
                found.append(f"class(es) {', '.join(absent[:5])} have no training image: add some to "
                             f"{training['from']} or remove the class")
        return list(dict.fromkeys(found))

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
