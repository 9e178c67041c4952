"""What recomputing BatchNorm statistics after one pruning step is worth, before any fine-tuning.

Prunes a trained model once per method and rate, keeps the stale running statistics
(`recalibrate=0`, the course's way) or recomputes them from 1,024 training images (the default),
and measures validation accuracy of both. Prints a table and writes JSON.

    python benchmarks/recalibration.py runs/food101_10/teacher/best.safetensors
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from netcompress import ImageFolderData, count_parameters, evaluate, load, prune, spec_of
from netcompress.process import tune_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a trained model file with BatchNorm layers")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/food101_10"))
    ap.add_argument("--methods", default="l1,l2,taylor,slim")
    ap.add_argument("--rates", default="0.9,0.8,0.5", help="fractions of every layer's channels kept")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/recalibration.json"))
    args = ap.parse_args()
    tune_allocator()
    model = load(args.model)
    data = ImageFolderData(args.data, spec_of(model).input_size)
    train = data.split("training")
    unpruned = evaluate(model, data, "validation")["accuracy"]
    rows = []
    print(f"unpruned: val {unpruned:.3f}, {count_parameters(model):,} params\n")
    print("| method | kept | params | val, stale statistics | val, recomputed |\n|---|---:|---:|---:|---:|")
    for method in args.methods.split(","):
        for rate in (float(r) for r in args.rates.split(",")):
            acc = {}
            for recalibrate in (0, 1024):
                pruned = prune(model, method=method, rate=rate, recalibrate=recalibrate, data=train)
                acc[recalibrate] = evaluate(pruned, data, "validation")["accuracy"]
            rows.append({"method": method, "kept": rate, "params": count_parameters(pruned),
                         "val_stale": round(acc[0], 5), "val_recalibrated": round(acc[1024], 5)})
            print(f"| {method} | {rate} | {rows[-1]['params']:,} | {acc[0]:.3f} | {acc[1024]:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "BatchNorm recalibration after one pruning step", "model": str(args.model),
        "arch": spec_of(model).arch, "unpruned_val": round(unpruned, 5), "rows": rows, "torch": torch.__version__,
        "machine": platform.machine()}, indent=2))


if __name__ == "__main__":
    main()
