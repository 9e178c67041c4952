"""Does channel pruning make the network faster? Original vs pruned, side by side in one run.

Models (random weights: speed does not depend on their values): StudentNet at full width, at
half width by the course's rule (widths 3..6 halved, as `prune --method slim` gives), at half
width in every layer (as `prune --method l2` gives), and resnet18 with half its channels pruned
by Torch-Pruning. Latency is the median of interleaved rounds (each round times every model
once), so a noisy neighbour slows all models alike. Prints a table and writes JSON.

    python benchmarks/pruning_speed.py --image-size 96
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from netcompress import count_macs, count_parameters, latency_ms, new_model, prune
from netcompress.models.studentnet import course_widths_at
from netcompress.process import tune_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pruning_speed.json"))
    args = ap.parse_args()
    tune_allocator()
    torch.manual_seed(0)
    classes, size = [str(i) for i in range(10)], args.image_size
    full = [16, 32, 64, 128, 256, 256, 256, 256]
    resnet = new_model("resnet18", classes, size)
    resnet_pruned = prune(resnet, method="l2", rate=0.5)
    models = {
        "studentnet": new_model("studentnet", classes, size),
        "studentnet, half width (course rule)": new_model("studentnet", classes, size,
                                                          widths=course_widths_at(full, 0.5, 1)),
        "studentnet, half width (every layer)": new_model("studentnet", classes, size, widths=[w // 2 for w in full]),
        "resnet18": resnet,
        "resnet18, half channels (l2)": resnet_pruned,
    }
    times: dict[str, dict[int, list[float]]] = {name: {1: [], 64: []} for name in models}
    for _ in range(args.rounds):
        for batch in (1, 64):
            for name, model in models.items():
                repeats = 20 if batch == 1 else 3
                times[name][batch].append(latency_ms(model, size, batch, warmup=2, repeats=repeats))
    rows = []
    for name, model in models.items():
        rows.append({"model": name, "params": count_parameters(model), "macs": count_macs(model, size),
                     "ms_batch1": round(statistics.median(times[name][1]), 3),
                     "ms_batch64": round(statistics.median(times[name][64]), 2)})
    for row in rows:
        base = rows[0] if row["model"].startswith("studentnet") else rows[3]
        row["speedup_batch64"] = round(base["ms_batch64"] / row["ms_batch64"], 2)
        row["speedup_batch1"] = round(base["ms_batch1"] / row["ms_batch1"], 2)
    print(f"\n{size}x{size} input, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds\n")
    print("| model | params | MACs | ms @1 | ms @64 | speedup @1 | speedup @64 |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['macs']:,} | {r['ms_batch1']} | {r['ms_batch64']} | "
              f"{r['speedup_batch1']}x | {r['speedup_batch64']}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "pruning speed", "image_size": size, "torch": torch.__version__,
                                    "threads": torch.get_num_threads(), "machine": platform.machine(),
                                    "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
