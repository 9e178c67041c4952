"""Latency on a busy machine: every installed runtime's batch-1, one-thread figure for small models, measured on a
quiet machine and again beside a job that keeps every core busy, side by side.

A preempted thread's CPU clock stops, so the runtimes that compute on the calling thread (torch, ort, executorch,
litert at one thread) report that thread's CPU time when the wall clock is disturbed ("thread CPU"): the figure
should stay within 20% of the quiet one (issue: deploy, "latency figures under load"). OpenVINO computes on its
own threads and can only say "too busy". Models: random weights (the time does not depend on them); the course's
StudentNet at 96 and 64 px and the first 4 blocks of EfficientNet-Lite0 at 96 px. Run it on an otherwise idle
machine (the first half is the quiet figure); prints a table, writes benchmarks/results/latency_under_load.json.

    python benchmarks/latency_under_load.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import netcompress as nc
from netcompress.measure.latency import LatencyConfig, latency_across, list_runtimes
from netcompress.process import machine_state

HOG = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a)
"""

MODELS = {  # name -> (architecture, arguments, input size)
    "studentnet 96 px": ("studentnet", {}, 96),
    "studentnet 64 px": ("studentnet", {}, 64),
    "lite0 4 blocks 96 px": ("efficientnet_lite0", {"blocks": 4, "pretrained": False}, 96),
}


def measure(models: dict, runtimes: list[str], rounds: int) -> dict:
    """Every model on every runtime, all in the same interleaved rounds: name -> runtime -> Latency as a dict."""
    pairs = {f"{name} | {rt}": (model, rt) for name, model in models.items() for rt in runtimes}
    found = latency_across(pairs, LatencyConfig(batch=1, threads=1, rounds=rounds))
    table: dict = {}
    for key, lat in found.items():
        name, rt = key.split(" | ")
        table.setdefault(name, {})[rt] = {"median_ms": lat.median_ms, "clock": lat.clock, "note": lat.note,
                                          "spread": round(lat.spread, 3)}
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=LatencyConfig().rounds, help="interleaved rounds per measurement")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/latency_under_load.json"))
    args = ap.parse_args()
    classes = [str(i) for i in range(10)]
    models = {name: nc.new_model(arch, classes, size, **kwargs) for name, (arch, kwargs, size) in MODELS.items()}
    runtimes = list_runtimes(installed=True)
    at_start = machine_state()
    quiet = measure(models, runtimes, args.rounds)
    cores = os.cpu_count() or 1
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(cores)], env=dict(os.environ, OMP_NUM_THREADS=str(cores)))
    try:
        time.sleep(3)  # the job at full speed first
        busy_state = machine_state()
        loaded = measure(models, runtimes, args.rounds)
    finally:
        hog.kill()
        hog.wait()

    def cell(m: dict) -> str:
        if m["median_ms"] is None:
            return m["note"] or "no figure"
        return f"{m['median_ms']:.3f}" + (" (thread CPU)" if m["clock"] != "wall" else "")

    rows = []
    print(f"| model | runtime | quiet ms | beside a {cores}-thread job: ms | ratio | within 20% |")
    print("|---|---|---:|---:|---:|---|")
    for name in models:
        for rt in runtimes:
            q, b = quiet[name][rt], loaded[name][rt]
            ratio = b["median_ms"] / q["median_ms"] if q["median_ms"] and b["median_ms"] else None
            within = ratio is not None and abs(ratio - 1) <= 0.20
            rows.append({"model": name, "runtime": rt, "quiet": q, "loaded": b,
                         "ratio": None if ratio is None else round(ratio, 3), "within_20_percent": within})
            print(f"| {name} | {rt} | {cell(q)} | {cell(b)} | {'' if ratio is None else f'{ratio:.2f}x'} | "
                  f"{'yes' if within else 'no'} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "latency_under_load", "rows": rows, "rounds": args.rounds,
                                     "machine_quiet": at_start, "machine_loaded": busy_state,
                                     "processor": platform.processor()}, indent=2))


if __name__ == "__main__":
    main()
