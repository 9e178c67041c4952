"""Convolution types compared at an equal budget (the seed report's question 4).

Three families — a plain CNN, a depthwise & pointwise network (StudentNet) and a group-convolution
CNN — are each widened or narrowed by one scale factor until their parameter count (or their
file size after the course's 8-bit codec) lies within ±5% of the budget, then trained with the
same recipe.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..compress.quant_config import QuantConfig, encode_model
from ..errors import NetcompressError
from ..files import atomic_write_text, json_text
from ..measure.cost import count_parameters
from ..plots import pyplot, save_figure
from ..schedule import Finetune
from ..spec import new_model, spec_of
from ..train.distill import DistillConfig
from ..train.fit import TrainConfig

# family -> (registered model, base multipliers, extra kwargs)
FAMILIES = {
    "plain": ("plaincnn", [1, 2, 4, 8, 8], {}),
    "depthwise-pointwise": ("studentnet", [1, 2, 4, 8, 16, 16, 16, 16], {}),
    "group": ("groupcnn", [1, 2, 4, 8, 8, 8], {}),
}
TOLERANCE = 0.05


def _widths(multipliers: list[int], scale: float, multiple: int) -> list[int]:
    """16·m·scale channels per layer, rounded to a multiple of `multiple`, at least 2·multiple."""
    return [max(2 * multiple, int(round(16 * m * scale / multiple)) * multiple) for m in multipliers]


def build(family: str, scale: float, class_names: list[str], input_size: int, groups: int = 2,
          channels: int = 3) -> torch.nn.Module:
    arch, multipliers, extra = FAMILIES[family]
    kwargs = dict(extra)
    if family == "group":
        kwargs["groups"] = groups
    widths = _widths(multipliers, scale, groups if family == "group" else 1)
    return new_model(arch, class_names, input_size, channels, widths=widths, **kwargs)


def int8_bytes(model) -> int:
    return len(encode_model(model, QuantConfig("int8-minmax")))


def fit_budget(family: str, class_names: list[str], input_size: int, *, params: int | None = None,
               bytes_int8: int | None = None, groups: int = 2, channels: int = 3):
    """Binary-search the width scale whose model meets the budget within ±5%; returns (model, scale)."""
    if (params is None) == (bytes_int8 is None):
        raise NetcompressError("give exactly one budget: --budget-params N or --budget-bytes B")
    target = params if params is not None else bytes_int8

    def size(scale: float):
        model = build(family, scale, class_names, input_size, groups, channels)
        return (count_parameters(model) if params is not None else int8_bytes(model)), model

    lo, hi = 0.02, 16.0
    smallest, largest = size(lo)[0], size(hi)[0]
    if not smallest <= target * (1 + TOLERANCE) or not largest >= target * (1 - TOLERANCE):
        unit = "parameters" if params is not None else "bytes after 8-bit quantization"
        raise NetcompressError(f"budget {target:,} {unit} is out of reach for the {family} family: it spans "
                               f"{smallest:,} to {largest:,}; choose a budget in that range")
    best = None
    for _ in range(40):
        mid = (lo * hi) ** 0.5
        n, model = size(mid)
        if best is None or abs(n - target) < abs(best[0] - target):
            best = (n, model, mid)
        if abs(n - target) <= TOLERANCE * target * 0.2:
            break
        lo, hi = (mid, hi) if n < target else (lo, mid)
    n, model, scale = best
    if abs(n - target) > TOLERANCE * target:
        raise NetcompressError(f"the {family} family cannot land within ±5% of {target:,} (closest: {n:,}); "
                               "widths move in whole channels: try another budget")
    return model, scale


def compare(data, cfg: TrainConfig, out: str | Path, *, val=None, device: str | torch.device = "auto",
            params: int | None = None, bytes_int8: int | None = None, groups: int = 2, teacher=None,
            distill: DistillConfig | None = None, progress: bool = True) -> list[dict]:
    """Build each family at the budget, train it (resumable, out/<family>/), measure; out/compare.json."""
    out = Path(out)
    finetune = Finetune.on(data, cfg, val=val, teacher=teacher, distill=distill, device=device, run_dir=out,
                           progress=progress)
    train = finetune.train
    rows = []
    for family in FAMILIES:
        torch.manual_seed(cfg.seed)
        model, scale = fit_budget(family, train.class_names, train.image_size, params=params,
                                  bytes_int8=bytes_int8, groups=groups, channels=train.channels)
        best = finetune.at(family).run(model, settings={"family": family})
        spec = spec_of(best)
        row = {"architecture": family, "arch": spec.arch, "widths": spec.kwargs["widths"], "scale": round(scale, 4),
               **finetune.measure(best, (out / family / "best.safetensors").stat().st_size),
               "int8_bytes": int8_bytes(best)}
        if family == "group":
            row["groups"] = groups
        rows.append(row)
        atomic_write_text(out / "compare.json", json_text(rows))
    plot_compare(rows, out / "compare.png")
    return rows


def plot_compare(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    names = [r["architecture"] for r in rows]
    bars = ax.bar(names, [r["val_accuracy"] for r in rows], color=["#888", "#2a7", "#37c"][: len(rows)])
    for bar, r in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{r['val_accuracy']:.3f}\n{r['params']:,} params",
                ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, max(r["val_accuracy"] for r in rows) * 1.25)
    ax.set_title("Convolution types at an equal budget")
    return save_figure(fig, path)
