"""The decode-once cache: a list of image files decoded into a Split once, kept on disk keyed by the files'
paths, sizes, modification and change times and inodes and the settings, and mapped back by every later run.

An entry is a folder, NAME-SIZEpx-KEY/, holding images.npy (uint8 [N, C, S, S], read memory-mapped, so
RAM stays bounded whatever the dataset's size) and kept.npy (each image's position in the file list). It
is built in a temporary folder and renamed into place: a reader never sees half an entry. A decode in
progress writes into NAME-SIZEpx-KEY.parts/ (pool.py), so an interrupted one resumes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .decode import decode_images, decode_notes
from .mapped import open_mapped, release_pages, write_npy
from .pool import CHUNK, decode_parts
from .split import Split

CACHE_VERSION = 3  # 3: a folder of mapped .npy files (2: one .npz read whole)


def default_cache_dir() -> Path:
    return Path(os.environ.get("NETCOMPRESS_CACHE", Path.home() / ".cache" / "netcompress"))


def _cache_key(files: list[Path], size: int, channels: int, skip_bad: bool) -> str:
    """The files as the file system describes them, not their bytes: hashing the bytes costs 5x the stats
    (measured on food101_10: 0.46 s against 0.10 s a run for 5,000 files, 37 MB; minutes for Food-101). The
    inode's change time is in the key: an edit in place that keeps the size and restores the mtime still moves
    it (no call sets it), so such a file is decoded again."""
    h = hashlib.sha256(f"v{CACHE_VERSION} size={size} channels={channels} skip_bad={skip_bad}\n".encode())
    folders: dict[Path, Path] = {}  # each folder resolved once: resolving every file costs as much as its stat
    for f in files:
        st = f.stat()
        folder = folders.get(f.parent) or folders.setdefault(f.parent, f.parent.resolve())
        h.update(f"{folder / f.name}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ctime_ns}\t{st.st_ino}\n".encode())
    return h.hexdigest()[:20]


def decode_files(name: str, files: list[Path], labels: list[int], class_names: list[str], image_size: int, *,
                 channels: int = 3, cache_dir: str | Path | None = None, skip_bad: bool = False,
                 progress: bool = True, chunk: int = CHUNK, workers: int | None = None) -> Split:
    """Decode (or map from the cache) a list of image files into a Split; unreadable ones stop the run
    unless skip_bad, which leaves them out (they keep their place in `Split.skipped`). chunk and workers: how
    the decode is cut up and over how many processes (default: the usable cores)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    entry = cache / f"{name}-{image_size}px-{_cache_key(files, image_size, channels, skip_bad)}"
    found = _read_entry(entry, len(files), image_size, channels)
    if found is None:
        try:
            found = _build_entry(entry, name, files, image_size, channels, skip_bad, chunk, workers, progress)
        except OSError as exc:  # a read-only or full cache only costs speed and memory: decode in memory
            found = _read_entry(entry, len(files), image_size, channels)  # unless another process just built it
            if found is None:
                warnings.warn(f"could not write the decode cache {entry}: {exc}", stacklevel=2)
                images, kept = decode_images(name, files, image_size, channels, skip_bad, progress)
                found = torch.from_numpy(images), kept
    images, kept = found
    skipped = sorted(set(range(len(files))) - set(kept))
    return Split(name, images, torch.tensor([labels[i] for i in kept], dtype=torch.int64),
                 [files[i].name for i in kept], list(class_names), tuple((i, files[i].name) for i in skipped))


def _read_entry(entry: Path, count: int, size: int, channels: int) -> tuple[torch.Tensor, list[int]] | None:
    """A cache entry's mapped images and kept positions; a damaged one is removed (and the images decoded
    again). The pixels carry no checksum (reading 5 GB to check one would cost what mapping saves): a short
    file, a broken header or kept positions that do not fit are caught."""
    if not entry.exists():
        return None
    try:
        images = open_mapped(entry / "images.npy")
        kept = np.load(entry / "kept.npy", allow_pickle=False)
        if images.shape[1:] != (channels, size, size) or kept.shape != (len(images),) or kept.dtype != np.int64:
            raise ValueError(f"shape {tuple(images.shape)}, {kept.shape} positions")
        if len(kept) and (kept[0] < 0 or kept[-1] >= count or (np.diff(kept) <= 0).any()):
            raise ValueError("positions out of order or range")
        return images, kept.tolist()
    except Exception as exc:  # numpy raises many types for damaged files
        warnings.warn(f"decode cache {entry} is damaged ({type(exc).__name__}); decoding the images again",
                      stacklevel=3)
        _remove(entry)
        return None


def _build_entry(entry: Path, name: str, files: list[Path], size: int, channels: int, skip_bad: bool, chunk: int,
                 workers: int | None, progress: bool) -> tuple[torch.Tensor, list[int]]:
    """Decode into the parts folder (resuming any noted chunks), make it a new entry, rename that into place."""
    parts = entry.with_name(entry.name + ".parts")
    decoded, notes = decode_parts(name, files, size, channels, skip_bad, parts, chunk=chunk, workers=workers,
                                  progress=progress)
    kept = [i for n in notes for i in n.kept]
    decode_notes(name, channels, sum((n.converted for n in notes), Counter()), [b for n in notes for b in n.bad],
                 len(kept))
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    _remove(tmp)
    tmp.mkdir(parents=True)
    try:
        np.save(tmp / "kept.npy", np.asarray(kept, dtype=np.int64))
        if len(kept) == len(files):
            os.rename(decoded, tmp / "images.npy")
        else:  # the rows of unreadable files are left out
            _write_rows(open_mapped(decoded), torch.tensor(kept), tmp / "images.npy")
        os.rename(tmp, entry)
    except OSError:
        if not entry.exists():  # not another process that finished the same entry first
            raise
    finally:
        _remove(tmp)
    _remove(parts)
    _remove_older_format(entry.parent)
    return open_mapped(entry / "images.npy"), kept


def _write_rows(images: torch.Tensor, rows: torch.Tensor, path: Path) -> None:
    """images[rows] written as a .npy file a block at a time, so that it never holds more than one in memory."""
    buffer = torch.empty((min(256, len(rows)), *images.shape[1:]), dtype=images.dtype)  # reused: no heap churn

    def blocks():
        for start in range(0, len(rows), len(buffer)):
            block = rows[start : start + len(buffer)]
            torch.index_select(images, 0, block, out=buffer[: len(block)])
            release_pages(images)
            yield buffer[: len(block)].numpy()

    write_npy(path, (len(rows), *images.shape[1:]), blocks())


def _remove_older_format(cache: Path) -> None:
    """Delete the previous format's entries (NAME-SIZEpx-KEY.npz, read whole into memory): no version since
    reads them, and at a few GB each they would hold the disk for nothing."""
    old = list(cache.glob("*-*px-*.npz"))
    if old:
        freed = sum(f.stat().st_size for f in old)
        for f in old:
            _remove(f)
        warnings.warn(f"removed {len(old)} decode-cache files of an older format from {cache} "
                      f"({freed / 2**20:,.0f} MB)", stacklevel=3)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
