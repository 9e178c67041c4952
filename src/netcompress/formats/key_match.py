"""A checkpoint whose layers were renamed, matched to a model's by position: only where nothing else can be meant.

A student's own class often names its layers differently (`features.0` for `cnn.0.0`), but saves
them in the order the class registered them. The match is taken only when, tensor by tensor in
that order, the last part of the name (`weight`, `bias`, `running_mean`...) and the shape agree
and every checkpoint layer maps onto exactly one model layer; otherwise the names stand as they
are and every difference is listed.
"""

from __future__ import annotations

import torch

COUNTER = "num_batches_tracked"  # BatchNorm's step counter: absent from old checkpoints, never needed to compute


def match_by_position(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) \
        -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    """(the checkpoint under the model's names, [(checkpoint layer, model layer) renamed]); the checkpoint
    unchanged and [] where its names already fit or no unambiguous match exists."""
    wanted = [k for k in expected if not k.endswith(COUNTER)]
    if all(k in state for k in wanted):
        return state, []
    given = [k for k in state if not k.endswith(COUNTER)]
    if len(given) != len(wanted):
        return state, []
    layers: dict[str, str] = {}
    for old, new in zip(given, wanted):
        if leaf(old) != leaf(new) or tuple(state[old].shape) != tuple(expected[new].shape):
            return state, []
        if layers.setdefault(layer(old), layer(new)) != layer(new):
            return state, []
    if len(set(layers.values())) != len(layers):
        return state, []
    renamed = {new: state[old] for old, new in zip(given, wanted)}
    for key, value in state.items():  # counters follow their layer
        if key.endswith(COUNTER) and layer(key) in layers and f"{layers[layer(key)]}.{COUNTER}" in expected:
            renamed[f"{layers[layer(key)]}.{COUNTER}"] = value
    return renamed, [(old, new) for old, new in layers.items() if old != new]


def first_misfit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """Where a match by position fails, in words (for an error message), or None."""
    wanted = [k for k in expected if not k.endswith(COUNTER)]
    given = [k for k in state if not k.endswith(COUNTER)]
    for i, (old, new) in enumerate(zip(given, wanted)):
        if leaf(old) != leaf(new) or tuple(state[old].shape) != tuple(expected[new].shape):
            return (f"tensor {i + 1} in order is {old} {list(state[old].shape)} in the checkpoint but "
                    f"{new} {list(expected[new].shape)} in the model")
    if len(given) != len(wanted):
        return f"the checkpoint holds {len(given)} tensors (besides BatchNorm counters), the model {len(wanted)}"
    return None


def leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def layer(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""
