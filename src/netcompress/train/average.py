"""An exponential moving average of a network's weights, validated and kept in place of the weights themselves.

Low-bit quantization-aware training makes weights oscillate across rounding steps (Nagel et al. 2022, "Overcoming
Oscillations in Quantization-Aware Training"), so the stored codes depend on the step training happened to stop at;
averaging the float weights over the last steps lets each settle where it oscillates about. Measured on 3-bit QAT
of a 6-block Lite0 student (`benchmarks/qat_stability.py`), it did not narrow the 3-point spread from seed to seed,
so it is off unless asked for. torch's AveragedModel would average a deep copy of the network, whose netcompress spec
the loop does not update; this averages the network's own state and swaps it in where it is validated and kept.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn


class WeightAverage:
    """The average of `net`'s state over about the last `epochs` epochs: the plain mean of every step so far until
    that many steps have passed, then an exponential average with decay 1 - 1/steps (so the starting weights never
    weigh in, and a short run averages what it has); integer entries follow the live network."""

    def __init__(self, net: nn.Module, epochs: float, steps_per_epoch: int):
        self.decay = 1.0 - 1.0 / max(1.0, epochs * steps_per_epoch)
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, 1.0 - 1.0 / self.updates)
        for key, value in net.state_dict().items():
            average = self.state[key]
            if average.is_floating_point():
                average.lerp_(value.detach(), 1.0 - decay)
            else:
                average.copy_(value)

    @contextmanager
    def applied(self, net: nn.Module):
        """`net` holds the averaged weights inside the block, its own after it."""
        live = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict(self.state)
        try:
            yield net
        finally:
            net.load_state_dict(live)

    def state_dict(self) -> dict:
        return {"state": self.state, "updates": self.updates}

    def load_state_dict(self, saved: dict) -> None:
        self.state = {k: v.clone() for k, v in saved["state"].items()}
        self.updates = int(saved["updates"])
