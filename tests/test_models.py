import pytest
import torch

from netcompress.errors import NetcompressError
from netcompress.measure.cost import count_parameters
from netcompress.models import create_model, list_models


@pytest.mark.parametrize(
    "name, params",
    [("studentnet", 256_779), ("studentnet9", 224_011), ("plaincnn", 247_179), ("resnet18", 11_182_155)],
)
def test_parameter_counts_match_the_course(name, params):
    assert count_parameters(create_model(name, num_classes=11)) == params


def test_width_mult_scales_only_the_middle_blocks():
    net = create_model("studentnet", width_mult=0.5)
    assert net.widths == [16, 32, 64, 64, 128, 128, 128, 256]


def test_explicit_widths_rebuild_a_pruned_net():
    widths = [16, 30, 60, 100, 200, 180, 170, 256]
    net = create_model("studentnet", num_classes=10, widths=widths)
    assert net.cnn[3][3].out_channels == 100 and net.cnn[4][0].groups == 100
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 10)


def test_studentnet9_pools_after_blocks_0_1_2_5():
    net = create_model("studentnet9")
    pooled = [i for i, block in enumerate(net.cnn[:-1]) if isinstance(block[-1], torch.nn.MaxPool2d)]
    assert pooled == [0, 1, 2, 5]


@pytest.mark.parametrize("groups", [1, 16])
def test_groupcnn_refuses_plain_and_depthwise_groups(groups):
    with pytest.raises(NetcompressError, match="groups"):
        create_model("groupcnn", groups=groups)


def test_groupcnn_really_groups():
    net = create_model("groupcnn", groups=4, num_classes=5)
    assert net.cnn[2][0].groups == 4 and net.cnn[0][0].groups == 1
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 5)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(NetcompressError, match="studentnet"):
        create_model("studentnett")


def test_registry_offers_teachers():
    names = list_models()
    assert {"resnet18", "efficientnet_lite0", "studentnet", "groupcnn"} <= set(names)


def test_efficientnet_lite0_loads_packaged_imagenet_weights():
    net = create_model("efficientnet_lite0", num_classes=10)
    assert count_parameters(net) == 3_383_818
    # the pretrained stem is not a fresh random init: compare with an untrained build
    scratch = create_model("efficientnet_lite0", num_classes=10, pretrained=False)
    assert not torch.equal(net.net._conv_stem.weight, scratch.net._conv_stem.weight)
    assert torch.allclose(net.mean.flatten(), torch.full((3,), 127 / 255))


def test_truncated_lite_keeps_the_first_pretrained_blocks():
    full = create_model("efficientnet_lite0", num_classes=10)
    small = create_model("efficientnet_lite0", num_classes=10, blocks=8)
    assert count_parameters(small) == 254_794 and len(small.net._blocks) == 8
    assert all(torch.equal(a, b) for a, b in zip(small.net._blocks.state_dict().values(),
                                                  full.net._blocks[:8].state_dict().values()))
    assert small.net._fc.in_features == 80 and small(torch.rand(2, 3, 64, 64)).shape == (2, 10)
    headed = create_model("efficientnet_lite0", num_classes=10, blocks=7, head=320)
    assert headed.net._conv_head.out_channels == 320 and headed(torch.rand(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("kwargs, message", [({"blocks": 17}, "blocks = 17: keep 1..16"),
                                             ({"blocks": -2}, "blocks = -2"),
                                             ({"blocks": 8, "head": -1}, "head = -1"),
                                             ({"head": 64}, "head = 64 needs blocks")])
def test_truncated_lite_refuses_bad_sizes(kwargs, message):
    with pytest.raises(NetcompressError, match=message):
        create_model("efficientnet_lite0", num_classes=10, **kwargs)
