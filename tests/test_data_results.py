"""Inputs that used to give a silently wrong result: each now gives the right one or a clear refusal."""

import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

import netcompress as nc
from netcompress.data.cache import decode_files
from netcompress.data.decode import decode_image
from netcompress.data.labels import read_labels_csv
from netcompress.data.split import Split
from netcompress.measure.evaluate import data_order
from netcompress.spec import ModelSpec, attach


@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_grayscale_png_decodes_to_its_8_bit_values(tmp_path, channels):
    eight = np.arange(256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(eight * 257).save(tmp_path / "g16.png")  # 16-bit: 0..65535
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    pixels, converted = decode_image(tmp_path / "g16.png", 16, channels)
    assert converted is not None and converted.startswith("I")
    assert np.array_equal(pixels[..., 0], eight.astype(np.uint8))
    assert all(np.array_equal(pixels[..., c], pixels[..., 0]) for c in range(channels))


def test_an_8_bit_grayscale_png_is_unchanged(tmp_path):
    eight = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(eight).save(tmp_path / "g8.png")
    assert np.array_equal(decode_image(tmp_path / "g8.png", 16, 1)[0][..., 0], eight)


@pytest.mark.parametrize("rows, message", [
    ("a.jpg,cat\nb.jpg,dog\na.jpg,dog\n", r"labels.csv: line 4 labels a.jpg 'dog' but line 2 labels it 'cat'; keep one"),
    ("a.jpg,cat\nsub\\a.jpg,cat\nsub/a.jpg,dog\n", r"line 4 labels sub/a.jpg 'dog' but line 3 labels it 'cat'"),
])
def test_a_labels_csv_with_conflicting_rows_is_refused_naming_the_line(tmp_path, rows, message):
    (tmp_path / "labels.csv").write_text("file,label\n" + rows)
    with pytest.raises(nc.NetcompressError, match=message):
        read_labels_csv(tmp_path / "labels.csv")


def test_a_labels_csv_repeating_a_row_identically_is_read(tmp_path):
    (tmp_path / "labels.csv").write_text("file,label\na.jpg,cat\nb.jpg,dog\na.jpg,cat\n")
    assert read_labels_csv(tmp_path / "labels.csv") == {"a.jpg": "cat", "b.jpg": "dog"}


@pytest.mark.parametrize("model_classes, data_classes, order", [
    (["a", "b", "c"], ["a", "b", "c"], None),
    (["a", "b", "c"], ["c", "a", "b"], [2, 0, 1]),
    (["0", "1", "2"], ["a", "b", "c"], None),  # a model without names: its outputs are only numbered
    (["a", "b", "c"], ["0", "1", "2"], None),
    ([], ["a", "b"], None),
])
def test_the_data_order_of_a_models_outputs(model_classes, data_classes, order):
    assert data_order(model_classes, data_classes) == order


def test_a_model_of_other_classes_is_refused_not_scored_shifted():
    with pytest.raises(nc.NetcompressError, match=r"the model's classes \(a, b, c\) are not the data's \(b, c, d\): "
                                                  r"the data has d that the model lacks, and the model has a that"):
        data_order(["a", "b", "c"], ["b", "c", "d"])


def _split(class_names, labels):
    images = torch.zeros(len(labels), 3, 8, 8, dtype=torch.uint8)
    return Split("validation", images, torch.tensor(labels), [f"{i}.png" for i in range(len(labels))], class_names)


class Fixed(torch.nn.Module):
    """Always predicts output 0."""

    def forward(self, x):
        return torch.tensor([[5.0, 0.0, 0.0]]).expand(len(x), 3)


def test_evaluate_scores_a_model_whose_classes_come_in_another_order(tmp_path):
    model = attach(Fixed(), ModelSpec(None, {}, ["a", "b", "c"], 8))
    # the data lists c, a, b: output 0 ("a") is the data's class 1
    assert nc.evaluate(model, _split(["c", "a", "b"], [1, 1, 0]), "validation")["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(nc.NetcompressError, match="are not the data's"):
        nc.evaluate(model, _split(["b", "c", "d"], [0, 1, 2]), "validation")


def test_an_image_edited_in_place_with_its_size_and_mtime_kept_is_decoded_again(tmp_path):
    path = tmp_path / "0.bmp"
    Image.fromarray(np.full((8, 8, 3), 10, np.uint8)).save(path)
    first = decode_files("t", [path], [0], ["a"], 8, cache_dir=tmp_path / "cache", progress=False)
    st = path.stat()
    time.sleep(0.05)  # an edit comes later than the file: past the kernel's clock tick (a few ms)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(path)  # same size in bytes: a BMP of the same shape
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    second = decode_files("t", [path], [0], ["a"], 8, cache_dir=tmp_path / "cache", progress=False)
    assert int(first.images[0].float().mean()) == 10 and int(second.images[0].float().mean()) == 200


@pytest.mark.parametrize("suffix", [".gif", ".tif"])
def test_a_class_folder_of_only_gif_or_tif_images_is_a_class(tmp_path, suffix):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        for i in range(10):
            image = Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8))
            image.save(tmp_path / name / f"{i}{suffix if name == 'c' else '.png'}")
    data = nc.ImageFolderData(tmp_path, 8, progress=False)
    labels = [data.split(s).labels.tolist() for s in ("training", "validation", "testing")]
    assert data.class_names == ["a", "b", "c"] and sum(split.count(2) for split in labels) == 10


@pytest.mark.parametrize("classes", [10_001, 70_000])
def test_a_model_of_many_classes_loads_as_it_was_written(tmp_path, classes):
    model = nc.new_model("studentnet", [f"c{i}" for i in range(classes)], 16, widths=[8] * 8)
    back = nc.load(nc.save(model, tmp_path / "m.safetensors"))
    assert nc.spec_of(back).num_classes == classes


def test_training_on_more_classes_than_a_model_file_holds_is_refused_first(monkeypatch):
    from netcompress.formats import integrity
    from netcompress.train import fit as fit_module

    monkeypatch.setattr(fit_module, "MAX_CLASSES", 2)
    monkeypatch.setattr(integrity, "MAX_CLASSES", 2)
    with pytest.raises(nc.NetcompressError, match="the data has 3 classes; model files hold at most 2"):
        nc.fit(nc.new_model("studentnet", ["a", "b", "c"], 8), _split(["a", "b", "c"], [0, 1, 2]), epochs=1)
