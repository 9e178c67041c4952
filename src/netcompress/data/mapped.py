"""Image arrays kept on disk as raw .npy files and mapped into memory, so that a split of any size costs the
RAM of the batches being read, not of the dataset.

A mapped tensor reads its pages from the file on first touch; the kernel keeps them in the page cache, but
they also count in this process's resident set until `release_pages` drops them from it, which batch
iteration does after every batch: a whole epoch over 200,000 images at 96 px (5.5 GB) then stays within
a few batches of resident memory. Batch iteration also asks for the next batch's rows ahead (`prefetch_rows`),
so that a dataset larger than the page cache is read from the disk while the current batch trains rather
than image by image when it is gathered. The mapping is read-only: writing into such a tensor is an error.
"""

from __future__ import annotations

import mmap
import os
import warnings
import weakref
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

_MAPS: dict[int, tuple[weakref.ref, Path, int]] = {}  # storage address -> (its mmap, its file, data offset in it)


def write_npy(path: Path, shape: tuple[int, ...], blocks: Iterable[np.ndarray]) -> None:
    """Write uint8 `blocks` (stacked along axis 0 they make `shape`) as one .npy file, a block at a time, so
    that writing never holds more than one block in memory."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
        written = 0
        for block in blocks:
            f.write(np.ascontiguousarray(block, dtype=np.uint8).data)  # the block's own memory, not a copy
            written += len(block)
    if written != shape[0]:
        raise ValueError(f"{path}: wrote {written} rows of {shape[0]}")


def allocate_npy(path: Path, shape: tuple[int, ...]) -> int:
    """A new uint8 .npy file of `shape`, its rows not yet written (zeros, and no disk used until they are); the
    byte offset of its data."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape)))
    return offset


def npy_layout(path: Path) -> tuple[tuple[int, ...], int]:
    """The shape of the uint8 array a .npy file holds and the byte offset of its data; ValueError when the file is
    not one whole C-ordered uint8 array (a short, long or damaged file)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
    if fortran or dtype != np.uint8 or not shape or size != offset + int(np.prod(shape)):
        raise ValueError(f"{path}: {size} bytes do not hold a uint8 array of shape {shape}")
    return tuple(shape), offset


def open_mapped(path: Path) -> torch.Tensor:
    """A uint8 .npy file as a read-only tensor over a memory map of it; ValueError when the file is not one whole
    C-ordered uint8 array (a short, long or damaged file)."""
    shape, offset = npy_layout(path)
    if not np.prod(shape):
        return torch.zeros(shape, dtype=torch.uint8)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    array = np.ndarray(shape, np.uint8, buffer=mm, offset=offset)
    with warnings.catch_warnings():  # the array is read-only by design: nothing writes into a split's images
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(array)
    address = tensor.untyped_storage().data_ptr()
    _MAPS[address] = (weakref.ref(mm), Path(path), offset)
    weakref.finalize(mm, _forget, address)
    return tensor


def _forget(address: int) -> None:
    entry = _MAPS.get(address)
    if entry is not None and entry[0]() is None:  # a later mapping at the same address keeps its entry
        del _MAPS[address]


def mapped_file(tensor: torch.Tensor) -> Path | None:
    """The file a tensor (or a view of it) is mapped from; None for a tensor in memory."""
    found = _MAPS.get(tensor.untyped_storage().data_ptr()) if tensor.device.type == "cpu" else None
    return found[1] if found and found[0]() is not None else None


def _live_map(tensor: torch.Tensor) -> tuple[mmap.mmap, int] | None:
    """The open mmap a tensor (or a view of it) reads from and where its storage starts in it; None otherwise."""
    found = _MAPS.get(tensor.untyped_storage().data_ptr()) if tensor.device.type == "cpu" else None
    mm = found[0]() if found else None
    return None if mm is None or mm.closed else (mm, found[2])


def prefetch_rows(tensor: torch.Tensor, rows: torch.Tensor) -> None:
    """Ask the kernel to start reading rows `rows` of a mapped tensor (a view of one included) into the page cache,
    without waiting for them; nothing for a tensor in memory or an empty `rows`."""
    found = _live_map(tensor) if len(rows) else None
    if found is None or not hasattr(mmap, "MADV_WILLNEED"):
        return
    mm, offset = found
    first = offset + tensor.data_ptr() - tensor.untyped_storage().data_ptr()  # the view's first row in the map
    length = tensor[0].numel()
    for row in rows.tolist():
        start = first + row * tensor.stride(0)
        aligned = start - start % mmap.PAGESIZE
        mm.madvise(mmap.MADV_WILLNEED, aligned, start + length - aligned)


def release_pages(tensor: torch.Tensor) -> None:
    """Drop a mapped tensor's pages from this process's resident set (they stay in the page cache, and the
    next read maps them again); nothing for a tensor in memory."""
    found = _live_map(tensor)
    if found is not None:
        found[0].madvise(mmap.MADV_DONTNEED)
