"""Decoding a long list of files in parallel, straight into the cache's image file, resumable after an interruption.

The files are cut into chunks; each chunk is decoded by one process of a pool as large as the cores this
process may use. A chunk's images go straight to their rows of one preallocated images.npy (row i: file i), so
the decoded pixels are written once; then the chunk's note (what it kept, converted and could not read) is
written atomically. A decode that is killed keeps every noted chunk, and the next run decodes only the chunks
without a note. A chunk is decoded exactly as in one process, so the file holds the same bytes whatever the
number of processes. A chunk's files are read ahead together before decoding: on a cold disk their reads
overlap instead of each waiting for the one before.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..process import bars_off, usable_cores
from .decode import Decoded, decode_chunk
from .mapped import allocate_npy, npy_layout

CHUNK = 256  # files a chunk: 7 MB of images at 96 px, small enough to hand out evenly over the cores


def note_file(parts: Path, start: int, stop: int) -> Path:
    return parts / f"{start:010d}-{stop:010d}.npz"


def read_ahead(files: list[str]) -> None:
    """Ask the kernel to read `files` now, all at once (Linux; elsewhere nothing)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO put in a file's place never blocks
        except OSError:
            continue  # the decode itself says what is wrong with the file
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def decode_into(files: list[str], start: int, size: int, channels: int, skip_bad: bool, images: str,
                offset: int, note: str) -> None:
    """Decode one chunk into its rows of `images` (data at byte `offset`), then write its note (a temporary
    name, then renamed: a note on disk means the rows are written)."""
    read_ahead(files)
    part = decode_chunk([Path(f) for f in files], start, size, channels, skip_bad)
    row = size * size * channels
    runs = [(part.images, start)] if len(part.kept) == len(files) else \
        [(image[None], i) for image, i in zip(part.images, part.kept)]  # bad files leave their rows empty
    with open(images, "r+b") as f:
        for block, i in runs:
            f.seek(offset + i * row)
            f.write(np.ascontiguousarray(block).data)
    modes = sorted(part.converted)
    tmp = f"{note}.tmp{os.getpid()}"  # not *.npz: only whole notes carry that name
    with open(tmp, "wb") as f:
        np.savez(f, kept=np.asarray(part.kept, dtype=np.int64), modes=np.asarray(modes, dtype=str),
                 counts=np.asarray([part.converted[m] for m in modes], np.int64), bad=np.asarray(part.bad, dtype=str))
    os.replace(tmp, note)


def read_note(path: Path) -> Decoded:
    """What a decoded chunk recorded (its images are in the images file)."""
    with np.load(path, allow_pickle=False) as z:
        converted = Counter(dict(zip(z["modes"].tolist(), z["counts"].tolist())))
        return Decoded(np.zeros((0,), np.uint8), z["kept"].tolist(), converted, z["bad"].tolist())


def _noted(path: Path) -> bool:
    try:
        read_note(path)
        return True
    except Exception:  # numpy and zipfile raise many types for a damaged file; its chunk is decoded again
        path.unlink(missing_ok=True)
        return False


def _images_file(parts: Path, shape: tuple[int, ...]) -> tuple[Path, int]:
    """parts/images.npy for `shape` and its data offset: the one an interrupted or concurrent decode of the same
    files made, else a new one. A new file appears whole and only where none is (a link, not a rename), so two
    processes decoding the same files write into one file, the same bytes, and neither empties the other's."""
    images = parts / "images.npy"
    damaged = False
    try:
        found, offset = npy_layout(images)
        if found == shape:
            return images, offset
        damaged = True
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        damaged = True
    tmp = parts / f"images.npy.tmp{os.getpid()}"
    offset = allocate_npy(tmp, shape)
    try:
        if damaged:
            os.replace(tmp, images)
        else:
            os.link(tmp, images)
    except FileExistsError:  # another process made it first: its file, its notes
        return images, npy_layout(images)[1]
    finally:
        tmp.unlink(missing_ok=True)
    for stale in parts.glob("*.npz"):  # notes of rows that the new file does not hold
        stale.unlink(missing_ok=True)
    return images, offset


def decode_parts(name: str, files: list[Path], size: int, channels: int, skip_bad: bool, parts: Path, *,
                 chunk: int = CHUNK, workers: int | None = None, progress: bool = True) -> tuple[Path, list[Decoded]]:
    """parts/images.npy holding file i's image in row i (rows of unreadable files left empty), decoding only the
    chunks without a note, and every chunk's note in order. workers: processes (default: the usable cores);
    one decodes here, in this process."""
    parts.mkdir(parents=True, exist_ok=True)
    images, offset = _images_file(parts, (len(files), channels, size, size))
    bounds = [(i, min(i + chunk, len(files))) for i in range(0, len(files), chunk)]
    notes = [note_file(parts, a, b) for a, b in bounds]
    todo = [(a, b, p) for (a, b), p in zip(bounds, notes) if not (p.exists() and _noted(p))]
    workers = max(1, min(workers or usable_cores(), len(todo)))
    jobs = [([str(f) for f in files[a:b]], a, size, channels, skip_bad, str(images), offset, str(p))
            for a, b, p in todo]
    with tqdm(total=len(files), initial=len(files) - sum(b - a for a, b, _ in todo), desc=f"decode {name}",
              unit="img", disable=bars_off(progress), leave=False) as bar:
        if workers == 1:
            for job in jobs:
                decode_into(*job)
                bar.update(len(job[0]))
        else:
            # fork where it is safe (Linux): workers run only Pillow and numpy, and a script without a
            # `__main__` guard is not run again in each of them as spawn and forkserver would
            context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            with warnings.catch_warnings(), ProcessPoolExecutor(workers, mp_context=context) as pool:
                # JAX (which LiteRT's converter imports) warns at every fork; these workers never touch it
                warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
                pending = {pool.submit(decode_into, *job): len(job[0]) for job in jobs}
                try:
                    while pending:
                        done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                        for future in done:
                            future.result()  # a bad image (without skip_bad) stops the decode; noted chunks stay
                            bar.update(pending.pop(future))
                finally:
                    for future in pending:
                        future.cancel()
    return images, [read_note(p) for p in notes]
