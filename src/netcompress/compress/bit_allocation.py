"""Mixed precision under a byte budget: spend bits where the predictions are most sensitive.

On StudentNet a 4-bit first conv alone (432 weights, 283 bytes) moved the logits more than a
4-bit copy of any 65,536-weight pointwise conv, so one width for every tensor wastes bytes.
Each quantizable tensor is quantized alone at each candidate width and the KL divergence of the
predictions (fp32 -> quantized) on calibration images is measured; treating those costs as
additive, a knapsack over bytes picks the widths that minimise the total KL within the budget.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import NetcompressError
from ..process import bars_off
from .quant_config import QuantConfig, encode_model, prepared

GRANULE = 8  # bytes per knapsack unit
WIDTHS = (2, 3, 4, 5, 6, 8)


@torch.inference_mode()
def sensitivity(model, cfg: QuantConfig, images: torch.Tensor, widths: list[int],
                progress: bool = True) -> dict[str, dict[int, tuple[float, int]]]:
    """name -> {bits: (KL of predictions with only this tensor quantized, record bytes)}."""
    model = prepared(model, cfg)
    state = model.state_dict()
    ref = F.log_softmax(model(images), 1)
    names = [k for k, t in state.items() if cfg.quantizes(k, t)]
    table: dict[str, dict[int, tuple[float, int]]] = {}
    bar = tqdm(total=len(names) * len(widths), desc="sensitivity", unit="run", disable=bars_off(progress), leave=False)
    for name in names:
        original = state[name].clone()
        table[name] = {}
        for bits in widths:
            stored, size = cfg.roundtrip(name, original, bits)
            state[name].copy_(stored)
            kl = F.kl_div(F.log_softmax(model(images), 1), ref, log_target=True, reduction="batchmean").item()
            table[name][bits] = (max(kl, 0.0), size)
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


def allocate_bits(model, cfg: QuantConfig, images: torch.Tensor, budget: int,
                  progress: bool = True, table: dict | None = None) -> QuantConfig:
    """A config whose per-tensor widths (2..cfg.width) keep the whole file within `budget` bytes.

    Every tensor with 2 or more dims is a candidate (min_elements 0): the knapsack itself keeps the
    small sensitive ones at 6-8 bits. `table` reuses a `sensitivity` result measured with the
    same codec, widths and BatchNorm folding.
    """
    cfg = replace(cfg, min_elements=0, budget=None)
    widths = [b for b in WIDTHS if b <= cfg.width]
    smallest = len(encode_model(model, replace(cfg, bits=min(widths), tensor_bits=None)))
    if smallest > budget:  # known before the (slow) sensitivity measurement
        raise NetcompressError(f"budget = {budget:,} bytes is below the smallest this codec reaches "
                               f"({smallest:,} bytes at {min(widths)} bits); raise the budget or prune the model first")
    table = table or sensitivity(model, cfg, images, widths, progress)
    base = replace(cfg, tensor_bits={n: cfg.width for n in table}, entropy=False)
    fixed = len(encode_model(model, base)) - sum(t[cfg.width][1] for t in table.values())
    best, best_kl, target = None, np.inf, budget - fixed - 64  # 64: room for the JSON's list of widths
    for _ in range(6):  # --entropy makes files smaller than the estimate: spend the slack, then stop
        chosen = choose_widths(table, target)
        if chosen is None:
            break
        result = replace(cfg, tensor_bits=chosen)
        size, kl = len(encode_model(model, result)), sum(table[n][b][0] for n, b in chosen.items())
        if size <= budget and kl < best_kl:
            best, best_kl = result, kl
        if size <= budget and (not cfg.entropy or budget - size < 4 * GRANULE):
            break
        target += budget - size
    if best is None:
        smallest = fixed + sum(min(s for _, s in t.values()) for t in table.values())
        raise NetcompressError(f"budget = {budget:,} bytes is below the smallest this codec reaches "
                               f"(~{smallest:,} bytes at 2 bits); raise the budget or prune the model first")
    return best
