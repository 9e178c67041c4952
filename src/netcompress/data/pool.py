"""Decoding a long list of files in parallel, into part files that outlive an interruption.

The files are cut into chunks; each chunk is decoded by one process of a pool as large as the cores this
process may use, and written as its own part file (atomically: a part on disk is whole). A decode that is
killed keeps every finished part, and the next run decodes only the chunks that have none. A chunk is
decoded exactly as in one process, so the parts hold the same bytes whatever the number of processes.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..process import bars_off, usable_cores
from .decode import Decoded, decode_chunk

CHUNK = 256  # files a part: 7 MB of images at 96 px, small enough to hand out evenly over the cores


def part_file(parts: Path, start: int, stop: int) -> Path:
    return parts / f"{start:010d}-{stop:010d}.npz"


def write_part(files: list[str], start: int, size: int, channels: int, skip_bad: bool, path: str) -> None:
    """Decode one chunk and write it as a part file (a temporary name, then renamed: never half a part)."""
    part = decode_chunk([Path(f) for f in files], start, size, channels, skip_bad)
    modes = sorted(part.converted)
    tmp = f"{path}.tmp{os.getpid()}"  # not *.npz: only whole parts carry that name
    with open(tmp, "wb") as f:
        np.savez(f, images=part.images, kept=np.asarray(part.kept, dtype=np.int64),
                 modes=np.asarray(modes, dtype=str), counts=np.asarray([part.converted[m] for m in modes], np.int64),
                 bad=np.asarray(part.bad, dtype=str))
    os.replace(tmp, path)


def read_part(path: Path, with_images: bool = True) -> Decoded:
    """A part file back; without images, only what it records about them (cheap: the images are not read)."""
    with np.load(path, allow_pickle=False) as z:
        images = z["images"] if with_images else np.zeros((0,), np.uint8)
        converted = Counter(dict(zip(z["modes"].tolist(), z["counts"].tolist())))
        return Decoded(images, z["kept"].tolist(), converted, z["bad"].tolist())


def _whole(path: Path) -> bool:
    try:
        read_part(path, with_images=False)
        return True
    except Exception:  # numpy and zipfile raise many types for a damaged file; it is decoded again
        path.unlink(missing_ok=True)
        return False


def decode_parts(name: str, files: list[Path], size: int, channels: int, skip_bad: bool, parts: Path, *,
                 chunk: int = CHUNK, workers: int | None = None, progress: bool = True) -> list[Path]:
    """Part files holding every file's decoded image, in order, decoding only the chunks without one.
    workers: processes (default: the usable cores); one decodes here, in this process."""
    parts.mkdir(parents=True, exist_ok=True)
    bounds = [(i, min(i + chunk, len(files))) for i in range(0, len(files), chunk)]
    paths = [part_file(parts, a, b) for a, b in bounds]
    todo = [(a, b, p) for (a, b), p in zip(bounds, paths) if not (p.exists() and _whole(p))]
    workers = max(1, min(workers or usable_cores(), len(todo)))
    with tqdm(total=len(files), initial=len(files) - sum(b - a for a, b, _ in todo), desc=f"decode {name}",
              unit="img", disable=bars_off(progress), leave=False) as bar:
        if workers == 1:
            for a, b, path in todo:
                write_part([str(f) for f in files[a:b]], a, size, channels, skip_bad, str(path))
                bar.update(b - a)
            return paths
        # fork where it is safe (Linux): workers run only Pillow and numpy, and a script without a
        # `__main__` guard is not run again in each of them as spawn and forkserver would
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            pending = {pool.submit(write_part, [str(f) for f in files[a:b]], a, size, channels, skip_bad,
                                   str(path)): b - a for a, b, path in todo}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        future.result()  # a bad image (without skip_bad) stops the decode; finished parts stay
                        bar.update(pending.pop(future))
            finally:
                for future in pending:
                    future.cancel()
    return paths
