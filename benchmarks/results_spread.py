"""How much the results table moves between runs: each budget's choice and accuracy in every run side by side.

Reads the JSON that `results_table.py` writes, one file per run (another seed: `--set seed=1 --out RUN --json
FILE`; the same seed again: a rerun, which moves too, since training on a CPU with several threads is not bit-exact),
and prints per byte budget each run's chosen model, validation and test accuracy, and their mean and range;
writes benchmarks/results/food101_10_spread.json.

    python benchmarks/results_spread.py benchmarks/results/food101_10-run1.json benchmarks/results/food101_10.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="results_table.py JSON files, one per run")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/food101_10_spread.json"))
    args = ap.parse_args()
    runs = [json.loads(path.read_text()) for path in args.runs]
    budgets = sorted({b["budget_bytes"] for run in runs for b in run["budgets"]}, reverse=True)
    rows = []
    for budget in budgets:
        picks = [next((b for b in run["budgets"] if b["budget_bytes"] == budget), None) for run in runs]
        found = [p for p in picks if p is not None]
        row = {"budget_bytes": budget, "runs": picks}
        for split in ("val", "test"):
            values = [p[split] for p in found if p.get(split) is not None]
            row[split] = ({"mean": round(statistics.fmean(values), 4), "min": min(values), "max": max(values)}
                          if values else None)
        rows.append(row)
    seeds = [f"seed {run.get('seed', 0)}" + (" (from scratch)" if run.get("from_scratch") else "") for run in runs]
    print("| budget | " + " | ".join(f"run {i + 1}: {s}" for i, s in enumerate(seeds))
          + " | test mean | test range (points) |")
    print("|---|" + "---|" * len(runs) + "---:|---:|")
    for row in rows:
        cells = [f"{p['chosen']}: {p['bytes']:,} B, val {p['val']:.3f}, test {_acc(p.get('test'))}" if p else "-"
                 for p in row["runs"]]
        test = row["test"]
        spread = f"{100 * (test['max'] - test['min']):.1f}" if test else "-"
        print(f"| ≤ {row['budget_bytes']:,} B | " + " | ".join(cells)
              + f" | {_acc(test['mean'] if test else None)} | {spread} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "results spread", "runs": [str(p) for p in args.runs],
                                     "budgets": rows}, indent=2))


def _acc(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
