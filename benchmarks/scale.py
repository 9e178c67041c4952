"""What a run costs as the dataset grows: decode time per image, peak RSS of one training epoch, training images/s.

Builds synthetic image folders (random smooth JPEGs of about 200 px in 10 class folders; splits carved by
netcompress) of each size, drops their files from the page cache (every size decodes from a cold disk),
decodes each into a fresh cache at 96 px in one process, then trains StudentNet for one epoch in another,
whose peak RSS (getrusage) is the figure that must stay bounded: the cache is memory-mapped, so it should not
grow with the dataset. A full epoch at the largest size runs for half an hour, long enough for a shared
machine's speed to drift; so training speed is also sampled side by side: --rounds rounds that each train
one epoch on --sample images of every size, spread over its whole training file (every k-th row, shuffled;
other rows each round, so that a file larger than the page cache is read from the disk as in a full epoch),
and the median of each size is the figure compared. Targets: decode time per image and training images/s
within 1.5x and 20% from the smallest size to the largest, peak RSS under 2 GB at 200,000 images.
Prints a table and writes JSON and a plot. The folders go under --root (a temporary folder by default),
never into the repository; a folder already complete there is reused.

    OMP_NUM_THREADS=1 python benchmarks/scale.py --root /tmp/scale --sizes 5000 50000 200000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from netcompress.plots import pyplot, save_figure
from netcompress.process import usable_cores

DECODE = """
import json, resource, sys, time
import netcompress as nc
t = time.perf_counter()
data = nc.ImageFolderData(sys.argv[1], int(sys.argv[3]), cache_dir=sys.argv[2], progress=False)
n = sum(len(data.split(s)) for s in ("training", "validation", "testing"))
print(json.dumps({"images": n, "decode_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

EPOCH = """
import json, resource, sys, tempfile, time
import torch
import netcompress as nc
torch.set_num_threads(int(sys.argv[4]))
data = nc.ImageFolderData(sys.argv[1], int(sys.argv[3]), cache_dir=sys.argv[2], progress=False)
train, val = data.split("training"), data.split("validation")
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    nc.fit(nc.new_model("studentnet", data.class_names, int(sys.argv[3])), train, epochs=1, val=val,
           batch_size=int(sys.argv[5]), run_dir=tmp, progress=False)
    seconds = time.perf_counter() - t
    metrics = json.loads(open(tmp + "/metrics.jsonl").readline())
print(json.dumps({"train_images": len(train), "epoch_s": seconds, "images_per_second": metrics["images_per_second"],
                  "rss_after_load_mb": loaded,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

SAMPLE = """
import json, sys, tempfile
import torch
import netcompress as nc
torch.set_num_threads(int(sys.argv[4]))
data = nc.ImageFolderData(sys.argv[1], int(sys.argv[3]), cache_dir=sys.argv[2], progress=False)
train = data.split("training")
step = max(1, len(train) // int(sys.argv[6]))  # a view: every step-th row of the mapped file, not a copy
rows = slice(int(sys.argv[7]) % step, None, step)  # each round other rows: none of them read before
sample = nc.Split("sample", train.images[rows], train.labels[rows], train.files[rows], train.class_names)
with tempfile.TemporaryDirectory() as tmp:
    torch.manual_seed(0)
    nc.fit(nc.new_model("studentnet", data.class_names, int(sys.argv[3])), sample, epochs=1,
           batch_size=int(sys.argv[5]), run_dir=tmp, progress=False)
    metrics = json.loads(open(tmp + "/metrics.jsonl").readline())
print(json.dumps({"images": len(sample), "images_per_second": metrics["images_per_second"]}))
"""


def write_image(path: str, seed: int) -> None:
    """One smooth random photo-like JPEG (a small random grid enlarged, with a little noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(180, 260)), int(rng.integers(160, 220))
    grid = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    noisy = np.clip(np.asarray(grid, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(path, quality=85)


def build_folder(root: Path, size: int, classes: int) -> Path:
    """A folder of `size` images in `classes` class folders under root (reused when already complete)."""
    folder, done = root / f"synthetic_{size}", root / f"synthetic_{size}.complete"
    if done.exists():
        return folder
    for c in range(classes):
        (folder / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"class{i % classes:02d}" / f"{i:07d}.jpg") for i in range(size)]
    with ProcessPoolExecutor(usable_cores()) as pool:
        list(pool.map(write_image, paths, range(size), chunksize=256))
    done.touch()
    return folder


def drop_from_page_cache(folder: Path) -> None:
    """Evict a folder's files from the page cache (Linux), so that its decode reads them from the disk."""
    for path in folder.rglob("*.jpg"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_job(code: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(folder: Path, cache: Path, image_size: int, threads: int, batch_size: int) -> dict:
    """Decode a cold folder into a fresh cache, then train one epoch on it: both in processes of their own."""
    if hasattr(os, "posix_fadvise"):
        drop_from_page_cache(folder)
    decoded = run_job(DECODE, folder, cache, image_size)
    os.sync()  # the decode's writes reach the disk before the epoch starts, not during it
    epoch = run_job(EPOCH, folder, cache, image_size, threads, batch_size)
    return {"images": decoded["images"], "decode_ms_per_image": round(1000 * decoded["decode_s"] / decoded["images"], 3),
            "decode_peak_rss_mb": round(decoded["peak_rss_mb"]), "train_images": epoch["train_images"],
            "epoch_s": round(epoch["epoch_s"], 1), "epoch_images_per_second": round(epoch["images_per_second"], 1),
            "rss_after_load_mb": round(epoch["rss_after_load_mb"]), "epoch_peak_rss_mb": round(epoch["peak_rss_mb"])}


def sample_speeds(jobs: list[tuple[Path, Path]], args) -> list[list[float]]:
    """Training images/s on a sample of each size's training file, the sizes taking turns round after round."""
    speeds: list[list[float]] = [[] for _ in jobs]
    for r in range(args.rounds):
        for i, (folder, cache) in enumerate(jobs):
            speeds[i].append(run_job(SAMPLE, folder, cache, args.image_size, args.threads, args.batch_size,
                                     args.sample, r)["images_per_second"])
            print(f"  round {r + 1}: {folder.name} {speeds[i][-1]:.1f} img/s", file=sys.stderr)
    return speeds


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    sizes = [r["images"] for r in rows]
    for ax, key, label in zip(axes, ("decode_ms_per_image", "epoch_peak_rss_mb", "sampled_images_per_second"),
                              ("decode ms / image (cold disk)", "peak RSS of one epoch (MB)", "training images / s")):
        ax.plot(sizes, [r[key] for r in rows], "o-")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("images in the dataset")
        ax.set_title(label)
    axes[2].lines[0].set_label("sampled side by side (median, min-max)")
    axes[2].vlines(sizes, [min(r["sampled_rounds"]) for r in rows], [max(r["sampled_rounds"]) for r in rows])
    axes[2].plot(sizes, [r["epoch_images_per_second"] for r in rows], "s--", label="one full epoch each")
    axes[2].legend(fontsize=8, loc="lower left")
    axes[1].axhline(2048, color="grey", linestyle="--", linewidth=1)
    axes[1].set_ylim(0, max(2300, 1.1 * max(r["epoch_peak_rss_mb"] for r in rows)))
    axes[1].annotate("2 GB target", (sizes[0], 2048), textcoords="offset points", xytext=(0, -12), fontsize=8)
    for ax in axes:
        ax.set_ylim(bottom=0)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000, 200000])
    ap.add_argument("--root", type=Path, default=None, help="where the synthetic folders and caches go "
                    "(default: a temporary folder, removed at the end)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--rounds", type=int, default=3, help="rounds of side-by-side training samples")
    ap.add_argument("--sample", type=int, default=3000, help="training images in each sample")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="netcompress-scale-") as tmp:
        root = args.root or Path(tmp)
        with tempfile.TemporaryDirectory(dir=root, prefix="caches-") as caches:
            rows, jobs = [], []
            for size in sorted(args.sizes):
                print(f"{size} images: building the folder", file=sys.stderr)
                folder, cache = build_folder(root, size, args.classes), Path(caches) / str(size)
                print(f"{size} images: decoding, then one epoch", file=sys.stderr)
                rows.append({"size": size, **measure(folder, cache, args.image_size, args.threads, args.batch_size)})
                jobs.append((folder, cache))
                print(f"  {rows[-1]}", file=sys.stderr)
            print(f"training samples of {args.sample} images, sizes side by side", file=sys.stderr)
            for row, speeds in zip(rows, sample_speeds(jobs, args)):
                row.update(sampled_rounds=speeds, sampled_images_per_second=round(float(np.median(speeds)), 1))
    load = os.getloadavg()
    print(f"\nStudentNet, {args.image_size} px, batch {args.batch_size}, {args.threads} thread(s), "
          f"{usable_cores()} usable cores, load average {load[0]:.1f} at the end; decode from a cold disk\n")
    print("| images | decode ms/img | decode peak RSS MB | train images | epoch s | epoch img/s | "
          f"sampled img/s (median of {args.rounds}) | RSS loaded MB | epoch peak RSS MB |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']:,} | {r['decode_ms_per_image']:.2f} | {r['decode_peak_rss_mb']} | {r['train_images']:,} "
              f"| {r['epoch_s']:.0f} | {r['epoch_images_per_second']:.0f} | {r['sampled_images_per_second']:.0f} "
              f"({min(r['sampled_rounds']):.0f}-{max(r['sampled_rounds']):.0f}) | {r['rss_after_load_mb']} | "
              f"{r['epoch_peak_rss_mb']} |")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"\nfrom {first['images']:,} to {last['images']:,} images: decode time per image x"
              f"{last['decode_ms_per_image'] / first['decode_ms_per_image']:.2f} (target <= 1.5), training img/s x"
              f"{last['sampled_images_per_second'] / first['sampled_images_per_second']:.2f} side by side "
              f"(x{last['epoch_images_per_second'] / first['epoch_images_per_second']:.2f} over full epochs run "
              f"apart; target within 0.8-1.2), epoch peak RSS {last['epoch_peak_rss_mb']} MB (target < 2048 at "
              "200,000 images)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "scale", "image_size": args.image_size, "threads": args.threads,
                                    "batch_size": args.batch_size, "rounds": args.rounds, "sample": args.sample,
                                    "usable_cores": usable_cores(), "load_average_end": [round(x, 2) for x in load],
                                    "machine": platform.machine(), "rows": rows}, indent=2))
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
