"""Markdown table of `netcompress lowrank` runs, with latency re-measured side by side.

Latency in a run's log is measured once per stage, minutes apart; on a busy machine that is
noise. This script measures every run's original and fine-tuned model in alternation (the
same rounds, the same load) and reports the median over rounds of each model's median.

    python benchmarks/lowrank_table.py "energy 0.8=runs/lr80" "2.8M params=runs/lr2m8" --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import netcompress as nc
from netcompress.measure.cost import ms as nc_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (a `netcompress lowrank --out` directory)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-latency", action="store_true", help="Keep the logged latencies.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs = []
    for item in args.runs:
        label, _, folder = item.rpartition("=")
        log = json.loads((Path(folder) / "lowrank.json").read_text())
        runs.append((label or folder, Path(folder), {r["stage"]: r for r in log["rows"]}))

    models = {}  # model file -> (model, input size); the first run's original stands for every original
    original = runs[0][1] / runs[0][2]["original"]["model_file"]
    models["original"] = original
    for label, folder, rows in runs:
        last = rows.get("finetuned", rows["factorized"])
        models[label] = folder / last["model_file"]
    latency = {name: {1: [], 64: []} for name in models}
    if not args.no_latency:
        loaded = {name: nc.load(path) for name, path in models.items()}
        for _ in range(args.rounds):
            for name, model in loaded.items():
                size = nc.spec_of(model).input_size
                latency[name][1].append(nc.latency_ms(model, size, 1, repeats=20, warmup=5))
                latency[name][64].append(nc.latency_ms(model, size, 64, repeats=3, warmup=1))

    def ms(name: str, batch: int, row: dict) -> str:
        values = latency[name][batch]
        return f"{statistics.median(values):.2f}" if values else nc_ms(row["latency_ms"].get(f"torch@{batch}"))

    print("| setting | parameters | bytes | MACs | ms @1 | ms @64 | val acc before fine-tuning | val acc after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    first = runs[0][2]["original"]
    print(f"| original | {first['params']:,} | {first['file_bytes']:,} | {first['macs']:,} | "
          f"{ms('original', 1, first)} | {ms('original', 64, first)} | "
          f"{first['val_accuracy']:.4f} | — |")
    for label, _, rows in runs:
        before, after = rows["factorized"], rows.get("finetuned")
        last = after or before
        tuned = f"{after['val_accuracy']:.4f}" if after else "—"
        print(f"| {label} | {last['params']:,} | {last['file_bytes']:,} | {last['macs']:,} | "
              f"{ms(label, 1, last)} | {ms(label, 64, last)} | "
              f"{before['val_accuracy']:.4f} | {tuned} |")


if __name__ == "__main__":
    main()
