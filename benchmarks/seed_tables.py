"""The seed report's three experiments rerun, each of its tables printed with the report's figures beside ours.

Runs recipes/seed_report.toml (the report's models and the course's schedules, at 96 px on a CPU):
- Question 1: the distilled "big model" (the seed's own 9-block StudentNet), the same pruned to about a quarter of
  its bytes (as the seed's pruned model was) and quantized to the course's 8 bits: bytes of the files the course
  wrote (legacy torch state_dict, 8-bit pickle, protocol 3) and validation accuracy of those files as loaded.
- Question 3: the course's channel pruning at rates 0.95 and 0.975, parameters against validation accuracy, one
  line per rate (seed_q3.png), beside the course's own log for rate 0.95.
- Question 4: plain vs depthwise & pointwise vs group convolution at about 1 MB (250,000 parameters), 150 epochs
  each: validation accuracy, whether the report's ranking holds beyond one standard error, and accuracy per epoch
  (seed_q4.png). At 256 px, the course's size, where a GPU is there (`--device auto`), else at the recipe's size.

The parts run in their own folders, so they can run side by side, one thread each, and each resumes where it
stopped: `--part hw7` (questions 1 and 3), `--part arch` (question 4); a call without --part runs what is missing,
prints every table and writes benchmarks/results/seed_tables.json and the plots beside it.

    OMP_NUM_THREADS=1 python benchmarks/seed_tables.py --part hw7 &
    OMP_NUM_THREADS=1 python benchmarks/seed_tables.py --part arch &
    wait; python benchmarks/seed_tables.py
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

import netcompress as nc
from netcompress.files import atomic_write_text
from netcompress.formats.course import export_course_state_dict, save_course_pkl
from netcompress.pipeline.artifact import Artifact
from netcompress.pipeline.budgets import standard_error
from netcompress.pipeline.compare_arch import compare
from netcompress.pipeline.recipe import load_recipe
from netcompress.pipeline.report import plot_pruning, read_jsonl
from netcompress.pipeline.stages import run_recipe
from netcompress.plots import pyplot, save_figure
from netcompress.process import resolve_device, tune_allocator

# The seed report's figures (Food-11: 11 classes, 3,430 validation images, 256 px, a GPU).
REPORT_Q1 = {"big model": (918_038, 0.7871), "pruned": (228_878, 0.1843), "quantized (8-bit)": (233_234, 0.7645)}
REPORT_Q4 = {"plain": (224_011, 0.6804), "depthwise-pointwise": (247_179, 0.7603), "group": (218_651, 0.7073)}
REPORT_VAL_IMAGES = 3_430
COURSE_LOG_095 = [0.8131, 0.8015, 0.7851, 0.7685, 0.7402, 0.7093]  # the course's rate-0.95 log, width 1 .. 0.774
Q1_PRUNE_RATE, Q3_RATES = 0.82, (0.95, 0.975)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=Path("recipes/seed_report.toml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override, e.g. teacher.file=runs/food101_10/teacher/best.safetensors")
    ap.add_argument("--out", type=Path, default=Path("runs/seed"), help="folder of the two parts' runs")
    ap.add_argument("--part", choices=["all", "hw7", "arch"], default="all")
    ap.add_argument("--arch-image-size", type=int, default=0,
                    help="question 4's input size; 0: 256 on a GPU, else the recipe's data.image_size")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/seed_tables.json"))
    args = ap.parse_args()
    tune_allocator()
    device = resolve_device(args.device)
    recipe = load_recipe(args.recipe, args.overrides)
    results = {}
    if args.part in ("all", "hw7"):
        results["hw7"] = timed(args.out / "hw7", lambda: hw7_tables(recipe, args.out / "hw7", device))
        print_hw7(results["hw7"])
    if args.part in ("all", "arch"):
        size = args.arch_image_size or (256 if torch.device(device).type == "cuda" else recipe.data.image_size)
        results["arch"] = timed(args.out / "arch", lambda: arch_table(recipe, size, args.out / "arch", device))
        print_arch(results["arch"])
    if args.part == "all":
        args.json.parent.mkdir(parents=True, exist_ok=True)
        plot_pruning([args.out / "hw7" / s for s in results["hw7"]["q3"]["runs"]], args.json.with_name("seed_q3.png"),
                     "Question 3: parameters vs validation accuracy", results["hw7"]["val_images"])
        plot_epochs(results["arch"], args.json.with_name("seed_q4.png"))
        args.json.write_text(json.dumps({"benchmark": "seed tables", "recipe": str(args.recipe),
                                         "overrides": args.overrides, "device": str(device),
                                         "threads": torch.get_num_threads(), **results}, indent=2))
        print(f"\nwrote {args.json}, {args.json.with_name('seed_q3.png')}, {args.json.with_name('seed_q4.png')}")


def timed(folder: Path, work) -> dict:
    """Runs a part and adds this call's wall time to the part's record (a resumed part sums its calls). The record
    is rewritten every minute while the part runs, so a call that is stopped still counts to within a minute."""
    record_file = folder / "seed_tables_wall.json"
    earlier = json.loads(record_file.read_text())["calls_seconds"] if record_file.exists() else []
    started, stopped = time.perf_counter(), threading.Event()

    def note() -> list[float]:
        walls = [*earlier, round(time.perf_counter() - started, 1)]
        atomic_write_text(record_file, json.dumps({"calls_seconds": walls}))
        return walls

    def every_minute() -> None:
        while not stopped.wait(60):
            note()

    folder.mkdir(parents=True, exist_ok=True)
    threading.Thread(target=every_minute, daemon=True).start()
    try:
        result = work()
    finally:
        stopped.set()
    walls = note()
    return {**result, "wall_seconds": round(sum(walls), 1), "calls_seconds": walls}


def recipe_data(recipe, size: int) -> nc.ImageFolderData:
    d = recipe.data
    return nc.ImageFolderData(d.root, size, channels=d.channels, labels_csv=d.labels or None,
                              val_fraction=d.val_fraction, test_from=d.test_from, seed=recipe.seed)


def hw7_tables(recipe, out: Path, device) -> dict:
    """Questions 1 and 3 from one run of the recipe without its architecture comparison."""
    summary = run_recipe(replace(recipe, compare_arch=replace(recipe.compare_arch, run=False)), out, device)
    artifacts = [Artifact.from_dict(a) for a in summary["artifacts"]]
    data = recipe_data(recipe, recipe.data.image_size)
    student = next(a for a in artifacts if a.stage == "student")
    runs = {p.rate: p.stage for p in recipe.prune}
    pruned = [a for a in artifacts if a.stage == runs[Q1_PRUNE_RATE]][-1]  # its last step

    course = out / "course-files"
    course.mkdir(exist_ok=True)
    big, small = nc.load(out / student.file), nc.load(out / pruned.file)
    files = {"big model": (export_course_state_dict(big, course / "big_model.pt"), big),
             "pruned": (export_course_state_dict(small, course / "pruned.pt"), small),
             "quantized (8-bit)": (save_course_pkl(big, course / "big_model_8bit.pkl", bits=8), big)}
    q1 = []
    for column, (path, model) in files.items():
        loaded = nc.load(path, model=model)  # the course's file as read back: its bytes are the ones measured
        q1.append({"model": column, "file": str(path), "bytes": path.stat().st_size,
                   "params": nc.count_parameters(loaded),
                   "val": round(nc.evaluate(loaded, data, "validation", device=device)["accuracy"], 4),
                   "report_bytes": REPORT_Q1[column][0], "report_val": REPORT_Q1[column][1]})
    q3 = {}
    for rate in Q3_RATES:
        rows = read_jsonl(out / runs[rate] / "pruning.jsonl")
        q3[str(rate)] = [{"step": r["step"], "params": r["params"], "val": r["val_accuracy"]} for r in rows]
    teacher = recipe.teacher.file or f"{recipe.teacher.model}, {recipe.teacher.epochs} epochs from scratch"
    return {"teacher": teacher, "student_epochs": recipe.student.epochs, "image_size": recipe.data.image_size,
            "val_images": summary["val_images"], "q1": q1,
            "q3": {"runs": [runs[r] for r in Q3_RATES], "rates": q3, "course_log_0.95": COURSE_LOG_095}}


def arch_table(recipe, size: int, out: Path, device) -> dict:
    """Question 4: the three convolution families at the recipe's budget, trained alike."""
    c = recipe.compare_arch
    data = recipe_data(recipe, size)
    (cfg,) = c.configs(recipe.seed)
    rows = compare(data, cfg, out, device=device, params=c.budget_params, groups=c.groups)
    images = len(data.split("validation"))
    table = []
    for r in rows:
        family = r["architecture"]
        curve = [m["val_accuracy"] for m in read_jsonl(out / family / "metrics.jsonl")]
        table.append({"architecture": family, "params": r["params"], "macs": r["macs"], "val": r["val_accuracy"],
                      "standard_error": round(standard_error(r["val_accuracy"], images), 4),
                      "best_epoch": curve.index(max(curve)) + 1, "val_per_epoch": curve,
                      "report_params": REPORT_Q4[family][0], "report_val": REPORT_Q4[family][1]})
    return {"image_size": size, "epochs": c.epochs, "budget_params": c.budget_params, "val_images": images,
            "rows": table, "ranking": ranking(table)}


