"""The memory a training step needs, counted before the first step, so a run that cannot fit is refused with the
numbers instead of being killed by the system midway (a 4096-px batch of a small CNN holds tens of GB)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..errors import NetcompressError
from ..process import available_memory

INPUT_TO_ACTIVATIONS = 256  # measured: a batch's activations are 36x its input for StudentNet, 85x for Lite0-8


def activation_bytes(net: nn.Module, batch: int, channels: int, size: int) -> int | None:
    """Bytes of the input and of every layer's output for one batch of `size`-px images (what backward keeps),
    counted on the meta device; None when the model cannot run there."""
    meta = copy.deepcopy(net).to("meta")
    total = [batch * channels * size * size * 4]

    def count(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in meta.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            meta.train()(torch.empty(batch, channels, size, size, device="meta"))
    except Exception:  # an operation without a meta kernel: the check is skipped, not the training
        return None
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def check_training_memory(net: nn.Module, batch: int, channels: int, size: int, device: torch.device) -> None:
    """Refuse a training step whose activations alone exceed the memory left (CPU: MemAvailable; CUDA: free)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    elif device.type == "cpu":
        free = available_memory()
    else:
        return
    if free is None or batch * channels * size * size * 4 * INPUT_TO_ACTIVATIONS < free:
        return  # far from the limit: not worth counting
    need = activation_bytes(net, batch, channels, size)
    if need is not None and need > free:
        raise NetcompressError(f"training at {size} px with batches of {batch} needs about {need / 2**30:,.1f} GiB of "
                               f"memory for its activations alone and {free / 2**30:,.1f} GiB is available: use a "
                               "smaller --image-size or --batch-size")
