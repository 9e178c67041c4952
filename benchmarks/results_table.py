"""The README's results table from scratch: runs recipes/food101_10.toml and tabulates what it measured.

Every model of the run (bytes on disk, validation accuracy, test accuracy where the run measured it:
the teacher, the student and each budget's choice), then the most accurate model within each byte
budget of the recipe's [evaluate] table. Prints markdown tables and the wall time; writes JSON. A
run folder made earlier is reused stage by stage (its wall time is then not the from-scratch one,
and the JSON says so).

    python benchmarks/results_table.py --out runs/food101_10
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from netcompress.pipeline.artifact import Artifact
from netcompress.pipeline.recipe import load_recipe
from netcompress.pipeline.stages import run_recipe
from netcompress.process import resolve_device, tune_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=Path("recipes/food101_10.toml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override, KEY=VALUE")
    ap.add_argument("--out", type=Path, default=Path("runs/food101_10"), help="the run folder")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/food101_10.json"))
    args = ap.parse_args()
    tune_allocator()
    recipe = load_recipe(args.recipe, args.overrides)
    from_scratch = not (args.out / "recipe.json").exists()
    started = time.perf_counter()
    summary = run_recipe(recipe, args.out, resolve_device(args.device))
    wall = time.perf_counter() - started

    test = summary["test"]
    records = [Artifact.from_dict(a) for a in summary["artifacts"]]
    models = [{"model": a.name, "format": a.label, "params": a.params, "bytes": a.file_bytes, "val": a.val_accuracy,
               "test": test.get(a.name)} for a in records]
    by_name = {m["model"]: m for m in models}
    budgets = [{"budget_bytes": b["target_bytes"], "chosen": b["chosen"], **{k: by_name[b["chosen"]][k]
                                                                             for k in ("bytes", "val", "test")}}
               for b in summary["budgets"]]
    print("| model | bytes (format) | val | test |\n|---|---|---:|---:|")
    for m in models:
        print(f"| {m['model']} | {m['bytes']:,} ({m['format']}) | {m['val']:.3f} | {_acc(m['test'])} |")
    print("\n| budget | most accurate within it (on validation) | bytes | val | test |\n|---|---|---:|---:|---:|")
    for b in budgets:
        print(f"| ≤ {b['budget_bytes']:,} B | {b['chosen']} | {b['bytes']:,} | {b['val']:.3f} | {_acc(b['test'])} |")
    print(f"\nwall time {wall / 60:.1f} min ({'from scratch' if from_scratch else 'reusing finished stages'}, "
          f"{torch.get_num_threads()} threads)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "results table", "recipe": str(args.recipe), "overrides": args.overrides, "run_dir": str(args.out),
        "from_scratch": from_scratch, "wall_seconds": round(wall, 1), "threads": torch.get_num_threads(),
        "models": models, "budgets": budgets, "torch": torch.__version__, "machine": platform.machine(),
        "processor": platform.processor()}, indent=2))


def _acc(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
