import torch.nn as nn

from netcompress.measure.cost import count_macs, count_parameters
from netcompress.models import create_model


def test_macs_of_a_small_net_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    assert count_macs(net, 8) == 8 * 8 * 8 * 3 * 9 + 8 * 8 * 8 * 1 * 9 + 8 * 2
    assert count_parameters(net) == (3 * 9 * 8 + 8) + (9 * 8 + 8) + (8 * 2 + 2)


def test_macs_count_convs_with_their_own_forward():
    # EfficientNet-Lite's same-padding convs call F.conv2d themselves; they must still count
    assert count_macs(create_model("efficientnet_lite0", num_classes=10, pretrained=False), 64) > 30_000_000
