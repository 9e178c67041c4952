"""A split of images, and the conversion of the user's own datasets into one.

Training and evaluation read whole batches from a tensor of images, never one file at a time:
decoding costs more than a student's training step. A `Split` holds uint8 images (decoded
folders: a read-only tensor memory-mapped from the decode cache, so its size is not bounded by
RAM) or float images in [0, 1] (a user's own torch Dataset or DataLoader, read once into memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NetcompressError

UNLABELED = -1


@dataclass(frozen=True)
class Split:
    """One split: images [N, C, S, S] (uint8 0..255, or float 0..1), labels int64 [N] (-1 where unlabeled).
    Images of a decoded folder are mapped from the cache read-only: index them (`images[idx]` copies those
    rows), never write into them.

    skipped: (position, file) of the files left out as unreadable, so that a submission keeps every
    file's Id and row.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    files: list[str]
    class_names: list[str]
    skipped: tuple[tuple[int, str], ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labeled(self) -> bool:
        return bool((self.labels >= 0).all())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, name: str, positions: torch.Tensor) -> "Split":
        """The images at `positions`, as a split of its own."""
        return Split(name, self.images[positions], self.labels[positions], [self.files[i] for i in positions.tolist()],
                     self.class_names)


def as_split(data, name: str = "data", class_names: list[str] | None = None) -> Split:
    """A Split from a Split, a torch Dataset of (image, label) or a DataLoader of (images, labels) batches.

    Images must be tensors [C, S, S] (batches [B, C, S, S]) of floats in [0, 1] or uint8; PIL images
    are converted. The whole dataset is read once into memory, as netcompress does with folders.
    Class names come from `class_names`, the dataset's `classes` attribute, or the label range.
    """
    if isinstance(data, Split):
        return data
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, DataLoader):
        batches, source = data, data.dataset
    elif isinstance(data, Dataset) or hasattr(data, "__getitem__"):
        batches, source = DataLoader(data, batch_size=256, shuffle=False, collate_fn=_collate), data
    else:
        raise NetcompressError(f"{name}: expected a netcompress dataset, a Split, a torch Dataset or a DataLoader, "
                               f"not {type(data).__name__}")
    images, labels = [], []
    for batch in batches:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise NetcompressError(f"{name}: every item must be an (image, label) pair")
        images.append(_image_tensor(batch[0], name))
        labels.append(torch.as_tensor(batch[1], dtype=torch.int64).reshape(-1))
    if not images:
        raise NetcompressError(f"{name}: the dataset is empty")
    x, y = torch.cat(images), torch.cat(labels)
    if x.dim() != 4 or x.shape[-1] != x.shape[-2] or x.shape[1] not in (1, 3):
        raise NetcompressError(f"{name}: images must be square [C, S, S] tensors with 1 or 3 channels; got a batch "
                               f"of shape {list(x.shape)}: resize and crop them in the dataset's transform")
    names = class_names or list(getattr(source, "classes", None) or [str(i) for i in range(int(y.max()) + 1)])
    if int(y.max()) >= len(names) or int(y.min()) < UNLABELED:
        raise NetcompressError(f"{name}: labels span {int(y.min())}..{int(y.max())} but there are {len(names)} classes")
    return Split(name, x, y, [str(i) for i in range(len(y))], [str(n) for n in names])


def _collate(items):
    return [item[0] for item in items], [item[1] for item in items]


def _image_tensor(images, name: str) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        x = images if images.dim() == 4 else images.unsqueeze(0)
    else:
        x = torch.stack([_one_image(im, name) for im in images])
    if x.dtype != torch.uint8:
        x = x.float()
        if x.numel() and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
            raise NetcompressError(f"{name}: float images must lie in [0, 1] (found {x.min():.2f}..{x.max():.2f}); "
                                   "netcompress models normalize inside themselves, so drop Normalize from the transform")
    return x


def _one_image(image, name: str) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image
    if hasattr(image, "convert"):  # a PIL image
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    raise NetcompressError(f"{name}: images must be tensors or PIL images, not {type(image).__name__}")


def calibration_images(split: Split, n: int) -> torch.Tensor:
    """`n` images of a split as floats in [0, 1], spread evenly over its (label-sorted) files, so over its classes."""
    if n < 1:
        raise NetcompressError(f"calibration = {n}: use at least 1 image (a few hundred is typical)")
    idx = np.unique(np.linspace(0, len(split) - 1, min(n, len(split))).round().astype(np.int64))
    return to_float(split.images[torch.from_numpy(idx)])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Images as floats in [0, 1], whether stored as uint8 or float."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def split_of(data, name: str) -> Split:
    """Split `name` of a dataset folder (anything with a `.split(name)` method), or `data` itself as a Split."""
    if callable(getattr(data, "split", None)):
        return data.split(name)
    return as_split(data, name)
