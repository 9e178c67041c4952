"""The course's StudentNet: a depthwise-separable CNN (NTU ML 2020 HW7).

State-dict keys match the course's checkpoints (`cnn.{i}.{0,1,3}.*`, `fc.0.*`), so the course's
files load directly, and explicit per-layer `widths` rebuild a channel-pruned network exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import NetcompressError
from .registry import register_model
from .studentnet_layout import studentnet_from_tensors

COURSE_MULTIPLIERS = [1, 2, 4, 8, 16, 16, 16, 16]
COURSE_VARIANT = {"head": [], "bias": True, "pointwise_bn": False, "strided": []}
SEED_MULTIPLIERS = [1, 2, 4, 8, 8, 8, 16, 16, 16]


def course_widths(base: int, multipliers: list[int], width_mult: float) -> list[int]:
    """The course's bandwidths: width_mult scales blocks 3 .. n-2 (int truncation), others stay."""
    widths = [base * m for m in multipliers]
    for i in range(3, len(widths) - 1):
        widths[i] = int(widths[i] * width_mult)
    return widths


class StudentNet(nn.Module):
    """Block 0: conv3x3 (in_channels -> widths[0]) -> BN -> ReLU6; block i >= 1: depthwise3x3 on widths[i-1]
    -> BN -> ReLU6 -> pointwise widths[i-1] -> widths[i].

    A MaxPool2d(2) ends every block listed in `pool_after`; global average pooling and one
    Linear layer on widths[-1] classify. The variants students saved: `head` (hidden widths of a
    deeper classifier, ReLU between its layers), `bias=False` (convs without bias), `pointwise_bn`
    (BN -> ReLU6 after each pointwise conv, MobileNet-style) and `strided` (blocks whose first conv
    has stride 2, in place of a MaxPool).
    """

    def __init__(
        self,
        num_classes: int = 11,
        base: int = 16,
        multipliers: list[int] | None = None,
        width_mult: float = 1.0,
        pool_after: list[int] | None = None,
        widths: list[int] | None = None,
        in_channels: int = 3,
        head: list[int] | None = None,
        bias: bool = True,
        pointwise_bn: bool = False,
        strided: list[int] | None = None,
    ):
        super().__init__()
        multipliers = list(multipliers or COURSE_MULTIPLIERS)
        widths = list(widths) if widths is not None else course_widths(base, multipliers, width_mult)
        pool_after = list(pool_after if pool_after is not None else range(min(4, len(widths))))
        strided, head = list(strided or []), list(head or [])
        if len(widths) < 2 or min(widths) < 1 or (head and min(head) < 1):
            raise NetcompressError(f"studentnet: widths must list at least 2 positive ints and head positive ints, "
                                   f"got {widths} and {head}")
        for name, blocks in (("pool_after", pool_after), ("strided", strided)):
            if any(not 0 <= p < len(widths) for p in blocks):
                raise NetcompressError(f"studentnet: {name} {blocks} must index blocks 0..{len(widths) - 1}")
        self.widths, self.pool_after = widths, pool_after
        self.variant = {"head": head, "bias": bias, "pointwise_bn": pointwise_bn, "strided": strided}
        blocks: list[nn.Module] = []
        for i, w in enumerate(widths):
            stride = 2 if i in strided else 1
            if i == 0:
                layers: list[nn.Module] = [nn.Conv2d(in_channels, w, 3, stride, 1, bias=bias), nn.BatchNorm2d(w),
                                           nn.ReLU6()]
            else:
                prev = widths[i - 1]
                layers = [
                    nn.Conv2d(prev, prev, 3, stride, 1, groups=prev, bias=bias),
                    nn.BatchNorm2d(prev),
                    nn.ReLU6(),
                    nn.Conv2d(prev, w, 1, bias=bias),
                ]
                if pointwise_bn:
                    layers += [nn.BatchNorm2d(w), nn.ReLU6()]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2, 2, 0))
            blocks.append(nn.Sequential(*layers))
        blocks.append(nn.AdaptiveAvgPool2d((1, 1)))
        self.cnn = nn.Sequential(*blocks)
        sizes, classifier = [widths[-1], *head, num_classes], []
        for k in range(len(sizes) - 1):
            classifier += [nn.Linear(sizes[k], sizes[k + 1])] + ([nn.ReLU()] if k < len(sizes) - 2 else [])
        self.fc = nn.Sequential(*classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cnn(x).flatten(1))

    def architecture_kwargs(self) -> dict:
        """The constructor arguments of this network's current shape (channel pruning changes the widths and the
        classifier's hidden widths)."""
        head = [m.out_features for m in self.fc if isinstance(m, nn.Linear)][:-1]
        return {"widths": [self.cnn[0][0].out_channels] + [block[3].out_channels for block in self.cnn[1:-1]],
                **({"head": head} if head else {})}

    def prune_channels(self, config, step: int, start: dict) -> StudentNet | None:
        """The course's own rule for `slim` (per-layer, not global): each layer keeps the channels with the
        largest |γ| of the BatchNorm after them, at widths start·rate^step. None: no rule of its own."""
        if config.method != "slim" or config.global_ranking or self.variant != COURSE_VARIANT:
            return None
        return slim_studentnet(self, course_widths_at(start.get("widths", self.widths), config.rate, step))

    @staticmethod
    def kwargs_from_state(state: dict) -> dict:
        """Widths, class count, input channels, classifier head, conv bias and pointwise BN of a StudentNet
        state_dict, read from its tensors in order (names may differ); pooling and strides leave no trace."""
        return studentnet_from_tensors(state)


