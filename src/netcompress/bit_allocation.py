"""Mixed precision under a byte budget: spend bits where the predictions are most sensitive.

On StudentNet a 4-bit first conv alone (432 weights, 283 bytes) moved the logits more than a
4-bit copy of any 65,536-weight pointwise conv, so one width for every tensor wastes bytes.
Each quantizable tensor is quantized alone at each candidate width and the KL divergence of the
predictions (fp32 -> quantized) on calibration images is measured; treating those costs as
additive, a knapsack over bytes picks the widths that minimise the total KL within the budget.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .artifact import ModelSpec
from .data import Split
from .errors import NetcompressError
from .quantize import AFFINE, KMEANS, QuantConfig, _copy_model, _Reader, decode_tensor, encode_model, encode_tensor, \
    fold_batchnorm

GRANULE = 8  # bytes per knapsack unit
WIDTHS = (2, 3, 4, 5, 6, 8)


def calibration_images(split: Split, n: int) -> torch.Tensor:
    """`n` images of a split as floats in [0, 1], spread evenly over its sorted files (so over its classes)."""
    if n < 1:
        raise NetcompressError(f"--calibration {n}: use at least 1 image (a few hundred is typical)")
    idx = np.unique(np.linspace(0, len(split) - 1, min(n, len(split))).round().astype(np.int64))
    return split.images[torch.from_numpy(idx)].float().div_(255)


@torch.inference_mode()
def sensitivity(model, spec: ModelSpec, cfg: QuantConfig, images: torch.Tensor, widths: list[int],
                progress: bool = True) -> dict[str, dict[int, tuple[float, int]]]:
    """name -> {bits: (KL of predictions with only this tensor quantized, record bytes)}."""
    cfg = cfg.checked()
    model = _copy_model(model, spec)
    if cfg.fold_bn:
        fold_batchnorm(model)
    state = model.state_dict()
    ref = F.log_softmax(model(images), 1)
    names = [k for k, t in state.items() if encode_tensor(t, cfg, 8)[0] in (AFFINE, KMEANS)]
    table: dict[str, dict[int, tuple[float, int]]] = {}
    bar = tqdm(total=len(names) * len(widths), desc="sensitivity", unit="run", disable=not progress, leave=False)
    for name in names:
        original = state[name].clone()
        table[name] = {}
        for bits in widths:
            record = encode_tensor(original, cfg, bits)
            state[name].copy_(decode_tensor(_Reader(record, name), original, name))
            kl = F.kl_div(F.log_softmax(model(images), 1), ref, log_target=True, reduction="batchmean").item()
            table[name][bits] = (max(kl, 0.0), len(record))
            bar.update()
        state[name].copy_(original)
    bar.close()
    return table


def choose_widths(table: dict[str, dict[int, tuple[float, int]]], budget: int) -> dict[str, int] | None:
    """Exact multiple-choice knapsack: widths minimising the summed KL with summed bytes <= budget."""
    units = budget // GRANULE
    if units < 0:
        return None
    best = np.full(units + 1, np.inf)
    best[0] = 0.0
    choices = []
    for name, options in table.items():
        new, pick = np.full_like(best, np.inf), np.full(units + 1, -1)
        for bits, (kl, size) in options.items():
            c = -(-size // GRANULE)
            if c > units:
                continue
            cand = np.full_like(best, np.inf)
            cand[c:] = best[:units + 1 - c] + kl
            better = cand < new
            new[better], pick[better] = cand[better], bits
        choices.append((name, pick, {b: -(-s // GRANULE) for b, (_, s) in options.items()}))
        best = new
    if not np.isfinite(best).any():
        return None
    w, widths = int(np.argmin(best)), {}
    for name, pick, cost in reversed(choices):
        widths[name] = int(pick[w])
        w -= cost[widths[name]]
    return {name: widths[name] for name in table}


def allocate_bits(model, spec: ModelSpec, cfg: QuantConfig, images: torch.Tensor, budget: int,
                  progress: bool = True, table: dict | None = None) -> QuantConfig:
    """A config whose per-tensor widths (2..cfg.bits) keep the whole file within `budget` bytes.

    Every tensor with 2 or more dims is a candidate (min_elements 0): the knapsack itself keeps the
    small sensitive ones at 6-8 bits. `table` reuses a `sensitivity` result measured with the
    same codec, widths and BatchNorm folding.
    """
    cfg = QuantConfig(**{**cfg.checked().__dict__, "min_elements": 0})
    if cfg.codec not in ("kbit", "kmeans"):
        raise NetcompressError(f"--budget needs --codec kbit or kmeans (per-tensor widths), not {cfg.codec}")
    widths = [b for b in WIDTHS if b <= cfg.bits]
    table = table or sensitivity(model, spec, cfg, images, widths, progress)
    base = QuantConfig(**{**cfg.__dict__, "tensor_bits": {n: cfg.bits for n in table}, "entropy": False})
    fixed = len(encode_model(model, spec, base)) - sum(t[cfg.bits][1] for t in table.values())
    best, best_kl, target = None, np.inf, budget - fixed - 64  # 64: room for the JSON's list of widths
    for _ in range(6):  # --entropy makes files smaller than the estimate: spend the slack, then stop
        chosen = choose_widths(table, target)
        if chosen is None:
            break
        result = QuantConfig(**{**cfg.__dict__, "tensor_bits": chosen})
        size, kl = len(encode_model(model, spec, result)), sum(table[n][b][0] for n, b in chosen.items())
        if size <= budget and kl < best_kl:
            best, best_kl = result, kl
        if size <= budget and (not cfg.entropy or budget - size < 4 * GRANULE):
            break
        target += budget - size
    if best is None:
        smallest = fixed + sum(min(s for _, s in t.values()) for t in table.values())
        raise NetcompressError(f"--budget {budget:,} bytes is below the smallest this codec reaches "
                               f"(~{smallest:,} bytes at 2 bits); raise --budget or prune the model first")
    return best