def ranking(rows: list[dict]) -> dict:
    """Ours against the report's order, each neighbouring gap against one standard error of a difference."""
    ours = sorted(rows, key=lambda r: -r["val"])
    gaps = [{"pair": f"{a['architecture']} > {b['architecture']}", "points": round(100 * (a["val"] - b["val"]), 1),
             "noise_points": round(100 * (a["standard_error"] ** 2 + b["standard_error"] ** 2) ** 0.5, 1)}
            for a, b in zip(ours, ours[1:])]
    report = sorted(rows, key=lambda r: -r["report_val"])
    return {"ours": [r["architecture"] for r in ours], "report": [r["architecture"] for r in report],
            "same_order": [r["architecture"] for r in ours] == [r["architecture"] for r in report],
            "gaps": gaps, "beyond_noise": all(g["points"] > g["noise_points"] for g in gaps)}


def print_hw7(r: dict) -> None:
    images = r["val_images"]
    print(f"\nteacher: {r['teacher']}; student distilled {r['student_epochs']} epochs at {r['image_size']} px")
    print(f"\nQuestion 1 (validation: {images:,} images here, ±1 s.e. about "
          f"{100 * standard_error(0.7, images):.1f} points; the report's: {REPORT_VAL_IMAGES:,} Food-11 images)\n")
    print("| | " + " | ".join(q["model"] for q in r["q1"]) + " |\n|---|" + "---:|" * len(r["q1"]))
    print("| report: bytes | " + " | ".join(f"{q['report_bytes']:,}" for q in r["q1"]) + " |")
    print("| ours: bytes (the course's files) | " + " | ".join(f"{q['bytes']:,}" for q in r["q1"]) + " |")
    print("| ours: parameters | " + " | ".join(f"{q['params']:,}" for q in r["q1"]) + " |")
    print("| report: val | " + " | ".join(f"{q['report_val']:.2%}" for q in r["q1"]) + " |")
    print("| ours: val | " + " | ".join(f"{q['val']:.2%}" for q in r["q1"]) + " |")
    print("\nQuestion 3: validation accuracy after each pruning step (step 0: the student)\n")
    rates = r["q3"]["rates"]
    print("| step | " + " | ".join(f"rate {k}: params | val" for k in rates) + " | the course's log, rate 0.95 |")
    print("|---:|" + "---:|---:|" * len(rates) + "---:|")
    for step, course in enumerate(r["q3"]["course_log_0.95"]):
        cells = [f"{rows[step]['params']:,} | {rows[step]['val']:.3f}" if step < len(rows) else "| "
                 for rows in rates.values()]
        print(f"| {step} | " + " | ".join(cells) + f" | {course:.4f} |")
    print(f"\nquestions 1 and 3: {r['wall_seconds'] / 60:.1f} min wall over {len(r['calls_seconds'])} call(s)")


