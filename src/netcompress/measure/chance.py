"""Whether a model beats chance on labelled images: how an import shows that a layout its file does not
record (strides, pooling, activation, preprocessing) is the one the weights were trained with.

Weights in the wrong layout still compute something, but what they compute is unrelated to the
labels: accuracy falls to about the share of the most common class. Right means clearly above it:
by more than `MARGIN_SE` standard errors of that share on this many images.
"""

from __future__ import annotations

import math

import torch.nn as nn

from .evaluate import evaluate

MARGIN_SE = 3.0


def above_chance(model: nn.Module, data, split: str = "validation") -> dict:
    """accuracy, chance (the most common class's share), images, and holds: accuracy clearly above chance."""
    result = evaluate(model, data, split, device="cpu")
    counts = [sum(row) for row in result["confusion"]]
    n = max(sum(counts), 1)
    chance = max(counts) / n
    threshold = chance + MARGIN_SE * math.sqrt(chance * (1 - chance) / n)
    return {"split": result["split"], "images": n, "accuracy": result["accuracy"], "chance": chance,
            "holds": result["accuracy"] > threshold}
