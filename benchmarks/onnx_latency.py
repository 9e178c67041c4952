"""CPU latency side by side: PyTorch fp32 eager vs ONNX Runtime fp32 vs ONNX Runtime int8 (static QDQ).

All three run in one process on the same inputs, interleaved round by round (so a busy machine
slows all of them alike); each figure is the median of every timed call after warm-up. Also
reports each runtime's validation accuracy and file size. Prints a markdown table and writes JSON.

    python benchmarks/onnx_latency.py --model runs/kd/best.safetensors --data ../shared/data/food101_10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

import netcompress as nc
from netcompress.formats.onnx import OnnxModel
from netcompress.process import tune_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model file (.safetensors)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/food101_10"))
    ap.add_argument("--calibration", type=int, default=256, help="training images that calibrate int8")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for PyTorch and ONNX Runtime alike")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    ap.add_argument("--calls", type=int, default=20, help="timed calls per runtime per round (batch 1)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/onnx_latency.json"))
    args = ap.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    model = nc.load(args.model)
    spec = nc.spec_of(model)
    data = nc.ImageFolderData(args.data, spec.input_size, progress=False)
    tmp = Path(tempfile.mkdtemp())
    fp32_path = nc.export_onnx(model, tmp / "fp32.onnx")
    int8_path = nc.export_onnx(model, tmp / "int8.onnx", int8=True, calibration=data,
                               calibration_images=args.calibration)
    model = model.to(memory_format=torch.channels_last)  # eager PyTorch's faster layout on CPU
    runtimes = {
        "PyTorch fp32 eager": (model, args.model.stat().st_size),
        "ONNX Runtime fp32": (OnnxModel(fp32_path, args.threads), fp32_path.stat().st_size),
        "ONNX Runtime int8": (OnnxModel(int8_path, args.threads), int8_path.stat().st_size),
    }
    accuracy = {name: nc.evaluate(net, data, device="cpu")["accuracy"] for name, (net, _) in runtimes.items()}

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        x = torch.rand(batch, 3, spec.input_size, spec.input_size).contiguous(memory_format=torch.channels_last)
        calls = max(2, args.calls // batch) if batch > 1 else args.calls
        times: dict[str, list[float]] = {name: [] for name in runtimes}
        with torch.inference_mode():
            for name, (net, _) in runtimes.items():  # warm-up
                for _ in range(5):
                    net(x)
            for _ in range(args.rounds):
                for name, (net, _) in runtimes.items():
                    for _ in range(calls):
                        t0 = time.perf_counter()
                        net(x)
                        times[name].append(time.perf_counter() - t0)
        eager = statistics.median(times["PyTorch fp32 eager"])
        for name, (_, size) in runtimes.items():
            ms = statistics.median(times[name]) * 1000
            rows.append({"runtime": name, "batch": batch, "median_ms": round(ms, 4), "calls": len(times[name]),
                         "speedup_vs_eager": round(eager * 1000 / ms, 2), "bytes": size,
                         "val_accuracy": accuracy[name]})
    print(f"\nmodel {args.model} ({spec.arch}, {spec.input_size}px), {args.threads} thread(s), "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}\n")
    print("| runtime | batch | median ms | vs eager | bytes | val accuracy |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['runtime']} | {r['batch']} | {r['median_ms']:.3f} | {r['speedup_vs_eager']:.2f}x | "
              f"{r['bytes']:,} | {r['val_accuracy']:.4f} |")
    for p in (fp32_path, int8_path):
        p.unlink()
    tmp.rmdir()
    result = {"benchmark": "onnx latency", "model": str(args.model), "arch": spec.arch, "input_size": spec.input_size,
              "threads": args.threads, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
              "machine": platform.machine(), "processor": platform.processor(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
