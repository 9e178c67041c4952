"""What folding BatchNorm into the conv before it saves: k-bit + LZMA file sizes with and without it.

Models whose blocks call their layers by attribute (EfficientNet's MBConv) fold only since the pairs
are found by running the model; the sizes are those of the .ncq files the codecs write. Prints a
markdown table and writes JSON.

    python benchmarks/batchnorm_folding.py runs/food101_10/student*/best.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import netcompress as nc
from netcompress.compress.codecs import fold_batchnorm
from netcompress.compress.quant_config import prepared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path, nargs="+", help="model files (.safetensors)")
    ap.add_argument("--bits", default="4,3", help="k-bit widths")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/batchnorm_folding.json"))
    args = ap.parse_args()
    rows = []
    print("| model | params | BatchNorms folded | bits | bytes unfolded | bytes folded | saved |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in args.models:
        model = nc.load(path)
        spec = nc.spec_of(model)
        folded = fold_batchnorm(prepared(model, nc.QuantConfig("fp16")),
                                torch.rand(1, spec.channels, spec.input_size, spec.input_size))
        for bits in map(int, args.bits.split(",")):
            sizes = {fold: nc.quantize(model, nc.QuantConfig("kbit", bits, entropy=True, fold_bn=fold),
                                       progress=False).nbytes for fold in (False, True)}
            row = {"model": str(path), "params": nc.count_parameters(model), "folded_pairs": folded, "bits": bits,
                   "bytes_unfolded": sizes[False], "bytes_folded": sizes[True]}
            rows.append(row)
            print(f"| {path} | {row['params']:,} | {folded} | {bits} | {sizes[False]:,} | {sizes[True]:,} | "
                  f"{1 - sizes[True] / sizes[False]:.1%} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "batchnorm folding", "torch": torch.__version__, "rows": rows},
                                   indent=2))


if __name__ == "__main__":
    main()
