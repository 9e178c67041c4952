"""Decoding image files: converted (RGB or grayscale), resized (shorter side) and center-cropped, in parallel."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
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


def decode_images(name: str, files: list[Path], size: int, channels: int, skip_bad: bool,
                  progress: bool) -> tuple[np.ndarray, list[int]]:
    """Images [N, C, size, size] uint8 of the files that decoded, and their positions in `files`; unreadable ones
    stop the run unless skip_bad, which leaves them out with a note."""
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
