"""Plain and group-convolution CNNs: the seed report's architecture comparison (its section 4 a, c)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import NetcompressError
from .registry import register_model


class ConvNet(nn.Module):
    """conv3x3 -> BN -> ReLU6 blocks (MaxPool2d(2) after those in `pool_after`), GAP, Linear.

    The first conv sees the image's channels and is always dense; every later conv uses `groups`.
    """

    def __init__(
        self,
        num_classes: int = 11,
        base: int = 16,
        multipliers: list[int] | None = None,
        groups: int = 1,
        pool_after: list[int] | None = None,
        widths: list[int] | None = None,
        in_channels: int = 3,
    ):
        super().__init__()
        widths = list(widths) if widths is not None else [base * m for m in (multipliers or [1, 2, 4, 8, 8])]
        pool_after = list(pool_after if pool_after is not None else range(min(4, len(widths) - 1)))
        for i in range(1, len(widths)):
            if widths[i - 1] % groups or widths[i] % groups:
                raise NetcompressError(
                    f"groups={groups} must divide every width after the first; widths are {widths}"
                )
        self.widths = widths
        blocks = []
        in_ch = in_channels
        for i, w in enumerate(widths):
            g = 1 if i == 0 else groups
            layers: list[nn.Module] = [nn.Conv2d(in_ch, w, 3, 1, 1, groups=g), nn.BatchNorm2d(w), nn.ReLU6()]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2, 2, 0))
            blocks.append(nn.Sequential(*layers))
            in_ch = w
        blocks.append(nn.AdaptiveAvgPool2d((1, 1)))
        self.cnn = nn.Sequential(*blocks)
        self.fc = nn.Sequential(nn.Linear(widths[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cnn(x).flatten(1))

    @staticmethod
    def kwargs_from_state(state: dict) -> dict:
        """Widths, groups, class count and input channels of a ConvNet state_dict (pool positions leave no trace)."""
        convs = sorted((int(k.split(".")[1]), v) for k, v in state.items()
                       if k.startswith("cnn.") and k.endswith(".0.weight") and v.dim() == 4)
        widths = [int(w.shape[0]) for _, w in convs]
        groups = widths[0] // int(convs[1][1].shape[1]) if len(convs) > 1 else 1
        return {"widths": widths, **({"groups": groups} if groups > 1 else {}),
                "num_classes": int(state["fc.0.weight"].shape[0]), "in_channels": int(convs[0][1].shape[1])}


@register_model("plaincnn", num_classes=11, base=16, multipliers=[1, 2, 4, 8, 8], pool_after=[0, 1, 2, 3], widths=None,
                in_channels=3, unseen={"pool_after": [0, 1, 2, 3]})
def plaincnn(**kwargs) -> ConvNet:
    """The seed's plain CNN (section 4a): 247,179 parameters at 11 classes."""
    return ConvNet(groups=1, **kwargs)


@register_model("groupcnn", num_classes=11, base=16, multipliers=[1, 2, 4, 8, 8, 8], groups=2,
                pool_after=[0, 1, 2, 3], widths=None, in_channels=3, unseen={"pool_after": [0, 1, 2, 3]})
def groupcnn(groups: int = 2, **kwargs) -> ConvNet:
    """The seed's group-convolution CNN (section 4c): groups must be neither 1 nor the channel count."""
    widths = kwargs.get("widths") or [kwargs.get("base", 16) * m for m in kwargs.get("multipliers") or [1]]
    if groups <= 1 or groups >= min(widths[:-1] or widths):
        raise NetcompressError(
            f"groupcnn: groups={groups} must be at least 2 and below the narrowest grouped layer's "
            f"input channels ({min(widths[:-1] or widths)}); groups=1 is a plain CNN and groups=channels is depthwise"
        )
    return ConvNet(groups=groups, **kwargs)
