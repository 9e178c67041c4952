"""What a compressed model costs: parameters, MACs, bytes on disk and CPU/GPU latency."""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import NetcompressError
from ..process import model_device
from ..spec import spec_of
from .evaluate import classification_metrics, predict_logits
from .latency import Latency, consistent, get_runtime, latency


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, counted like torchsummary (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def layer_table(model: nn.Module, input_size: int | None = None, device: torch.device | str = "cpu") -> str:
    """torchinfo's per-layer table (layer, output shape, parameters) at batch 1 (default size: the spec's), with
    one MAC count, count_macs's: torchinfo's own also counts BatchNorm and misses same-padding convs, and prints
    its unit as "Units.MEGABYTES" on recent Pythons."""
    from torchinfo import summary

    size = _input_size(model, input_size)
    text = str(summary(model, input_size=(1, spec_of(model).channels, size, size), device=device, verbose=0,
                       col_names=("output_size", "num_params"), row_settings=("var_names",)))
    macs = f"Total MACs (convolutions and linear layers): {count_macs(model, size):,}"
    return "\n".join(macs if line.startswith("Total mult-adds") else line for line in text.splitlines())


def _input_size(model: nn.Module, input_size: int | None) -> int:
    """`input_size`, else the one the model's spec records."""
    size = input_size or spec_of(model).input_size
    if not size:
        raise NetcompressError("input_size: the model records no input size; pass input_size=N (the image side)")
    return size


def count_macs(model: nn.Module, input_size: int | None = None) -> int:
    """Multiply-accumulates of the convolutions and linear layers in one forward pass at batch 1, on
    `input_size` x `input_size` images (default: the size the model's spec records).

    Counted with forward hooks on the layers themselves, so convs with their own forward code
    (EfficientNet-Lite's same-padding convs, which torchinfo misses) count too.
    """
    total = 0

    def conv(m: nn.Conv2d, _inputs, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m: nn.Linear, _inputs, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    size = _input_size(model, input_size)
    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    device = model_device(model)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, spec_of(model).channels, size, size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total


def latency_ms(model: nn.Module, input_size: int | None = None, batch_size: int = 1, *,
               device: torch.device | str = "cpu", warmup: int = 10, repeats: int = 50, channels_last: bool = True,
               min_seconds: float = 0.0) -> float:
    """Median wall time of one forward pass in milliseconds, after warm-up (default size: the spec's)."""
    input_size = _input_size(model, input_size)
    device = torch.device(device)
    was_training = model.training
    model = model.eval().to(device)
    x = torch.rand(batch_size, spec_of(model).channels, input_size, input_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[float] = []
    with torch.inference_mode():  # only around the calls: parameters must not become inference tensors
        for _ in range(warmup):
            model(x)
        sync()
        start = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
    model.train(was_training)
    return statistics.median(times) * 1000


def zero_fraction(model: nn.Module) -> float:
    """Share of exact zeros among conv and linear weights (what unstructured pruning leaves)."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


@dataclass(frozen=True)
class Measurement:
    """One latency every measured model reports: a heading for tables, and where it is measured (threads None:
    as many as torch uses when it is measured)."""

    heading: str
    runtime: str
    batch: int
    threads: int | None = 1


# what every measured model reports, by key: deployment at batch 1 on one thread, and eager throughput at batch 64
LATENCIES = {"ort@1": Measurement("ms @1 ORT", "ort", 1), "torch@1": Measurement("ms @1 torch", "torch", 1),
             "torch@64": Measurement("ms @64 torch", "torch", 64, threads=None)}
LATENCY_HEADINGS = {key: m.heading for key, m in LATENCIES.items()}


def ms(value: float | str | None) -> str:
    """A latency for a table or a log line: milliseconds, or why there is no figure."""
    if value is None:
        return "busy"
    return value if isinstance(value, str) else f"{value:.3f}"


def latency_texts(row: dict) -> dict[str, str]:
    """A row's latencies by LATENCIES key as text: milliseconds, 'busy', 'n/a' (a runtime that does not run the
    model: see `latencies`), or the row's reason for having none."""
    found = row.get("latency_ms", {})
    return {key: found if isinstance(found, str) else ms(found[key]) if key in found else "n/a" for key in LATENCIES}


def latencies(model: nn.Module, **timing) -> dict[str, Latency]:
    """`model`'s latency on each of LATENCIES whose runtime runs it (see `Runtime.runs`), measured with `timing`'s
    LatencyConfig fields (rounds, seconds, ...). A smaller batch cannot honestly take longer than a larger one on
    the same runtime: when it did, the machine was busy and neither figure is reported (`consistent`)."""
    found = {key: latency(model, runtime=m.runtime, batch=m.batch, threads=m.threads or torch.get_num_threads(),
                          **timing)
             for key, m in LATENCIES.items() if get_runtime(m.runtime).runs(model)}
    for small, large in itertools.permutations(found, 2):
        if LATENCIES[small].runtime == LATENCIES[large].runtime and LATENCIES[small].batch < LATENCIES[large].batch:
            found[small], found[large] = consistent(found[small], found[large])
    return found


def measure_latencies(model: nn.Module, rounds: int = 5) -> dict[str, float | None]:
    """Milliseconds per call on each of LATENCIES (None where the machine was too busy to measure)."""
    return {key: value.median_ms for key, value in latencies(model, rounds=rounds, seconds=0.1).items()}


def measure_model(model: nn.Module, val, device: torch.device, file_bytes: int, sparse_bytes: int | None = None) -> dict:
    """One row of metrics for a model whose file has `file_bytes`: parameters, MACs, validation accuracy, latency
    per runtime (`measure_latencies`; None: the machine was too busy)."""
    spec = spec_of(model)
    acc = classification_metrics(predict_logits(model.to(device), val, device), val.labels, val.num_classes)["accuracy"]
    row = {"params": count_parameters(model), "macs": count_macs(model.cpu(), spec.input_size),
           "file_bytes": file_bytes, "val_accuracy": round(acc, 5), "latency_ms": measure_latencies(model.cpu())}
    model.to(device)
    if sparse_bytes is not None:
        row["sparse_file_bytes"] = sparse_bytes
        row["zero_fraction"] = round(zero_fraction(model), 5)
    if "widths" in spec.kwargs and spec.kwargs["widths"]:
        row["widths"] = spec.kwargs["widths"]
    return row
