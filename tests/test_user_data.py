"""Datasets and checkpoints as users have them: layouts, channels, course files, foreign state_dicts."""

import csv
import json
import pickle
import pickletools

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import netcompress as nc
from netcompress.formats.course import import_course_checkpoint, save_course_pkl
from test_cli import netcompress


def tiny_folder(root, splits=("train", "test"), classes=("soup", "rice", "bread"), per_class=6, mode="RGB"):
    """A small dataset of real image files: class c has a bright channel c, so a few steps learn it."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 90, (28, 28, 3), dtype=np.uint8)
                pixels[..., c] += 150
                Image.fromarray(pixels).convert(mode).save(root / split / name / f"{k}.png")
    return root


def test_train_test_only_folder_trains_and_records_the_carve(tmp_path):
    data = nc.ImageFolderData(tiny_folder(tmp_path / "d"), 16, val_fraction=0.2, cache_dir=tmp_path / "c",
                              progress=False)
    best = nc.fit(nc.new_model("studentnet", data.class_names, 16, widths=[8] * 8), data, epochs=1,
                  run_dir=tmp_path / "run", progress=False)
    assert nc.spec_of(best).info.data == {"carved": {"validation": 0.2}, "carve_seed": 0}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data"]["carved"] == {"validation": 0.2}
    assert nc.spec_of(nc.load(tmp_path / "run" / "best.safetensors")).info.data["carve_seed"] == 0


@pytest.mark.slow
def test_cli_on_a_train_test_folder_and_on_grayscale_images(tmp_path):
    folder = tiny_folder(tmp_path / "gray", splits=("train", "test"), mode="L")
    run = tmp_path / "run"
    netcompress("train", "--model", "studentnet", "--data", folder, "--channels", 1, "--image-size", 16,
                "--epochs", 1, "--batch-size", 4, "--threads", 1, "--out", run, "--no-progress", cache=tmp_path / "c")
    model = nc.load(run / "best.safetensors")
    assert nc.spec_of(model).channels == 1 and model.cnn[0][0].in_channels == 1
    for method in ("slim", "l2"):  # pruning keeps the single input channel
        assert nc.prune(model, method=method, rate=0.5).cnn[0][0].in_channels == 1
    result = json.loads(netcompress("evaluate", run / "best.safetensors", "--data", folder, "--split", "testing",
                                    "--json", cache=tmp_path / "c").stdout)
    assert result["images"] == 18
    rgb = netcompress("train", "--model", "studentnet", "--data", folder, "--image-size", 16, "--epochs", 1,
                      "--batch-size", 4, "--out", tmp_path / "rgb", "--no-progress", cache=tmp_path / "c")
    assert "warning: training: converted 18 image(s) (18 L) to RGB" in rgb.stderr


def test_predict_keeps_the_id_of_a_skipped_file(jpeg_dataset, tmp_path):
    model = nc.save(nc.new_model("studentnet", ["soup", "rice", "bread"], 32), tmp_path / "m.safetensors")
    testing = jpeg_dataset / "testing"
    for f in list(testing.iterdir()):
        f.unlink()
    for k in range(4):
        Image.new("RGB", (30, 30), (k * 60, 0, 0)).save(testing / f"{k:04d}.jpg")
    (testing / "0001.jpg").write_bytes(b"not a jpeg")
    netcompress("predict", model, "--data", jpeg_dataset, "--skip-bad", "--with-filenames", "--out",
                tmp_path / "p.csv", cache=tmp_path / "c")
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[0] == ["Id", "label", "file"] and [r[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    assert rows[2] == ["1", "", "0001.jpg"] and rows[3][2] == "0002.jpg" and rows[4][1] in {"0", "1", "2"}


def test_course_pickles_are_readable_by_old_numpy_and_import(course_ckpt, tmp_path):
    model = import_course_checkpoint(course_ckpt, input_size=64)
    for protocol in (2, 3, 4, 5):
        path = save_course_pkl(model, tmp_path / f"p{protocol}.pkl", 8, protocol)
        names = {arg for _, arg, _ in pickletools.genops(path.read_bytes()) if isinstance(arg, str)}
        assert not any("numpy._core" in n for n in names), protocol  # numpy < 1.26 has no numpy._core
        assert any("numpy.core.multiarray" in n for n in names)
    netcompress("import-course", tmp_path / "p3.pkl", "--image-size", 64, "--pool-after", "0,1,2,3", "--out",
                tmp_path / "from_pkl.safetensors")
    imported = nc.load(tmp_path / "from_pkl.safetensors")
    assert nc.spec_of(imported).input_size == 64 and nc.count_parameters(imported) == 256_779
    refused = netcompress("summary", tmp_path / "p3.pkl", "--no-latency", check=False)
    assert refused.returncode == 2 and "does not record the input size" in refused.stderr


def test_a_pickled_whole_model_is_refused_without_torchs_advice(tmp_path):
    torch.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "whole.pt")
    for verb in (["import-course", tmp_path / "whole.pt", "--image-size", 32],
                 ["import-state-dict", tmp_path / "whole.pt", "--arch", "resnet18", "--image-size", 32]):
        proc = netcompress(*verb, "--out", tmp_path / "x.safetensors", check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "holds Python objects besides tensors" in proc.stderr
        assert "weights_only=False" not in proc.stderr and "\x1b[" not in proc.stderr
    assert not (tmp_path / "x.safetensors").exists()


class UserGroupCNN(nn.Module):
    """A student's own group-convolution CNN, as a course-era notebook would have defined it."""

    def __init__(self, groups: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, groups=groups), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, groups=groups), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(64, 3)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def test_a_legacy_user_checkpoint_through_every_verb(jpeg_dataset, tmp_path):
    torch.manual_seed(0)
    original = UserGroupCNN()
    torch.save(original.state_dict(), tmp_path / "gcnn.pt", _use_new_zipfile_serialization=False)  # legacy format
    model = nc.load_state_dict(tmp_path / "gcnn.pt", UserGroupCNN(), class_names=["soup", "rice", "bread"],
                               input_size=32)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), original.eval()(x))
    data = nc.ImageFolderData(jpeg_dataset, 32, cache_dir=tmp_path / "c", progress=False)
    tuned = nc.fit(model, data, epochs=1, batch_size=4, progress=False)
    student = nc.fit(UserGroupCNN(groups=2), data, epochs=1, batch_size=4, teacher=tuned, progress=False)
    pruned = nc.prune(student, method="l2", rate=0.5)
    stored = nc.quantize(pruned, codec="kbit", bits=4).save(tmp_path / "g.ncq")
    back = nc.load(stored, model=UserGroupCNN(groups=2))
    assert nc.evaluate(back, data)["images"] == 6 and len(nc.predict(back, data)) == 6
    with pytest.raises(nc.NetcompressError, match=r"(?s)classifier.weight: checkpoint \[3, 64\], model \[5, 64\].*"
                                                  r"likely fix: the checkpoint predicts 3 classes"):
        wrong = UserGroupCNN()
        wrong.classifier = nn.Linear(64, 5)
        nc.load_state_dict(tmp_path / "gcnn.pt", wrong)