def print_arch(r: dict) -> None:
    print(f"\nQuestion 4: {r['budget_params']:,} parameters, {r['epochs']} epochs, {r['image_size']} px "
          f"(validation: {r['val_images']:,} images)\n")
    print("| | params (report) | val (report) | params (ours) | MACs (ours) | val (ours) ± 1 s.e. | best epoch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in r["rows"]:
        print(f"| {row['architecture']} | {row['report_params']:,} | {row['report_val']:.4f} | {row['params']:,} | "
              f"{row['macs'] / 1e6:.1f} M | {row['val']:.4f} ± {row['standard_error']:.4f} | {row['best_epoch']} |")
    k = r["ranking"]
    gaps = "; ".join(f"{g['pair']} by {g['points']} points (noise {g['noise_points']})" for g in k["gaps"])
    print(f"\nranking: ours {' > '.join(k['ours'])}, the report's {' > '.join(k['report'])}: "
          f"{'the same' if k['same_order'] else 'different'}; {gaps}")
    print(f"question 4: {r['wall_seconds'] / 60:.1f} min wall over {len(r['calls_seconds'])} call(s)")


def plot_epochs(r: dict, path: Path) -> Path:
    """Validation accuracy per epoch of question 4's three networks, the report's final figure as a dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, color in zip(r["rows"], ["#888", "#2a7", "#37c"]):
        curve = row["val_per_epoch"]
        epochs, noise = range(1, len(curve) + 1), row["standard_error"]
        ax.plot(epochs, curve, color=color, label=f"{row['architecture']} ({row['params']:,})")
        ax.fill_between(epochs, [a - noise for a in curve], [a + noise for a in curve], color=color, alpha=0.15)
        ax.axhline(row["report_val"], color=color, linestyle="--", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"Question 4 at {r['image_size']} px (bands: ±1 standard error; dashed: the report's final)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
