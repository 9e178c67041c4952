"""The decode cache at scale: mapped from disk rather than read into memory, decoded in parallel, resumed after a
kill, decoded again when damaged."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import netcompress.data.decode as decode_module
from netcompress.data.augment import iterate_batches
from netcompress.data.cache import decode_files
from netcompress.data.carve import carve
from netcompress.data.decode import decode_images
from netcompress.data.folder import ImageFolderData
from netcompress.data.mapped import mapped_file


def make_images(folder: Path, n: int, classes: int = 3, seed: int = 0) -> list[Path]:
    """n random JPEGs of assorted sizes (and a few grayscale ones) in class folders; their paths in order."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        c = folder / f"c{i % classes}"
        c.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert("L") if i % 7 == 3 else Image.fromarray(pixels)
        files.append(c / f"{i:05d}.jpg")
        image.save(files[-1], quality=90)
    return files


def decode(files: list[Path], cache: Path, **options):
    return decode_files("training", files, [0] * len(files), ["a"], 24, cache_dir=cache, progress=False, **options)


def mapping_rss_kb(path: Path) -> int | None:
    """Resident kB of this process's mappings of `path` (None when it is not mapped)."""
    total, inside = None, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header: addresses, mode, ..., path
            inside = line.endswith(" " + str(path))
            total = (total or 0) if inside else total
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_mapped_cache_equals_a_fresh_decode(tmp_path):
    files = make_images(tmp_path / "d", 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the grayscale images' note
        first = decode(files, tmp_path / "cache")
        fresh, kept = decode_images("fresh", files, 24, 3, False, False)
    again = decode(files, tmp_path / "cache")
    assert kept == list(range(30))
    assert torch.equal(again.images, torch.from_numpy(fresh)) and torch.equal(first.images, again.images)
    entry = mapped_file(again.images)
    assert entry is not None and entry.name == "images.npy" and entry.parent.parent == tmp_path / "cache"
    assert mapping_rss_kb(entry) is not None  # the images are this file, mapped, not a copy in memory
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [entry.parent.name]  # no parts, no temps


def test_entries_of_the_older_whole_file_format_are_removed_when_a_new_one_is_built(tmp_path):
    files = make_images(tmp_path / "d", 8, classes=1)
    cache = tmp_path / "cache"
    cache.mkdir()
    np.savez(cache / "training-96px-0123456789abcdef0123.npz", images=np.zeros((2, 3, 4, 4), np.uint8))
    (cache / "notes.npz").write_bytes(b"not ours")  # another name pattern: left alone
    with pytest.warns(UserWarning, match=r"removed 1 decode-cache files of an older format"):
        decode(files, cache)
    assert sorted(p.suffix for p in cache.iterdir()) == ["", ".npz"] and (cache / "notes.npz").exists()


def test_parallel_decode_equals_serial_bit_for_bit(tmp_path):
    files = make_images(tmp_path / "d", 37)
    files[11].write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="skipped 1 bad image") as serial_notes:
        serial = decode(files, tmp_path / "serial", workers=1, chunk=5, skip_bad=True)
    with pytest.warns(UserWarning, match="skipped 1 bad image") as parallel_notes:
        parallel = decode(files, tmp_path / "parallel", workers=2, chunk=5, skip_bad=True)
    assert torch.equal(serial.images, parallel.images) and len(parallel) == 36
    assert serial.files == parallel.files and serial.skipped == parallel.skipped == ((11, files[11].name),)
    assert [str(w.message) for w in serial_notes] == [str(w.message) for w in parallel_notes]


KILLED_DECODE = """
import sys, time
from pathlib import Path
import netcompress.data.decode as d
from netcompress.data.cache import decode_files
from netcompress.data.carve import carve
slow = d.decode_image
d.decode_image = lambda *a: (time.sleep(0.05), slow(*a))[1]
files = [Path(p) for p in sys.argv[2:]]
decode_files("training", files, [0] * len(files), ["a"], 24, cache_dir=sys.argv[1], progress=False, workers=1, chunk=4)
"""


