"""Beyond one dataset: `auto` against the plain baseline on datasets the recipes were never tuned on.

The suite is made from what is here, no download: the sample data downsampled to 32 px, a grayscale copy, 50
training images per class, a 5-class subset, and scikit-learn's bundled 8x8 digits written out as image folders.
On each, with the same byte budget and the same time:

- the plain baseline: StudentNet trained on the labels alone for as many epochs as fit in the time (one epoch
  timed first), then stored with the mixed-precision codec that fits the budget (`quantize --codec kbit --bits 8
  --entropy --budget B`): what a user does without netcompress's search;
- `netcompress auto DATA --target-bytes B --time T`.

Validation chooses; test is measured once for each of the two. Target (issue: the best model for the user's own
data): auto at least as accurate on test as the baseline on every dataset, within the test split's noise (one
standard error of the difference, paired on the same images), and better by at least 3 points on half of them.
Prints a table, writes benchmarks/results/generality.json; the datasets go under --root (never into the
repository) and are reused when complete, as are finished baselines and auto runs (a rerun goes on where it
stopped).

    OMP_NUM_THREADS=1 python benchmarks/generality.py --data ../shared/data/food101_10 --root /tmp/generality \
        --target-bytes 100000 --time 10m
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

import netcompress as nc
from netcompress.cli.auto import seconds_of
from netcompress.pipeline.auto import AutoConfig, auto
from netcompress.pipeline.budgets import standard_error
from netcompress.process import machine_state

SPLITS = ("training", "validation", "testing")


def _images(root: Path):
    """(split, class folder name, file) of every image of a dataset in the training/validation/testing layout,
    classes as folders or as the course's "<label>_<n>.jpg" names."""
    for split in SPLITS:
        for f in sorted((root / split).rglob("*")):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                label = f.parent.name if f.parent != root / split else f.name.split("_")[0]
                yield split, label, f


def _write(dst: Path, items, convert) -> Path:
    """Write (split, label, image) items as a class-folder dataset, atomically (a folder that exists is complete)."""
    if dst.exists():
        return dst
    tmp = dst.with_name(dst.name + ".partial")
    for split, label, image in items:
        folder = tmp / split / label
        folder.mkdir(parents=True, exist_ok=True)
        convert(image).save(folder / f"{len(list(folder.iterdir())):05d}.png")
    tmp.rename(dst)
    return dst


def build_suite(data: Path, root: Path) -> dict[str, Path]:
    """The suite's datasets under `root`, made once."""
    root.mkdir(parents=True, exist_ok=True)
    items = list(_images(data))
    labels = sorted({label for _, label, _ in items})

    def opened(size=None, mode="RGB"):
        def convert(f):
            im = Image.open(f).convert(mode)
            return im.resize((size, size), Image.BILINEAR) if size else im
        return convert

    per_class: dict = {}
    fifty = []
    for split, label, f in items:
        key = (split, label)
        per_class[key] = per_class.get(key, 0) + 1
        if split != "training" or per_class[key] <= 50:
            fifty.append((split, label, f))
    suite = {
        "32px": _write(root / "32px", items, opened(32)),
        "grayscale": _write(root / "grayscale", items, opened(96, "L")),
        "50-per-class": _write(root / "50-per-class", fifty, opened(96)),
        "5-classes": _write(root / "5-classes", [i for i in items if i[1] in labels[:5]], opened(96)),
        "digits-8px": _digits(root / "digits-8px"),
    }
    return suite


def _digits(dst: Path) -> Path:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), split 60/20/20 by a fixed permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    cut = [int(0.6 * len(order)), int(0.8 * len(order))]
    split_of = {i: s for s, part in zip(SPLITS, np.split(order, cut)) for i in part}
    pixels = (digits.images * (255 / 16)).astype(np.uint8)
    return _write(dst, [(split_of[i], str(digits.target[i]), pixels[i]) for i in range(len(order))],
                  lambda a: Image.fromarray(a, "L"))


def baseline(data: Path, out: Path, target_bytes: int, seconds: float) -> dict:
    """StudentNet on the labels alone for the epochs that fit the time, then the mixed-precision codec at the budget
    (kept in OUT/baseline.json: a rerun with the same settings reads it)."""
    done = out / "baseline.json"
    if done.exists():
        found = json.loads(done.read_text())
        if (found["target_bytes"], found["time_seconds"]) == (target_bytes, seconds):
            return found
    started = time.perf_counter()
    ds = nc.ImageFolderData(data, _size(data), progress=False)
    nc.fit(nc.new_model("studentnet", ds.class_names, ds.image_size, ds.channels), ds, nc.TrainConfig(epochs=1),
           run_dir=out / "probe", device="cpu", progress=False)
    row = json.loads((out / "probe" / "metrics.jsonl").read_text().splitlines()[0])
    epoch = row["train_seconds"] + row.get("eval_seconds", 0.0)  # one epoch's work, without the start-up around it
    epochs = max(1, min(200, int((seconds - (time.perf_counter() - started)) * 0.9 / epoch)))
    model = nc.fit(nc.new_model("studentnet", ds.class_names, ds.image_size, ds.channels), ds,
                   nc.TrainConfig(epochs=epochs), run_dir=out / "train", device="cpu", progress=False)
    stored = nc.quantize(model, nc.QuantConfig(codec="kbit", bits=8, entropy=True, budget=target_bytes), ds,
                         device="cpu", progress=False)
    path = stored.save(out / "baseline.ncq")
    decoded = stored.decode()
    found = {"epochs": epochs, "image_size": ds.image_size, "file_bytes": stored.nbytes, "file": str(path),
             "val": nc.evaluate(decoded, ds, "validation", device="cpu")["accuracy"],
             "test": nc.evaluate(decoded, ds, "testing", device="cpu")["accuracy"],
             "wall_seconds": round(time.perf_counter() - started, 1), "target_bytes": target_bytes,
             "time_seconds": seconds}
    done.write_text(json.dumps(found, indent=2))
    return found