def test_import_state_dict_reads_the_architecture_from_the_checkpoint(tmp_path):
    course_era = nc.create_model("groupcnn", num_classes=11, groups=4, widths=[16, 32, 64, 64, 128, 128])
    torch.save({"state_dict": {f"module.{k}": v for k, v in course_era.state_dict().items()}}, tmp_path / "g.pth",
               _use_new_zipfile_serialization=False)
    netcompress("import-state-dict", tmp_path / "g.pth", "--arch", "groupcnn", "--kwargs", '{"pool_after": [0, 1, 2, 3]}',
                "--image-size", 64, "--out", tmp_path / "g.safetensors")
    model = nc.load(tmp_path / "g.safetensors")
    spec = nc.spec_of(model)
    assert spec.kwargs["groups"] == 4 and spec.kwargs["widths"] == [16, 32, 64, 64, 128, 128] and spec.num_classes == 11
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(model(x), course_era.eval()(x))
    bad = netcompress("import-state-dict", tmp_path / "g.pth", "--arch", "groupcnn", "--kwargs", '{"groups": 2}',
                      "--image-size", 64, "--out", tmp_path / "bad.safetensors", check=False)
    assert bad.returncode == 2 and "cnn.1.0.weight: checkpoint [32, 4, 3, 3], model [32, 8, 3, 3]" in bad.stderr
    assert "groups=4" in bad.stderr


