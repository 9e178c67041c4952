"""How much quantization-aware fine-tuning moves from seed to seed, for several schedules, on one fp32 model.

The results table's smallest budgets rest on 3-bit QAT, and a rerun of the same recipe moved its validation
accuracy by 4 points. Here the fp32 model is fixed and only the seed of the fine-tuning varies (its data order
and augmentation), so the spread is QAT's own: for each schedule (`--schedules EPOCHS:LR ...`), the validation and
test accuracy of the stored file per seed, their mean, standard deviation and range. Prints a table and writes
benchmarks/results/qat_stability.json.

    OMP_NUM_THREADS=1 python benchmarks/qat_stability.py --model runs/food101_10/student-blocks6/best.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

import netcompress as nc
from netcompress.process import resolve_device
from netcompress.schedule import Finetune, finetune_quantized
from netcompress.schedule.qat import qat_training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a trained fp32 model file")
    ap.add_argument("--data", default="../shared/data/food101_10")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--schedules", nargs="+", default=["3:3e-4", "3:3e-4:3"], metavar="EPOCHS:LR[:AVERAGE]",
                    help="QAT schedules compared: epochs, learning rate and, where given, the epochs a moving "
                         "average of the weights spans (QuantConfig.finetune_average)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/qat_stability.json"))
    args = ap.parse_args()
    device = resolve_device(args.device)
    model = nc.load(args.model)
    data = nc.ImageFolderData(args.data, nc.spec_of(model).input_size)
    fp32 = {split: nc.evaluate(model, data, split, device=device)["accuracy"] for split in ("validation", "testing")}
    started, results = time.perf_counter(), []
    for schedule in args.schedules:
        epochs, lr, average = (schedule.split(":") + ["0"])[:3]
        cfg = nc.QuantConfig(codec="kbit", bits=args.bits, entropy=True, finetune_epochs=int(epochs),
                             finetune_lr=float(lr), finetune_average=float(average))
        runs = []
        for seed in args.seeds:
            finetune = Finetune.on(data, replace(qat_training(cfg), seed=seed), device=device)
            stored = nc.quantize(finetune_quantized(model, cfg, finetune), replace(cfg, finetune_epochs=0))
            decoded = stored.decode()
            runs.append({"seed": seed, "bytes": stored.nbytes,
                         **{split: round(nc.evaluate(decoded, data, split, device=device)["accuracy"], 4)
                            for split in ("validation", "testing")}})
            print(f"{schedule} seed {seed}: {runs[-1]}", flush=True)
        results.append({"schedule": schedule, "epochs": int(epochs), "lr": float(lr),
                        "average_epochs": float(average), "runs": runs,
                        **{split: spread([r[split] for r in runs]) for split in ("validation", "testing")}})
    print(f"\n{args.bits}-bit QAT of {args.model} (fp32: val {fp32['validation']:.3f}, test {fp32['testing']:.3f}), "
          f"seeds {args.seeds}\n")
    print("| epochs:lr[:average] | val mean | val sd | val range | test mean | test sd | test range |")
    print("|---|" + "---:|" * 6)
    for r in results:
        v, t = r["validation"], r["testing"]
        print(f"| {r['schedule']} | {v['mean']:.3f} | {v['sd']:.3f} | {v['min']:.3f}-{v['max']:.3f} | "
              f"{t['mean']:.3f} | {t['sd']:.3f} | {t['min']:.3f}-{t['max']:.3f} |")
    wall = time.perf_counter() - started
    print(f"\nwall {wall / 60:.1f} min, {torch.get_num_threads()} thread(s)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "qat stability", "model": str(args.model), "bits": args.bits,
                                     "seeds": args.seeds, "fp32": fp32, "schedules": results,
                                     "wall_seconds": round(wall, 1), "threads": torch.get_num_threads()}, indent=2))


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4), "sd": round(statistics.stdev(values), 4) if len(values) > 1
            else 0.0, "min": min(values), "max": max(values)}


if __name__ == "__main__":
    main()
