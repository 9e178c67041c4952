"""Storage codecs side by side: bytes on disk and validation accuracy of one model under every codec.

Rows: the fp32 model file, the course's 16/8-bit pickles (protocol 3), fp16, the course's int8
min-max, per-channel int8, k-bit and k-means at 2-6 bits (with and without --entropy: lossless,
so both share one accuracy), mixed precision under byte budgets and, with --finetune, the same
after quantization-aware fine-tuning. Every size is a file written to disk and measured there.
Prints a markdown table and writes JSON.

    python benchmarks/quantize_table.py --model runs/kd/best.safetensors --data ../shared/data/food101_10
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import netcompress as nc
from netcompress import QuantConfig
from netcompress.compress.bit_allocation import WIDTHS, allocate_bits, sensitivity
from netcompress.schedule import Finetune, finetune_quantized
from netcompress.data.split import calibration_images
from netcompress.formats.course import load_course_pkl, save_course_pkl
from netcompress.process import tune_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model file (.safetensors)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/food101_10"))
    ap.add_argument("--bits", default="2,3,4,5,6", help="widths for kbit and kmeans")
    ap.add_argument("--budgets", default="80000,100000,125000,150000", help="byte budgets for mixed precision")
    ap.add_argument("--calibration", type=int, default=256, help="training images for the budget's sensitivity")
    ap.add_argument("--finetune", type=int, default=0, help="epochs of quantization-aware fine-tuning (0: none)")
    ap.add_argument("--finetune-budgets", default="80000,100000", help="budgets that also get fine-tuned rows")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/quantize_table.json"))
    args = ap.parse_args()
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = nc.load(args.model)
    spec = nc.spec_of(model)
    data = nc.ImageFolderData(args.data, spec.input_size, progress=False)
    val = data.split("validation")

    def accuracy(net) -> float:
        return nc.evaluate(net, val, device="cpu")["accuracy"]

    fp32 = accuracy(model)
    rows = [{"codec": "fp32 (safetensors)", "bits": 32, "entropy": False, "bytes": args.model.stat().st_size,
             "val_accuracy": fp32}]
    tmp = Path(tempfile.mkdtemp())
    if (spec.arch or "").startswith("studentnet") and not spec.overrides:
        for bits in (16, 8):
            path = save_course_pkl(model, tmp / f"course{bits}.pkl", bits, protocol=3)
            rows.append({"codec": "course pickle (protocol 3)", "bits": bits, "entropy": False,
                         "bytes": path.stat().st_size,
                         "val_accuracy": accuracy(load_course_pkl(path, input_size=spec.input_size))})

    def add(cfg: QuantConfig, label: str | None = None, net=model) -> None:
        sizes = {}
        for entropy in (False, True):
            path = nc.quantize(net, replace(cfg, entropy=entropy)).save(tmp / f"q{entropy}.ncq")
            sizes[entropy] = path.stat().st_size
        acc = accuracy(nc.load(path))
        bits = "/".join(map(str, cfg.tensor_bits.values())) if cfg.tensor_bits else cfg.bits
        for entropy, size in sizes.items():
            rows.append({"codec": label or cfg.codec, "bits": bits, "entropy": entropy, "bytes": size,
                         "val_accuracy": acc})

    add(QuantConfig("fp16"))
    add(QuantConfig("int8-minmax"))
    add(QuantConfig("int8-channel"))
    widths = [int(b) for b in args.bits.split(",")]
    for codec in ("kbit", "kmeans"):
        for bits in widths:
            add(QuantConfig(codec, bits))
    train = data.split("training")
    images = calibration_images(train, args.calibration)
    table = sensitivity(model, QuantConfig("kbit", 8, min_elements=0), images, list(WIDTHS), progress=False)
    for budget in [int(b) for b in args.budgets.split(",") if b]:
        for entropy in (False, True):
            try:
                cfg = allocate_bits(model, QuantConfig("kbit", 8, entropy=entropy), images, budget, table=table)
            except nc.NetcompressError as exc:
                print(f"budget {budget:,}{' with lzma' if entropy else ''}: {exc}")
                continue
            path = nc.quantize(model, cfg).save(tmp / "budget.ncq")
            rows.append({"codec": f"kbit, budget {budget:,}", "bits": "/".join(map(str, cfg.tensor_bits.values())),
                         "entropy": entropy, "bytes": path.stat().st_size, "val_accuracy": accuracy(nc.load(path))})
    if args.finetune:
        for budget in [int(b) for b in args.finetune_budgets.split(",") if b]:
            cfg = allocate_bits(model, QuantConfig("kbit", 8, finetune_epochs=args.finetune), images, budget,
                                table=table)
            add(cfg, f"kbit, budget {budget:,} + {args.finetune} epochs QAT",
                finetune_quantized(model, cfg, Finetune(train, None, progress=False)))
        for bits in (2, 3):
            cfg = QuantConfig("kbit", bits, finetune_epochs=args.finetune)
            add(cfg, f"kbit + {args.finetune} epochs QAT", finetune_quantized(model, cfg, Finetune(train, None, progress=False)))

    shutil.rmtree(tmp)
    print(f"\nmodel {args.model} ({spec.arch}, {spec.input_size}px), validation {len(val)} images, "
          f"fp32 accuracy {fp32:.4f}\n")
    print("| codec | bits | entropy | bytes on disk | val accuracy | vs fp32 |\n|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['codec']} | {r['bits']} | {'lzma' if r['entropy'] else '-'} | {r['bytes']:,} | "
              f"{r['val_accuracy']:.4f} | {100 * (r['val_accuracy'] - fp32):+.1f} |")
    within = [r for r in rows if r["val_accuracy"] >= fp32 - 0.01]
    smallest = min(within, key=lambda r: r["bytes"])
    under = [r for r in rows if r["bytes"] <= 100_000]
    print(f"\nsmallest within 1 point of fp32: {smallest['codec']} bits {smallest['bits']} "
          f"{'lzma' if smallest['entropy'] else ''} -> {smallest['bytes']:,} bytes, {smallest['val_accuracy']:.4f}")
    if under:
        best = max(under, key=lambda r: (r["val_accuracy"], -r["bytes"]))
        print(f"best accuracy under 100,000 bytes: {best['codec']} bits {best['bits']} "
              f"{'lzma' if best['entropy'] else ''} -> {best['bytes']:,} bytes, {best['val_accuracy']:.4f}")
    result = {"benchmark": "storage codecs", "model": str(args.model), "arch": spec.arch,
              "input_size": spec.input_size, "validation_images": len(val), "fp32_accuracy": fp32,
              "torch": torch.__version__, "machine": platform.machine(),
              "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
