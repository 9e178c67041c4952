"""Figures written to PNG files: matplotlib without a display, each file written whole or not at all."""

from __future__ import annotations

from pathlib import Path

from .files import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures go to files, no display is needed or opened."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Lay `fig` out, write it as a PNG at `path` (atomically: never half a file) and close it."""
    try:
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        pyplot().close(fig)
    return Path(path)
