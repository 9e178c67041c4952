import numpy as np
import pytest
import torch

from netcompress.data.augment import AugmentConfig, augment_batch, iterate_batches
from netcompress.data.folder import label_from_name, load_split, scan_split
from netcompress.errors import NetcompressError


@pytest.mark.parametrize("name, label", [("3_17.jpg", 3), ("10_0.jpg", 10), ("0_1_extra.jpg", 0), ("0042.jpg", None)])
def test_label_from_file_name(tmp_path, name, label):
    assert label_from_name(tmp_path / "training" / name) == label


@pytest.mark.parametrize("name", ["cat_1.jpg", "img.jpg", "_3.jpg"])
def test_file_name_without_label_is_a_clear_error(tmp_path, name):
    with pytest.raises(NetcompressError, match="<label>_<k>.jpg"):
        label_from_name(tmp_path / name)


def test_unlabeled_test_files_sorted_by_name(tmp_path):
    from PIL import Image

    (tmp_path / "testing").mkdir()
    for name in ["0002.jpg", "0000.jpg", "0010.jpg", "0001.jpg"]:
        Image.new("RGB", (20, 20)).save(tmp_path / "testing" / name)
    files, labels, _ = scan_split(tmp_path, "testing")
    assert [f.name for f in files] == ["0000.jpg", "0001.jpg", "0002.jpg", "0010.jpg"]
    assert labels == [-1] * 4


def test_load_split_decodes_and_caches(jpeg_dataset, tmp_path):
    cache = tmp_path / "cache"
    split = load_split(jpeg_dataset, "training", 32, cache_dir=cache, progress=False)
    assert split.images.shape == (12, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert split.class_names == ["soup", "rice", "bread"]
    assert len(list(cache.glob("*.npz"))) == 1
    again = load_split(jpeg_dataset, "training", 32, cache_dir=cache, progress=False)
    assert torch.equal(again.images, split.images)


def test_imagefolder_layout(tmp_path):
    from PIL import Image

    for cls in ["b_rice", "a_soup"]:
        (tmp_path / "validation" / cls).mkdir(parents=True)
        Image.new("RGB", (20, 30), (200, 10, 10)).save(tmp_path / "validation" / cls / "x.jpg")
    split = load_split(tmp_path, "validation", 16, cache_dir=tmp_path / "c", progress=False)
    assert split.class_names == ["a_soup", "b_rice"] and split.labels.tolist() == [0, 1]


def test_corrupt_jpeg_names_the_file(jpeg_dataset, tmp_path):
    bad = jpeg_dataset / "training" / "1_9.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(NetcompressError, match="1_9.jpg.*corrupt"):
        load_split(jpeg_dataset, "training", 32, cache_dir=tmp_path / "c", progress=False)


def test_skip_bad_leaves_the_corrupt_file_out(jpeg_dataset, tmp_path):
    (jpeg_dataset / "training" / "1_9.jpg").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipped 1 bad image"):
        split = load_split(jpeg_dataset, "training", 32, cache_dir=tmp_path / "c", skip_bad=True, progress=False)
    assert len(split) == 12 and "1_9.jpg" not in split.files


def test_grayscale_image_in_rgb_dataset_is_refused(jpeg_dataset, tmp_path):
    from PIL import Image

    Image.new("L", (30, 30)).save(jpeg_dataset / "training" / "2_9.jpg")
    with pytest.raises(NetcompressError, match="2_9.jpg.*mode is L"):
        load_split(jpeg_dataset, "training", 32, cache_dir=tmp_path / "c", progress=False)


def test_missing_split_folder(tmp_path):
    (tmp_path / "training").mkdir()
    with pytest.raises(NetcompressError, match="missing split folder .*validation"):
        load_split(tmp_path, "validation", 32, cache_dir=tmp_path / "c", progress=False)


def test_empty_split_folder(tmp_path):
    (tmp_path / "training").mkdir()
    with pytest.raises(NetcompressError, match="holds no images"):
        load_split(tmp_path, "training", 32, cache_dir=tmp_path / "c", progress=False)


def test_label_out_of_range_of_classes_txt(jpeg_dataset, tmp_path):
    from PIL import Image

    Image.new("RGB", (30, 30)).save(jpeg_dataset / "training" / "7_0.jpg")
    with pytest.raises(NetcompressError, match="7_0.jpg: label 7 is out of range"):
        load_split(jpeg_dataset, "training", 32, cache_dir=tmp_path / "c", progress=False)


def test_augmentation_off_is_identity():
    x = torch.rand(4, 3, 24, 24)
    assert torch.equal(augment_batch(x, AugmentConfig(crop_pad=0, flip=False, rotate=0)), x)


def test_crop_is_an_exact_pixel_shift():
    x = torch.rand(64, 3, 24, 24)
    y = augment_batch(x, AugmentConfig(crop_pad=3, flip=False, rotate=0), torch.Generator().manual_seed(1))
    # the center region of every image reappears shifted by whole pixels
    for i in range(len(x)):
        shifts = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
                  if torch.allclose(y[i, :, 3 - dy:21 - dy, 3 - dx:21 - dx], x[i, :, 3:21, 3:21], atol=1e-5)]
        assert shifts, f"image {i} is not a pixel-shifted crop"


def test_flip_only_mirrors():
    x = torch.rand(32, 3, 8, 8)
    y = augment_batch(x, AugmentConfig(crop_pad=0, flip=True, rotate=0), torch.Generator().manual_seed(0))
    flipped = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(32)]
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(32)]
    assert all(f or s for f, s in zip(flipped, same)) and 4 < sum(flipped) < 28


def test_iterate_batches_covers_every_image_once(jpeg_dataset, tmp_path):
    split = load_split(jpeg_dataset, "training", 16, cache_dir=tmp_path / "c", progress=False)
    batches = list(iterate_batches(split, 5, device=torch.device("cpu"), shuffle=True,
                                   generator=torch.Generator().manual_seed(0)))
    index = torch.cat([b.index for b in batches])
    assert sorted(index.tolist()) == list(range(len(split)))
    assert torch.equal(torch.cat([b.labels for b in batches]), split.labels[index])


def test_real_sample_data(food_root, cache_dir):
    split = load_split(food_root, "validation", 64, cache_dir=cache_dir, progress=False)
    assert len(split) == 750 and split.num_classes == 10
    assert np.bincount(split.labels.numpy()).tolist() == [75] * 10
