"""The README's results table from scratch: runs recipes/food101_10.toml and tabulates what it measured.

Every model of the run (bytes on disk, validation accuracy, test accuracy where the run measured it:
the teacher, the student and each budget's choice), then the most accurate model within each byte
budget of the recipe's [evaluate] table. Then the run's deployment files (the [deploy] stage) timed again
all together at batch 1 on one thread, each on its own runtime, beside the course's StudentNet exported
to ONNX (fp32, random weights: latency does not depend on them) as the reference: every file's latency
and its ratio to that reference, the accuracy-latency frontier, and for each latency target of
docs/targets.md the most accurate file within it (on validation), its test accuracy measured once.
Prints markdown tables and the wall time; writes JSON. A run folder made earlier is reused stage by
stage (its wall time is then not the from-scratch one, and the JSON says so; each stage's own wall time, as
it ran, is in the JSON beside it).

    python benchmarks/results_table.py --out runs/food101_10
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import netcompress as nc
from netcompress.measure.latency import LatencyConfig, latency_across
from netcompress.pipeline.artifact import Artifact
from netcompress.pipeline.recipe import load_recipe
from netcompress.pipeline.records import stage_wall_seconds
from netcompress.pipeline.stages import run_recipe
from netcompress.process import machine_state, resolve_device, tune_allocator

# docs/targets.md: a deployable model at >= 0.70 test within 0.20 ms, and at >= 0.60 within 0.12 ms (batch 1, 1 thread)
LATENCY_TARGETS = ((0.70, 0.20), (0.60, 0.12))
REFERENCE = "studentnet (course), onnx fp32 on ort"


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
    stage_seconds = stage_wall_seconds(args.out)
    print(f"\nwall time {wall / 60:.1f} min ({'from scratch' if from_scratch else 'reusing finished stages'}, "
          f"{torch.get_num_threads()} threads); the stages' own wall times, each as it ran, sum to "
          f"{sum(stage_seconds.values()) / 60:.1f} min")
    deployed = [a for a in records if a.stage == "deploy"]
    deployment = _deployable(deployed, args.out, recipe.data.root) if deployed else None
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "results table", "recipe": str(args.recipe), "overrides": args.overrides, "seed": recipe.seed,
        "run_dir": str(args.out),
        "from_scratch": from_scratch, "wall_seconds": round(wall, 1), "stage_wall_seconds": stage_seconds,
        "threads": torch.get_num_threads(),
        "models": models, "budgets": budgets, "deployable": deployment, "torch": torch.__version__,
        "machine": platform.machine(), "processor": platform.processor(), "machine_state": machine_state()},
        indent=2))


def _deployable(deployed: list[Artifact], run_dir: Path, root: str) -> dict:
    """Every deployment file timed together with the reference at batch 1 on one thread; the frontier; the most
    accurate file within each latency target, with its test accuracy."""
    files = {a.name: (nc.load(run_dir / a.file), a.runtime) for a in deployed}
    example = nc.spec_of(next(iter(files.values()))[0])
    reference = nc.new_model("studentnet", example.class_names, 96, example.channels)
    timed = latency_across({REFERENCE: (reference, "ort"), **files}, LatencyConfig(threads=1, rounds=7), batch=1)
    ref_ms = timed[REFERENCE].median_ms
    own_fp32 = {a.details.get("source"): timed[a.name].median_ms for a in deployed
                if (a.format, a.precision, a.runtime) == ("onnx", "fp32", "ort")}
    rows = sorted(({"file": a.name, "path": a.file, "runtime": a.runtime, "bytes": a.file_bytes,
                    "input_size": nc.spec_of(files[a.name][0]).input_size, "val": a.val_accuracy,
                    "drop_points": a.details.get("drop_points"), "own_fp32_ms": own_fp32.get(a.details.get("source")),
                    "ms": timed[a.name].median_ms, "clock": timed[a.name].clock} for a in deployed),
                  key=lambda r: (r["ms"] is None, r["ms"] or 0))
    best = -1.0
    for r in rows:
        r["ratio_to_reference"] = round(r["ms"] / ref_ms, 3) if r["ms"] is not None and ref_ms else None
        r["speedup_over_own_fp32"] = round(r["own_fp32_ms"] / r["ms"], 3) if r["ms"] and r["own_fp32_ms"] else None
        r["frontier"] = r["ms"] is not None and r["val"] > best
        best = max(best, r["val"]) if r["ms"] is not None else best
    print(f"\nreference: {REFERENCE} (random weights, 96 px): "
          f"{'busy' if ref_ms is None else f'{ref_ms:.3f} ms'} at batch 1, 1 thread")
    print("\n| deployment file | px | bytes | val | drop (points) | ms @1 | x reference | speed-up over own ONNX fp32 "
          "| frontier |\n|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ms = "busy" if r["ms"] is None else f"{r['ms']:.3f}"
        ratio = "" if r["ratio_to_reference"] is None else f"{r['ratio_to_reference']:.2f}"
        speedup = "" if r["speedup_over_own_fp32"] is None else f"{r['speedup_over_own_fp32']:.2f}"
        drop = "" if r["drop_points"] is None else f"{r['drop_points']:.1f}"
        print(f"| {r['file']} | {r['input_size']} | {r['bytes']:,} | {r['val']:.3f} | {drop} | {ms} | {ratio} | "
              f"{speedup} | {'yes' if r['frontier'] else ''} |")
    targets = []
    for accuracy, ms in LATENCY_TARGETS:
        within = [r for r in rows if r["ms"] is not None and r["ms"] <= ms]
        chosen = max(within, key=lambda r: r["val"]) if within else None
        test = None
        if chosen is not None:
            model = files[chosen["file"]][0]
            data = nc.ImageFolderData(root, nc.spec_of(model).input_size)
            test = nc.evaluate(model, data, "testing", device="cpu")["accuracy"]
        fastest = rows[0] if rows and rows[0]["ms"] is not None else None
        targets.append({"target_test": accuracy, "target_ms": ms, "chosen": chosen and chosen["file"],
                        "ms": chosen and chosen["ms"], "val": chosen and chosen["val"], "test": test,
                        "met": test is not None and test >= accuracy,
                        "fastest": fastest and {"file": fastest["file"], "ms": fastest["ms"], "val": fastest["val"]}})
    print("\n| target | most accurate file within it (on validation) | ms @1 | val | test | met |\n"
          "|---|---|---:|---:|---:|---|")
    for t in targets:
        if t["chosen"] is None:
            f = t["fastest"]
            print(f"| >= {t['target_test']:.2f} test at <= {t['target_ms']} ms | none runs within it (fastest: "
                  f"{f['file']}, {f['ms']:.3f} ms, val {f['val']:.3f}) | | | | no |")
        else:
            print(f"| >= {t['target_test']:.2f} test at <= {t['target_ms']} ms | {t['chosen']} | {t['ms']:.3f} | "
                  f"{t['val']:.3f} | {t['test']:.3f} | {'yes' if t['met'] else 'no'} |")
    return {"reference": {"name": REFERENCE, "ms": ref_ms}, "files": rows, "targets": targets}


def _acc(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
