import torch

from netcompress.data.augment import AugmentConfig, shard_order
from netcompress.data.mix import cutmix_boxes, mix_batch, mix_pairs


def test_mix_pairs_pastes_a_box_or_blends():
    x, other = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    boxes = torch.tensor([[1, 1, 3, 3], [0, 0, 0, 0]])  # image 0: CutMix of a 2x2 box; image 1: mixup
    images, soft = mix_pairs(x, other, torch.tensor([0, 1]), torch.tensor([2, 2]), torch.tensor([0.75, 0.25]),
                             boxes, 3)
    assert images[0].sum() == 3 * 4 and torch.equal(images[0, :, 1:3, 1:3], torch.ones(3, 2, 2))
    assert torch.allclose(images[1], torch.full((3, 4, 4), 0.75))
    assert torch.allclose(soft, torch.tensor([[0.75, 0, 0.25], [0, 0.25, 0.75]]))


def test_cutmix_boxes_keep_the_area_they_leave():
    box, kept = cutmix_boxes(0.75, 2, 2, 8, 8)  # half the side: a 4x4 box around the centre (2, 2)
    assert box.tolist() == [0, 0, 4, 4] and kept == 1 - 16 / 64
    box, kept = cutmix_boxes(0.75, 0, 7, 8, 8)  # clipped at the corner: 2x1 pixels
    assert box.tolist() == [0, 5, 2, 8] and kept == 1 - 6 / 64


def test_mix_batch_soft_labels_weigh_the_pixels_taken():
    x = torch.arange(6.0)[:, None, None, None].expand(6, 1, 8, 8)
    labels = torch.arange(6)
    for seed in range(5):
        images, soft = mix_batch(x, labels, 6, AugmentConfig(cutmix=1.0), torch.Generator().manual_seed(seed))
        own = (images == x).float().mean((1, 2, 3))  # every image has its own value: what it kept
        assert torch.allclose(soft.sum(1), torch.ones(6))
        changed = own < 1
        assert torch.allclose(soft[changed, labels[changed]], own[changed])


def test_shard_order_pads_by_wrapping_and_shares_evenly():
    order = torch.tensor([4, 0, 3, 1, 2])
    shares = [shard_order(order, (rank, 3)) for rank in range(3)]
    assert [s.tolist() for s in shares] == [[4, 1], [0, 2], [3, 4]]
    assert torch.equal(shard_order(order, (0, 1)), order)