def auto_row(record: dict) -> dict:
    """What the table shows of an auto run: its choice, its time against the plan, and the evidence."""
    chosen, plan = record["chosen"], record["plan"]
    return {"chosen": chosen["name"], "file_bytes": chosen["file_bytes"], "val": chosen["val_accuracy"],
            "test": chosen["test_accuracy"], "wall_seconds": record["wall_seconds"],
            "estimated_seconds": plan["estimated_seconds"], "planning_seconds": plan["planning_seconds"],
            "late": record["late"], "teaching": record["teaching"], "baseline_in_run": record["baseline"],
            "validation": record["validation"], "flagged": record.get("flagged", [])}


def paired_noise(data: Path, baseline_file: Path, auto_file: Path) -> dict:
    """How the two chosen files differ on the same test images: the images only one of them gets right, and one
    standard error of the difference of their accuracies, paired (the noise the gain must beat: two models scored
    on the same images disagree on fewer of them than two independent test sets would)."""
    right = []
    for file in (baseline_file, auto_file):
        model = nc.load(file)
        ds = nc.ImageFolderData(data, nc.spec_of(model).input_size, progress=False)  # at the size it was made for
        labels = ds.split("testing").labels
        right.append(nc.predict(model, ds, "testing", device="cpu").argmax(1) == labels)
    n, baseline_only, auto_only = len(labels), int((right[0] & ~right[1]).sum()), int((~right[0] & right[1]).sum())
    variance = baseline_only + auto_only - (auto_only - baseline_only) ** 2 / n
    return {"baseline_only": baseline_only, "auto_only": auto_only, "standard_error": round(variance ** 0.5 / n, 4)}


def _size(data: Path) -> int:
    from netcompress.pipeline.auto import native_size

    return native_size(nc.ImageFolderData(data, 32, progress=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/food101_10"))
    ap.add_argument("--root", type=Path, default=Path("/tmp/generality"), help="where the suite is built and run")
    ap.add_argument("--target-bytes", type=int, default=100_000)
    ap.add_argument("--time", default="10m", help="time for each of auto and the baseline, on each dataset")
    ap.add_argument("--only", nargs="*", help="datasets of the suite to run (default: all)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/generality.json"))
    args = ap.parse_args()
    seconds = seconds_of(args.time)
    suite = build_suite(args.data, args.root / "datasets")
    rows = []
    for name, path in suite.items():
        if args.only and name not in args.only:
            continue
        base = baseline(path, args.root / "runs" / name / "baseline", args.target_bytes, seconds)
        record = auto(path, args.root / "runs" / name / "auto", AutoConfig(target_bytes=args.target_bytes,
                                                                          time_s=seconds), device="cpu")
        mine = auto_row(record)
        test_images = len(nc.ImageFolderData(path, 32, progress=False).split("testing"))
        paired = paired_noise(path, Path(base["file"]), args.root / "runs" / name / "auto" / record["chosen"]["file"])
        rows.append({"dataset": name, "baseline": base, "auto": mine, "test_images": test_images,
                     "test_standard_error": round(standard_error(base["test"], test_images), 4), "paired": paired,
                     "gain_points": round(100 * (mine["test"] - base["test"]), 1),
                     "not_worse": mine["test"] >= base["test"] - paired["standard_error"]})
    print("| dataset | baseline: bytes, val, test, wall | auto: chosen | bytes | val | test | wall | gain, points "
          "(±1 s.e. paired; of one) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        b, a = r["baseline"], r["auto"]
        print(f"| {r['dataset']} | {b['file_bytes']:,}, {b['val']:.3f}, {b['test']:.3f}, "
              f"{b['wall_seconds'] / 60:.1f} min | {a['chosen']} | {a['file_bytes']:,} | {a['val']:.3f} | "
              f"{a['test']:.3f} | {a['wall_seconds'] / 60:.1f} min (plan {a['estimated_seconds'] / 60:.1f}"
              f"{', late' if a['late'] else ''}) | {r['gain_points']:+.1f} "
              f"(±{100 * r['paired']['standard_error']:.1f}; ±{100 * r['test_standard_error']:.1f}) |")
    better = sum(r["gain_points"] >= 3 for r in rows)
    print(f"\nnever worse (within 1 paired s.e.): {all(r['not_worse'] for r in rows)}; "
          f">= 3 points better on {better} of {len(rows)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "generality", "target_bytes": args.target_bytes,
                                     "time_seconds": seconds, "rows": rows, "machine": machine_state(),
                                     "processor": platform.processor()}, indent=2))


if __name__ == "__main__":
    main()
