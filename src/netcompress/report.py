"""Plots and tables of compression results."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import NetcompressError
from .files import atomic_write


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise NetcompressError(f"{path} does not exist: is {path.parent} a pruning run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_pruning(run_dirs: list[Path], out: Path, title: str = "Pruning: parameters vs validation accuracy") -> Path:
    """Parameter count (x) against validation accuracy (y), one line per pruning run (the seed's question 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in run_dirs:
        rows = read_jsonl(Path(run) / "pruning.jsonl")
        label = f"rate {rows[0]['rate']} ({rows[0]['method']}, {len(rows) - 1} steps)"
        ax.plot([r["params"] for r in rows], [r["val_accuracy"] for r in rows], marker="o", label=label)
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(out)
