"""Decoding image files: converted (RGB or grayscale), resized (shorter side) and center-cropped; a chunk of
files at a time, the unit a parallel decode hands to each process (pool.py)."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import NetcompressError
from ..process import bars_off

CHANNEL_MODES = {3: "RGB", 1: "L"}


def decode_image(path: Path, size: int, channels: int = 3) -> tuple[np.ndarray, str | None]:
    """One image as uint8 [size, size, channels] (shorter side resized, then center-cropped), and the mode it
    was converted from (None when it already had the dataset's mode)."""
    mode = CHANNEL_MODES[channels]
    try:
        with Image.open(path) as img:
            converted = None if img.mode == mode else img.mode
            img.draft(mode, (size, size))  # JPEG: decode at a reduced scale when it is still >= size
            img = _to_8_bits(img).convert(mode)
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


WIDE_GRAY = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


def _to_8_bits(img: Image.Image) -> Image.Image:
    """16-bit grayscale (PNG, TIFF) scaled to 8 bits: Pillow's own conversion clips every value above 255 to white."""
    if img.mode not in WIDE_GRAY:
        return img
    wide = np.asarray(img).astype(np.float64)
    top = 255 if wide.max(initial=0) <= 255 and img.mode == "I" else WIDE_GRAY[img.mode]  # 8-bit data held in "I"
    return Image.fromarray(np.clip(np.rint(wide * 255 / top), 0, 255).astype(np.uint8), "L")


@dataclass(frozen=True)
class Decoded:
    """A run of files decoded: the images that decoded [n, C, S, S], their positions in the whole file list, the
    modes converted from (counted) and what could not be read (skip_bad)."""

    images: np.ndarray
    kept: list[int]
    converted: Counter
    bad: list[str]


def decode_chunk(files: list[Path], start: int, size: int, channels: int, skip_bad: bool) -> Decoded:
    """Decode `files` (positions start, start + 1, ... of the whole list) one after another: the unit of work of
    a parallel decode, whose results are the same bit for bit as decoding every file in one process."""
    images, kept, bad, converted = [], [], [], Counter()
    for i, path in enumerate(files, start):
        try:
            image, mode = decode_image(path, size, channels)
        except NetcompressError as exc:
            if not skip_bad:
                raise
            bad.append(str(exc))
            continue
        images.append(image)
        kept.append(i)
        if mode is not None:
            converted[mode] += 1
    stacked = np.stack(images).transpose(0, 3, 1, 2) if images else np.zeros((0, size, size, channels), np.uint8)
    return Decoded(np.ascontiguousarray(stacked), kept, converted, bad)


def decode_notes(name: str, channels: int, converted: Counter, bad: list[str], kept: int) -> None:
    """Warn once about converted and skipped images; refuse a split where no image decoded."""
    if converted:
        modes = ", ".join(f"{n} {mode}" for mode, n in sorted(converted.items()))
        warnings.warn(f"{name}: converted {sum(converted.values())} image(s) ({modes}) to {CHANNEL_MODES[channels]}",
                      stacklevel=4)
    if bad:
        warnings.warn(f"skipped {len(bad)} bad image(s) in {name}:\n  " + "\n  ".join(bad[:10]), stacklevel=4)
    if not kept:
        raise NetcompressError(f"{name}: no readable images left after skipping bad ones")


def decode_images(name: str, files: list[Path], size: int, channels: int, skip_bad: bool,
                  progress: bool) -> tuple[np.ndarray, list[int]]:
    """Images [N, C, size, size] uint8 of a few files, in memory, and their positions in `files`; unreadable ones
    stop the run unless skip_bad, which leaves them out with a note. Folders go through the cache instead."""
    parts = [decode_chunk(files[i : i + 64], i, size, channels, skip_bad)
             for i in tqdm(range(0, len(files), 64), desc=f"decode {name}", unit="chunk",
                           disable=bars_off(progress), leave=False)]
    kept = [i for part in parts for i in part.kept]
    decode_notes(name, channels, sum((p.converted for p in parts), Counter()), [b for p in parts for b in p.bad],
                 len(kept))
    return np.concatenate([p.images for p in parts]), kept
