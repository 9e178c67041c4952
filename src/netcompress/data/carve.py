"""Carving splits off a split that has no folder of its own: seeded and stratified, the same on every rerun."""

from __future__ import annotations

import numpy as np


def carve(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Seeded, stratified split of positions: `fractions` of every class (rounded) go to each named split,
    the rest to "training"; every class keeps at least one training image. Positions stay in file order."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {name: [] for name in ["training", *fractions]}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for name, fraction in fractions.items():
            take = min(int(round(fraction * len(members))), max(0, len(members) - start - 1))
            out[name].extend(members[start:start + take])
            start += take
        out["training"].extend(members[start:])
    return {name: np.sort(np.asarray(positions, dtype=np.int64)) for name, positions in out.items()}
