import json

import pytest
import torch

from netcompress.artifact import load_model, new_model
from netcompress.augment import AugmentConfig
from netcompress.data import Split, load_split
from netcompress.errors import NetcompressError
from netcompress.train import TrainConfig, fit

CPU = torch.device("cpu")


def synthetic_split(name: str, n: int, seed: int) -> Split:
    """Images whose brightest color channel is the class: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = (torch.rand(n, 3, 32, 32, generator=g) * 100).to(torch.uint8)
    images[torch.arange(n), labels] += 120  # class k: a brighter channel k
    return Split(name, images, labels, [f"{y}_{i}.jpg" for i, y in enumerate(labels.tolist())], ["a", "b", "c"])


def small_config(epochs: int, batch_size: int = 16) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=3e-3, augment=AugmentConfig(crop_pad=2))


def test_fit_learns_and_keeps_the_best_model(tmp_path):
    net, spec = new_model("studentnet", ["a", "b", "c"], 32, widths=[8, 8, 16, 16, 16, 16, 16, 16])
    # enough steps (96) for BatchNorm's running statistics to forget their initial values
    result = fit(net, spec, synthetic_split("training", 192, 0), synthetic_split("validation", 30, 1), small_config(4, 8),
                 tmp_path, device=CPU, progress=False)
    assert result.best_accuracy > 0.6
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    best = max(rows, key=lambda r: r["val_accuracy"])
    _, spec = load_model(result.model_path)
    assert spec.info["val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-4)


def test_interrupted_training_resumes_from_the_last_finished_epoch(tmp_path):
    train, val = synthetic_split("training", 64, 0), synthetic_split("validation", 30, 1)
    widths = [8, 8, 16, 16, 16, 16, 16, 16]

    def fresh():
        torch.manual_seed(0)
        return new_model("studentnet", ["a", "b", "c"], 32, widths=widths)

    # uninterrupted reference
    ref_net, ref_spec = fresh()
    fit(ref_net, ref_spec, train, val, small_config(3), tmp_path / "ref", device=CPU, progress=False)

    # the same run, killed in the middle of epoch 3
    steps = {"n": 0}

    def crash(_model):
        steps["n"] += 1
        if steps["n"] == 2 * 4 + 2:  # 4 steps per epoch: two epochs done, two steps into the third
            raise KeyboardInterrupt

    net, spec = fresh()
    with pytest.raises(KeyboardInterrupt):
        fit(net, spec, train, val, small_config(3), tmp_path / "run", device=CPU, progress=False, after_step=crash)
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]

    net, spec = fresh()  # a new process would start from a fresh model too
    result = fit(net, spec, train, val, small_config(3), tmp_path / "run", device=CPU, progress=False)
    assert result.epochs_run == 1
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for k, v in ref_net.state_dict().items():
        assert torch.allclose(net.state_dict()[k].float(), v.float(), atol=1e-6), k


def test_resume_with_other_settings_is_refused(tmp_path):
    net, spec = new_model("studentnet", ["a", "b", "c"], 32, widths=[8, 8, 8, 8, 8, 8, 8, 8])
    train, val = synthetic_split("training", 32, 0), synthetic_split("validation", 12, 1)
    fit(net, spec, train, val, small_config(1), tmp_path, device=CPU, progress=False)
    cfg = small_config(1)
    cfg.lr = 0.1
    with pytest.raises(NetcompressError, match="lr"):
        fit(net, spec, train, val, cfg, tmp_path, device=CPU, progress=False)


def test_class_count_mismatch_is_refused(tmp_path):
    net, spec = new_model("studentnet", ["a", "b"], 32)
    with pytest.raises(NetcompressError, match="2 classes but the data has 3"):
        fit(net, spec, synthetic_split("training", 8, 0), synthetic_split("validation", 6, 1), small_config(1),
            tmp_path, device=CPU, progress=False)


@pytest.mark.slow
def test_studentnet_learns_the_real_food_photos(food_root, cache_dir, tmp_path):
    train = load_split(food_root, "training", 48, cache_dir=cache_dir, progress=False)
    val = load_split(food_root, "validation", 48, cache_dir=cache_dir, progress=False)
    net, spec = new_model("studentnet", train.class_names, 48)
    result = fit(net, spec, train, val, TrainConfig(epochs=3, batch_size=64), tmp_path, device=CPU, progress=False)
    assert result.best_accuracy > 0.2  # chance is 0.1


def test_bf16_autocast_training_learns_and_keeps_fp32_weights(tmp_path):
    net, spec = new_model("studentnet", ["a", "b", "c"], 32, widths=[8, 8, 16, 16, 16, 16, 16, 16])
    cfg = small_config(4, 8)
    cfg.precision = "bf16"
    result = fit(net, spec, synthetic_split("training", 192, 0), synthetic_split("validation", 30, 1), cfg,
                 tmp_path, device=CPU, progress=False)
    assert result.best_accuracy > 0.6
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_bad_precision_is_refused(tmp_path):
    cfg = small_config(1)
    cfg.precision = "fp8"
    with pytest.raises(NetcompressError, match="precision"):
        cfg.check()
