"""Dataset folders, decoded once into a uint8 cache: Food-11, ImageFolder and CSV layouts, splits carved when missing.

The layouts are described in layout.py; labels.py reads classes.txt and label CSVs, decode.py
decodes images, cache.py keeps them decoded on disk and carve.py carves missing splits.
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

import warnings
from pathlib import Path

import torch

from ..errors import NetcompressError
from .cache import decode_files, default_cache_dir
from .carve import carve
from .decode import CHANNEL_MODES
from .labels import class_names_of, label_from_name, label_index, read_class_names, read_labels_csv
from .layout import ALIASES, IMAGE_EXTENSIONS, SPLITS, check_folder, find_split_folders, list_folder
from .sizes import check_image_size
from .split import UNLABELED, Split

# default_cache_dir, label_from_name and read_class_names are imported from here too (cli, measure, tests)
__all__ = ["ImageFolderData", "default_cache_dir", "label_from_name", "load_split", "read_class_names", "scan_split"]


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
        self.root = check_folder(root)
        self.image_size, self.channels = check_image_size(image_size, "--image-size"), channels
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