def test_a_killed_decode_resumes_and_ends_identical(tmp_path, monkeypatch):
    files = make_images(tmp_path / "d", 40)
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_DECODE, str(cache), *map(str, files)],
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 120
    while len(list(cache.glob("*.parts/*.npz"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(cache.glob("*.parts/*.npz")))
    assert 3 <= done < 10, "the decode was to be killed part way"
    calls = []
    real = decode_module.decode_image
    monkeypatch.setattr(decode_module, "decode_image", lambda *a: (calls.append(a[0]), real(*a))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = decode(files, cache, workers=1, chunk=4)
        fresh = decode(files, tmp_path / "fresh", workers=1, chunk=4)
    assert len(calls) == 40 + 40 - 4 * done  # the resume decoded only the chunks without a part
    assert torch.equal(resumed.images, fresh.images)
    assert not list(cache.glob("*.parts")) and not list(cache.glob("*.tmp*"))


def test_two_processes_decoding_the_same_files_agree(tmp_path):
    """Both write into one image file (the same bytes); whichever finishes second maps the first's entry."""
    files = make_images(tmp_path / "d", 40)
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", KILLED_DECODE, str(cache), *map(str, files)],
                              env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in err, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh, _ = decode_images("fresh", files, 24, 3, False, False)
        with_entry = decode(files, cache, workers=1, chunk=4)
    assert torch.equal(with_entry.images, torch.from_numpy(fresh))
    assert len(list(cache.iterdir())) == 1 and not list(cache.glob("*.parts"))


@pytest.mark.parametrize("damage", ["truncated images", "garbage header", "kept out of range", "no kept file"])
def test_a_damaged_cache_is_decoded_again(tmp_path, damage):
    files = make_images(tmp_path / "d", 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = decode(files, tmp_path / "cache").images.clone()
    entry = next((tmp_path / "cache").iterdir())
    images, kept = entry / "images.npy", entry / "kept.npy"
    if damage == "truncated images":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "garbage header":
        images.write_bytes(b"PK garbage" + images.read_bytes()[10:])
    elif damage == "kept out of range":
        np.save(kept, np.arange(100, 112, dtype=np.int64))
    else:
        kept.unlink()
    with pytest.warns(UserWarning, match="is damaged"):
        again = decode(files, tmp_path / "cache")
    assert torch.equal(again.images, first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(decode(files, tmp_path / "cache")) == 12  # whole again: read without a warning


def test_an_epoch_reads_batches_from_the_map_and_lets_its_pages_go(tmp_path):
    make_images(tmp_path / "d", 60, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = ImageFolderData(tmp_path / "d", 32, cache_dir=tmp_path / "cache", progress=False)
        train = data.split("training")
    path = mapped_file(train.images)  # carved splits are ranges of rows of one mapped file, not copies
    assert path is not None and path.parent.parent == tmp_path / "cache"
    assert all(mapped_file(data.split(s).images) == path for s in ("validation", "testing"))
    assert sorted(p.name for p in path.parent.iterdir()) == ["images.npy", "kept.npy"]
    assert float(train.images.double().sum()) > 0  # reads every image
    touched = mapping_rss_kb(path)
    assert touched >= train.images.numel() // 1024 - 8  # reading every image maps every page
    seen = torch.cat([b.index for b in iterate_batches(train, 16, device=torch.device("cpu"), shuffle=True,
                                                       generator=torch.Generator().manual_seed(0))])
    assert len(set(seen.tolist())) >= len(train) - 1  # a last batch of one image is left out
    assert mapping_rss_kb(path) < touched // 4  # after the epoch its pages are no longer held by this process


def test_carved_splits_hold_the_carved_images_in_file_order(tmp_path):
    """Decoding in carve order changes where the images lie in the cache, not which images a split holds."""
    make_images(tmp_path / "d", 45, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = ImageFolderData(tmp_path / "d", 16, cache_dir=tmp_path / "cache", progress=False, seed=7)
        listed = data.listed_files("all")
        fresh, _ = decode_images("fresh", listed, 16, 3, False, False)
    labels = np.asarray([int(f.parent.name[1:]) for f in listed])
    for name, positions in carve(labels, data.carved, 7).items():
        split = data.split(name)
        assert split.files == [listed[i].name for i in positions], name
        assert torch.equal(split.images, torch.from_numpy(fresh[positions])), name
        assert torch.equal(split.labels, torch.from_numpy(labels[positions])), name


def test_a_bad_image_leaves_a_gap_in_its_carved_split(tmp_path):
    """The carve is drawn from the listing: an image that fails to decode is missing from its split, the others
    stay where a clean folder puts them."""
    files = make_images(tmp_path / "d", 45, seed=3)
    files[10].write_bytes(b"\xff\xd8\xff broken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = ImageFolderData(tmp_path / "d", 16, skip_bad=True, cache_dir=tmp_path / "cache", progress=False, seed=7)
        splits = {name: data.split(name) for name in ("training", "validation", "testing")}
    listed = data.listed_files("all")
    labels = np.asarray([int(f.parent.name[1:]) for f in listed])
    for name, positions in carve(labels, data.carved, 7).items():
        expected = [listed[i].name for i in positions]
        assert splits[name].files == [f for f in expected if f != files[10].name], name
        assert [f for _, f in splits[name].skipped] == [f for f in expected if f == files[10].name], name
        assert mapped_file(splits[name].images) is not None


def test_a_cache_that_cannot_be_written_decodes_in_memory(tmp_path):
    make_images(tmp_path / "d", 24, seed=2)
    (tmp_path / "file").write_text("in the way")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapped = ImageFolderData(tmp_path / "d", 16, cache_dir=tmp_path / "cache", progress=False)
    with pytest.warns(UserWarning, match="could not write the decode cache"):
        memory = ImageFolderData(tmp_path / "d", 16, cache_dir=tmp_path / "file" / "cache", progress=False)
        train = memory.split("training")
    assert mapped_file(train.images) is None
    for name in ("training", "validation", "testing"):
        assert torch.equal(memory.split(name).images, mapped.split(name).images), name


def resident_pages(tensor: torch.Tensor, row: int) -> list[bool]:
    """Which pages of a mapped tensor's row are in the page cache (mincore)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    start = tensor.data_ptr() + row * tensor.stride(0) * tensor.element_size()
    aligned = start - start % mmap.PAGESIZE
    length = start + tensor[0].numel() - aligned
    vec = (ctypes.c_ubyte * ((length + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    assert libc.mincore(ctypes.c_void_p(aligned), ctypes.c_size_t(length), vec) == 0, ctypes.get_errno()
    return [bool(v & 1) for v in vec]


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="page-cache control is Linux's")
def test_prefetch_reads_exactly_the_rows_asked_for(tmp_path):
    """The rows of the next batch are requested from the disk ahead; the view's offset and stride are honoured."""
    from netcompress.data.mapped import open_mapped, prefetch_rows, release_pages, write_npy

    path = tmp_path / "rows.npy"
    rows = np.random.default_rng(0).integers(0, 256, (40, 3, 64, 64), dtype=np.uint8)  # 12 KB a row
    write_npy(path, rows.shape, [rows])
    os.sync()
    images = open_mapped(path)
    view = images[1::2]  # a carved range or a strided sample: rows 1, 3, 5, ... of the file
    release_pages(images)
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    if any(resident_pages(view, 9)):
        pytest.skip("this file system keeps the file's pages in memory")
    prefetch_rows(view, torch.tensor([3, 15]))
    deadline = time.monotonic() + 5
    while not all(resident_pages(view, 3) + resident_pages(view, 15)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(resident_pages(view, 3)) and all(resident_pages(view, 15))
    assert not any(resident_pages(view, 9)) and not any(resident_pages(images, 11))
    assert torch.equal(view[3], torch.from_numpy(rows[7])) and torch.equal(view[15], torch.from_numpy(rows[31]))