def test_studentnet_pool_positions_are_given_or_noted(course_ckpt, tmp_path):
    state = torch.load(course_ckpt, map_location="cpu", weights_only=True)
    assumed = nc.spec_of(import_course_checkpoint(course_ckpt)).info.extra["layout"]
    assert assumed.startswith("assumed, not in the file: MaxPool after blocks 0, 1, 2, 3")
    explicit = import_course_checkpoint(course_ckpt, pool_after=[0, 2, 4, 6])
    assert nc.spec_of(explicit).info.extra["layout"].startswith("given: ") and explicit.pool_after == [0, 2, 4, 6]
    ten = nc.create_model("studentnet", multipliers=[1, 2, 4, 8, 8, 8, 8, 16, 16, 16], num_classes=11)
    torch.save(ten.state_dict(), tmp_path / "ten.bin")
    assert nc.spec_of(import_course_checkpoint(tmp_path / "ten.bin")).info.extra["layout"].startswith("assumed")
    refused = netcompress("import-course", tmp_path / "ten.bin", "--image-size", 64, "--out",
                          tmp_path / "ten.safetensors", check=False)
    assert refused.returncode == 2 and "rerun with `--pool-after 0,1,2,3`" in refused.stderr
    assert not (tmp_path / "ten.safetensors").exists()
    proc = netcompress("import-course", tmp_path / "ten.bin", "--image-size", 64, "--pool-after", "0,1,2,3",
                       "--out", tmp_path / "ten.safetensors")
    assert nc.spec_of(nc.load(tmp_path / "ten.safetensors")).kwargs["pool_after"] == [0, 1, 2, 3], proc.stdout
    assert len(state) == 72


def test_onnx_export_with_dynamic_height_and_width(tmp_path):
    from netcompress.formats.onnx import load_onnx

    model = nc.new_model("studentnet", list("abc"), 32, widths=[8] * 8)
    path = nc.export_onnx(model, tmp_path / "d.onnx", dynamic_size=True)
    runtime = load_onnx(path, threads=1)
    for size in (32, 48):
        x = torch.rand(2, 3, size, size)
        assert torch.allclose(runtime(x), model.eval()(x), atol=1e-5)
    assert nc.spec_of(runtime).info.exported["onnx"] == {"input_size": 32, "dynamic_size": True}


def test_threads_option_sets_torch_threads(tmp_path):
    from typer.testing import CliRunner

    from netcompress.cli import app

    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["summary", "studentnet", "--image-size", "32", "--threads", "1",
                                          "--no-latency", "--json"])
        assert result.exit_code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    bad = netcompress("summary", "studentnet", "--threads", 0, "--no-latency", check=False)
    assert bad.returncode == 2 and "--threads 0 must be >= 1" in bad.stderr


def test_course_pickle_is_not_code(tmp_path):
    """The course's pickle format stays data only, whatever protocol: the unpickler refuses anything else."""
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"cnn.0.0.weight": print}, protocol=3))
    proc = netcompress("import-course", path, "--image-size", 32, "--out", tmp_path / "x.safetensors", check=False)
    assert proc.returncode == 2 and "refused to load" in proc.stderr
