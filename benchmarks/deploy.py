"""Deployment benchmark: `nc.deploy` on StudentNet, the first 8/6/4 blocks of EfficientNet-Lite0 and ResNet18,
every export target x precision measured as the file that ships, with each artifact's batch-1 speed-up over
ONNX Runtime fp32 of the same model (timed together in the same interleaved rounds).

Each model is trained a few epochs on the dataset first (plain cross-entropy, `--epochs`), so that validation
accuracy and its drop mean something; `--models` takes trained model files instead. Prints a markdown table and
writes JSON. Run it on an otherwise idle machine, one thread per runtime:

    OMP_NUM_THREADS=1 python benchmarks/deploy.py --data ../shared/data/food101_10 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import netcompress as nc
from netcompress.process import machine_state, usable_cores

MODELS = {  # name -> (registered model, its arguments)
    "studentnet": ("studentnet", {}),
    "lite0-8": ("efficientnet_lite0", {"blocks": 8}),
    "lite0-6": ("efficientnet_lite0", {"blocks": 6}),
    "lite0-4": ("efficientnet_lite0", {"blocks": 4}),
    "resnet18": ("resnet18", {}),
}
REFERENCE = "onnx fp32 on ort"


def trained(name: str, data, epochs: int, seed: int):
    """A fresh model trained on every core; timing then runs on one thread."""
    arch, kwargs = MODELS[name]
    torch.manual_seed(seed)
    model = nc.new_model(arch, data.class_names, data.image_size, **kwargs)
    torch.set_num_threads(usable_cores())
    try:
        return nc.fit(model, data, epochs=epochs, seed=seed) if epochs else model
    finally:
        torch.set_num_threads(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/food101_10"))
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--models", nargs="+", default=list(MODELS),
                    help=f"names ({', '.join(MODELS)}) trained here, or trained model files")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of a model given by name")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("runs/deploy-bench"), help="folder for the artifacts")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/deploy.json"))
    ap.add_argument("--reprint", action="store_true", help="print the tables of --json again, measuring nothing")
    args = ap.parse_args()
    if args.reprint:
        saved = json.loads(args.json.read_text())
        _print(saved["rows"], saved["batch"])
        return
    torch.set_num_threads(1)
    data = nc.ImageFolderData(args.data, args.image_size)
    config = nc.DeployConfig(max_drop=args.max_drop, batch=args.batch, rounds=args.rounds)
    results, started = [], time.perf_counter()
    for name in args.models:
        path = Path(name)
        model = nc.load(path) if path.suffix else trained(name, data, args.epochs, args.seed)
        label = path.stem if path.suffix else name
        deployment = nc.deploy(model, data, args.out / label, config)
        results.append({"model": label, **deployment.to_dict()})
        print(f"{label}: chosen {deployment.chosen.name if deployment.chosen else None}", flush=True)
    rows = [row for result in results for row in _rows(result, args.batch)]
    _print(rows, args.batch)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "deploy", "data": str(args.data), "image_size": args.image_size, "epochs": args.epochs,
        "seed": args.seed, "threads": 1, "batch": args.batch, "rounds": args.rounds, "max_drop": args.max_drop,
        "machine": machine_state(),
        "wall_s": round(time.perf_counter() - started, 1), "rows": rows, "models": results}, indent=2))
    print(f"\nwrote {args.json}")


def _print(rows: list[dict], batch: int) -> None:
    """Every artifact, then per model: ONNX Runtime fp32, the fastest int8 file, and deploy's choice."""
    print(f"\n| model | artifact | bytes | val acc | drop (points) | agrees with fp32 | b1 ms | x vs {REFERENCE} "
          f"| b{batch} ms | memory MB | chosen |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['artifact']} | {r['bytes']:,} | {r['val_accuracy']:.3f} | {r['drop']:+.2f} | "
              f"{r['agreement']:.3f} | {_ms(r['b1_ms'])} | {_ratio(r['speedup'])} | {_ms(r['bn_ms'])} | "
              f"{'' if r['memory_mb'] is None else round(r['memory_mb'])} | {'yes' if r['chosen'] else r['why_not']} |")
    print(f"\n| model | {REFERENCE}: b1 ms, val acc | fastest int8 file | b1 ms | x | drop (points) | agrees "
          "| deploy's choice | x |\n|---|---|---|---:|---:|---:|---:|---|---:|")
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        ref = next(r for r in mine if r["artifact"] == REFERENCE)
        int8 = min((r for r in mine if " int8" in r["artifact"] and r["b1_ms"]), key=lambda r: r["b1_ms"])
        chosen = next((r for r in mine if r["chosen"]), None)
        print(f"| {model} | {_ms(ref['b1_ms'])}, {ref['val_accuracy']:.3f} | {int8['artifact']} | "
              f"{_ms(int8['b1_ms'])} | {_ratio(int8['speedup'])} | {int8['drop']:+.2f} | {int8['agreement']:.3f} | "
              f"{chosen['artifact'] if chosen else 'none'} | {_ratio(chosen['speedup']) if chosen else ''} |")


def _rows(result: dict, batch: int) -> list[dict]:
    artifacts = result["artifacts"]
    reference = next((a for a in artifacts if a["name"] == REFERENCE), None)
    base = reference and reference["latency_ms"].get("ort@1")
    rows = []
    for a in artifacts:
        b1 = a["latency_ms"].get(f"{a['runtime']}@1")
        rows.append({"model": result["model"], "artifact": a["name"], "bytes": a["file_bytes"],
                     "val_accuracy": a["val_accuracy"], "drop": a["details"]["drop_points"],
                     "agreement": a["details"]["agreement"], "b1_ms": b1,
                     "bn_ms": a["latency_ms"].get(f"{a['runtime']}@{batch}"),
                     "speedup": round(base / b1, 2) if base and b1 else None,
                     "memory_mb": a["details"].get("memory_mb"), "chosen": a["name"] == result["chosen"],
                     "why_not": a["why_not"]})
    return rows


def _ms(value) -> str:
    return "busy" if value is None else f"{value:.3f}"


def _ratio(value) -> str:
    return "" if value is None else f"{value:.2f}x"


if __name__ == "__main__":
    main()
