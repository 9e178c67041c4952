"""NetAdapt's latency lookup table: every conv and linear layer's latency by its shape, measured on the target.

A model's predicted latency is the sum of its layers' entries. An entry is a single layer (a conv
with its ReLU, or a linear layer) timed on the runtime at the configured batch and threads, minus
the time of an empty graph timed in the same rounds, so per-call overhead is not counted once per
layer. Entries are measured when first asked for and kept in a JSON file per runtime, batch,
threads and machine (NETCOMPRESS_CACHE/latency/), so a second pruning run measures nothing.
"""

from __future__ import annotations

import hashlib
import json
import platform
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..data.folder import default_cache_dir
from ..files import atomic_write_text
from .latency import LatencyConfig, get_runtime, time_calls

# a layer's shape: kind, in, out, kernel h/w, stride h/w, padding h/w, dilation h/w, groups, input h/w
LayerKey = tuple


def layer_keys(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerKey]:
    """The shape of every conv and linear layer a forward pass of one `input_shape` image goes through."""
    keys: list[LayerKey] = []

    def hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            keys.append(("conv", module.in_channels, module.out_channels, *module.kernel_size, *module.stride,
                         *_padding(module), *module.dilation, module.groups, x.shape[-2], x.shape[-1]))
        else:
            keys.append(("linear", module.in_features, module.out_features))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model.eval()(torch.zeros(1, *input_shape[1:], device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return keys


def _padding(conv: nn.Conv2d) -> tuple[int, int]:
    if isinstance(conv.padding, str):  # "same" / "valid"
        return ((conv.kernel_size[0] - 1) // 2, (conv.kernel_size[1] - 1) // 2) if conv.padding == "same" else (0, 0)
    return tuple(conv.padding)


class LatencyTable:
    """Per-layer latency in milliseconds on one runtime, batch and thread count, on this machine."""

    def __init__(self, config: LatencyConfig | None = None, cache_dir: str | Path | None = None):
        self.config = config or LatencyConfig()
        self.runtime = get_runtime(self.config.runtime)
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "latency"
        self.path = folder / f"{self.config.runtime}-b{self.config.batch}-t{self.config.threads}-{_machine()}.json"
        self.entries: dict[str, float] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text())["entries"]
            except (ValueError, KeyError, TypeError):
                self.entries = {}  # a damaged cache is measured again, not trusted

    def predict(self, model: nn.Module, input_shape: tuple[int, ...]) -> float:
        """Milliseconds for one call of `model` on `input_shape`: the sum of its layers' entries."""
        keys = layer_keys(model, input_shape)
        self.measure([k for k in keys if _name(k) not in self.entries])
        return sum(self.entries[_name(k)] for k in keys)

    def measure(self, keys: list[LayerKey]) -> None:
        """Time the layers not in the table yet, together with an empty graph, and save the table."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        cfg = self.config
        previous = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                calls = {"empty": self._call(None, Path(tmp) / "empty")}
                calls.update({_name(k): self._call(k, Path(tmp) / str(i)) for i, k in enumerate(keys)})
                # loose limits: an entry steers the search; the pruned models themselves are measured strictly
                found = time_calls(calls, LatencyConfig(**{**asdict(cfg), "rounds": 3, "seconds": 0.02,
                                                           "warmup": 3, "max_spread": 1e9}))
        finally:
            torch.set_num_threads(previous)
        empty = found.pop("empty").median_ms
        for name, result in found.items():
            self.entries[name] = round(max(result.median_ms - empty, 0.0), 5)
        atomic_write_text(self.path, json.dumps({"config": asdict(cfg), "machine": platform.platform(),
                                                 "entries": dict(sorted(self.entries.items()))}, indent=1))

    def _call(self, key: LayerKey | None, workdir: Path):
        layer, x = _layer(key, self.config.batch)
        workdir.mkdir()
        return self.runtime.prepare_layer(layer, x, self.config.threads, workdir)


def _name(key: LayerKey) -> str:
    return "-".join(map(str, key))


def _layer(key: LayerKey | None, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """A random layer of that shape and an input for it (an identity on a small tensor for the empty graph)."""
    if key is None:
        return nn.Identity(), torch.rand(batch, 8)
    if key[0] == "linear":
        return nn.Linear(key[1], key[2]), torch.rand(batch, key[1])
    _, cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups, h, w = key
    conv = nn.Conv2d(cin, cout, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups)
    return nn.Sequential(conv, nn.ReLU()), torch.rand(batch, cin, h, w)


def _machine() -> str:
    """A short name for this machine and runtime build: a table measured elsewhere is not reused."""
    import onnxruntime

    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")), "")
    text = "|".join([platform.machine(), cpu, torch.__version__, onnxruntime.__version__, str(np.__version__)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]