@register_model("studentnet", num_classes=11, base=16, multipliers=COURSE_MULTIPLIERS, width_mult=1.0,
                pool_after=[0, 1, 2, 3], widths=None, in_channels=3, **COURSE_VARIANT,
                unseen={"pool_after": [0, 1, 2, 3], "strided": []})
def studentnet(**kwargs) -> StudentNet:
    """The course's student: 256,779 parameters at 11 classes."""
    return StudentNet(**kwargs)


@register_model("studentnet9", num_classes=11, base=16, multipliers=SEED_MULTIPLIERS, width_mult=1.0,
                pool_after=[0, 1, 2, 5], widths=None, in_channels=3, **COURSE_VARIANT,
                unseen={"pool_after": [0, 1, 2, 5], "strided": []})
def studentnet9(**kwargs) -> StudentNet:
    """The seed report's 9-block student: 224,011 parameters at 11 classes."""
    return StudentNet(**kwargs)


# ---- the course's pruning rule ----------------------------------------------------------------------

def course_widths_at(widths: list[int], rate: float, step: int) -> list[int]:
    """Widths after `step` steps: the course scales widths 3..n-2 by rate^step (int truncation)."""
    mult = 1.0
    for _ in range(step):
        mult *= rate  # repeated products, as the course computed its width_mult
    return [int(w * mult) if 3 <= i < len(widths) - 1 else w for i, w in enumerate(widths)]


def slim_selection(model: StudentNet, new_widths: list[int]) -> list[torch.Tensor]:
    """Kept channels per width: the largest |γ| of the BatchNorm after them (block i+1's), in index order."""
    keep = []
    for i, (old, new) in enumerate(zip(model.widths, new_widths)):
        if i + 1 == len(model.widths):
            if new != old:
                raise NetcompressError("the course's rule never prunes the classifier's input width")
            keep.append(torch.arange(old))
            continue
        gamma = model.cnn[i + 1][1].weight.detach().abs()
        keep.append(torch.argsort(gamma, descending=True, stable=True)[:new].sort().values)
    return keep


@torch.no_grad()
def slim_studentnet(model: StudentNet, new_widths: list[int]) -> StudentNet:
    """A new StudentNet of `new_widths` holding the surviving slices of `model`'s weights."""
    keep = slim_selection(model, new_widths)
    new = StudentNet(num_classes=model.fc[0].out_features, widths=list(new_widths), pool_after=model.pool_after,
                     in_channels=model.cnn[0][0].in_channels)
    new.to(model.fc[0].weight.device)
    old_state, new_state = model.state_dict(), {}
    for name, target in new.state_dict().items():
        value = old_state[name]
        parts = name.split(".")
        if parts[0] == "cnn":
            block, layer = int(parts[1]), int(parts[2])
            if value.dim() > 0:
                if block == 0:
                    value = value[keep[0]]  # first conv's outputs and their BatchNorm
                elif layer in (0, 1):
                    value = value[keep[block - 1]]  # depthwise conv and BatchNorm on widths[block-1]
                elif parts[3] == "weight":
                    value = value[keep[block]][:, keep[block - 1]]  # pointwise: outputs x inputs
                else:
                    value = value[keep[block]]
        new_state[name] = value.clone()
        assert new_state[name].shape == target.shape, name
    new.load_state_dict(new_state)
    return new.train(model.training)
