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
    assert len(list(cache.glob("*/images.npy"))) == 1
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


def test_grayscale_and_palette_images_are_converted_with_a_note(jpeg_dataset, tmp_path):
    from PIL import Image

    Image.new("L", (30, 30), 77).save(jpeg_dataset / "training" / "2_9.jpg")
    Image.new("P", (30, 30)).save(jpeg_dataset / "training" / "2_8.png")
    with pytest.warns(UserWarning, match=r"converted 2 image\(s\) \(1 L, 1 P\) to RGB"):
        split = load_split(jpeg_dataset, "training", 32, cache_dir=tmp_path / "c", progress=False)
    gray = split.images[split.files.index("2_9.jpg")]
    assert len(split) == 14 and torch.equal(gray[0], gray[1]) and int(gray[0, 5, 5]) == 77


def test_no_test_split_is_a_clear_error(tmp_path):
    (tmp_path / "validation").mkdir()  # no training folder to carve one from
    with pytest.raises(NetcompressError, match="has no testing split: add a testing/test folder"):
        load_split(tmp_path, "testing", 32, cache_dir=tmp_path / "c", progress=False)


def test_empty_split_folder(tmp_path):
    (tmp_path / "training").mkdir()
    with pytest.raises(NetcompressError, match="training holds no images"):
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


# --- layouts as users have them ---------------------------------------------------------------

def write_images(folder, names, size=(24, 20), mode="RGB"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(map(ord, str(folder))))
    for name in names:
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(folder / name)


def test_train_test_only_folder_carves_a_stratified_seeded_validation_split(tmp_path):
    from netcompress.data.folder import ImageFolderData

    for cls in ("apple", "bread", "cake"):
        write_images(tmp_path / "train" / cls, [f"{i}.png" for i in range(20)])
        write_images(tmp_path / "test" / cls, [f"{i}.png" for i in range(4)])
    data = ImageFolderData(tmp_path, 16, val_fraction=0.25, cache_dir=tmp_path / "c", progress=False)
    train, val, test = data.split("training"), data.split("validation"), data.split("testing")
    assert (len(train), len(val), len(test)) == (45, 15, 12)
    assert np.bincount(val.labels.numpy()).tolist() == [5, 5, 5]
    assert not {x.numpy().tobytes() for x in train.images} & {x.numpy().tobytes() for x in val.images}
    assert data.provenance == {"carved": {"validation": 0.25}, "carve_seed": 0}
    again = ImageFolderData(tmp_path, 16, val_fraction=0.25, cache_dir=tmp_path / "c", progress=False)
    assert torch.equal(again.split("validation").images, val.images)  # the same carve on every rerun
    other = ImageFolderData(tmp_path, 16, val_fraction=0.25, seed=1, cache_dir=tmp_path / "c", progress=False)
    assert not torch.equal(other.split("validation").images, val.images)


def test_one_folder_of_class_folders_carves_validation_and_test(tmp_path):
    from netcompress.data.folder import ImageFolderData

    for cls in ("a", "b"):
        write_images(tmp_path / cls, [f"{i}.jpg" for i in range(10)])
    (tmp_path / ".ipynb_checkpoints").mkdir()  # hidden folders are no classes
    data = ImageFolderData(tmp_path, 16, cache_dir=tmp_path / "c", progress=False)
    sizes = [len(data.split(s)) for s in ("training", "validation", "testing")]
    assert sizes == [16, 2, 2] and data.class_names == ["a", "b"] and data.split("testing").labeled


def test_split_folder_aliases_and_class_indices_from_every_split(tmp_path):
    """A validation split that lacks class 'b' must not shift 'c' onto index 1."""
    for cls in ("a", "b", "c"):
        write_images(tmp_path / "train" / cls, ["x.jpg", "y.jpg"])
    for cls in ("a", "c"):
        write_images(tmp_path / "val" / cls, ["z.jpg"])
    val = load_split(tmp_path, "validation", 16, cache_dir=tmp_path / "c", progress=False)
    assert val.class_names == ["a", "b", "c"] and val.labels.tolist() == [0, 2]


def test_labels_from_a_csv(tmp_path):
    write_images(tmp_path / "training", ["p1.jpg", "p2.jpg", "p3.jpg"])
    write_images(tmp_path / "validation", ["q1.jpg"])
    (tmp_path / "labels.csv").write_text("file,label,source\ntraining/p1.jpg,soup,x\ntraining/p2.jpg,rice,x\n"
                                         "p3.jpg,soup,y\nvalidation/q1.jpg,rice,z\n")
    train = load_split(tmp_path, "training", 16, labels_csv=tmp_path / "labels.csv", cache_dir=tmp_path / "c",
                       progress=False)
    assert train.class_names == ["rice", "soup"] and train.labels.tolist() == [1, 0, 1]
    (tmp_path / "bad.csv").write_text("path,class\n")
    with pytest.raises(NetcompressError, match="bad.csv: needs a header row with the columns file and label"):
        load_split(tmp_path, "training", 16, labels_csv=tmp_path / "bad.csv", progress=False)


def test_one_channel_datasets(tmp_path):
    from netcompress.data.folder import ImageFolderData

    for cls in ("0", "1"):
        write_images(tmp_path / "training" / cls, ["a.png", "b.png"], mode="L")
        write_images(tmp_path / "validation" / cls, ["c.png"], mode="L")
    data = ImageFolderData(tmp_path, 16, channels=1, cache_dir=tmp_path / "c", progress=False)
    assert data.split("training").images.shape == (4, 1, 16, 16)
    with pytest.warns(UserWarning, match=r"converted 4 image\(s\) \(4 L\) to RGB"):
        assert ImageFolderData(tmp_path, 16, cache_dir=tmp_path / "c", progress=False).split(
            "training").images.shape == (4, 3, 16, 16)
    with pytest.raises(NetcompressError, match="--channels 2: use 3"):
        ImageFolderData(tmp_path, 16, channels=2)


def test_skip_bad_skips_unlabeled_and_out_of_range_files(jpeg_dataset, tmp_path):
    from PIL import Image

    for name in ("cat_1.jpg", "7_0.jpg", "²_0.jpg"):
        Image.new("RGB", (30, 30)).save(jpeg_dataset / "training" / name)
    with pytest.raises(NetcompressError, match="7_0.jpg: label 7 is out of range"):
        load_split(jpeg_dataset, "training", 32, cache_dir=tmp_path / "c", progress=False)
    with pytest.warns(UserWarning, match="skipped 3 unlabeled or mislabeled file"):
        split = load_split(jpeg_dataset, "training", 32, cache_dir=tmp_path / "c", skip_bad=True, progress=False)
    assert len(split) == 12


def test_non_regular_files_are_never_opened(jpeg_dataset, tmp_path):
    import os

    os.mkfifo(jpeg_dataset / "training" / "0_900.jpg")
    os.symlink(jpeg_dataset / "nowhere.jpg", jpeg_dataset / "training" / "0_901.jpg")
    split = load_split(jpeg_dataset, "training", 32, cache_dir=tmp_path / "c", progress=False)
    assert len(split) == 12 and "0_900.jpg" not in split.files
