import json

import pytest
import torch
import torch.nn as nn

import netcompress as nc
from netcompress.data.split import Split

CPU = torch.device("cpu")


def synthetic_split(name: str, n: int, seed: int) -> Split:
    """Images whose brightest color channel is the class: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = (torch.rand(n, 3, 32, 32, generator=g) * 100).to(torch.uint8)
    images[torch.arange(n), labels] += 120  # class k: a brighter channel k
    return Split(name, images, labels, [f"{y}_{i}.jpg" for i, y in enumerate(labels.tolist())], ["a", "b", "c"])


def small_config(epochs: int, batch_size: int = 16, **changes) -> nc.TrainConfig:
    return nc.TrainConfig(epochs=epochs, batch_size=batch_size, lr=3e-3, augment=nc.AugmentConfig(crop_pad=2), **changes)


def student(widths=(8, 8, 16, 16, 16, 16, 16, 16), classes=("a", "b", "c")):
    return nc.new_model("studentnet", list(classes), 32, widths=list(widths))


def test_fit_learns_and_keeps_the_best_model(tmp_path):
    # enough steps (96) for BatchNorm's running statistics to forget their initial values
    best = nc.fit(student(), synthetic_split("training", 192, 0), small_config(4, 8),
                  val=synthetic_split("validation", 30, 1), run_dir=tmp_path, device=CPU, progress=False)
    assert nc.spec_of(best).info.val_accuracy > 0.6
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    top = max(rows, key=lambda r: r["val_accuracy"])
    saved = nc.load(tmp_path / "best.safetensors")
    assert nc.spec_of(saved).info.val_accuracy == pytest.approx(top["val_accuracy"], abs=1e-4)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(saved(x), best.eval()(x))  # the returned model is the file's


def test_fit_never_changes_its_argument_and_needs_no_run_dir():
    net = student()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    best = nc.fit(net, synthetic_split("training", 64, 0), small_config(2), val=synthetic_split("validation", 12, 1),
                  device=CPU, progress=False)
    assert best is not net and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in best.state_dict().items())


def test_precise_bn_leaves_the_statistics_of_the_trained_weights():
    train = synthetic_split("training", 64, 0)
    best = nc.fit(student(), train, small_config(1, precise_bn=64), val=synthetic_split("validation", 12, 1),
                  device=CPU, progress=False)
    conv, norm = best.cnn[0][0], best.cnn[0][1]
    with torch.no_grad():
        expected = conv(train.images.float() / 255).mean(dim=(0, 2, 3))
    assert torch.allclose(norm.running_mean, expected, atol=1e-4)


def test_fit_trains_a_users_own_module_on_a_torch_dataset():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    train, val = synthetic_split("training", 48, 0), synthetic_split("validation", 12, 1)
    dataset = torch.utils.data.TensorDataset(train.images.float() / 255, train.labels)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(val.images.float() / 255, val.labels),
                                         batch_size=5)
    best = nc.fit(Tiny(), dataset, epochs=1, val=loader, device=CPU, progress=False)
    spec = nc.spec_of(best)
    assert isinstance(best, Tiny) and spec.arch is None and spec.input_size == 32 and spec.num_classes == 3


@pytest.mark.parametrize("average", [0.0, 0.5])  # 0.5: the weights' moving average is resumed too
def test_interrupted_training_resumes_from_the_last_finished_epoch(tmp_path, average):
    train, val = synthetic_split("training", 64, 0), synthetic_split("validation", 30, 1)

    def fresh():
        torch.manual_seed(0)
        return student()

    cfg = small_config(3, average_epochs=average)
    reference = nc.fit(fresh(), train, cfg, val=val, run_dir=tmp_path / "ref", device=CPU, progress=False)

    steps = {"n": 0}

    def crash(_model):
        steps["n"] += 1
        if steps["n"] == 2 * 4 + 2:  # 4 steps per epoch: two epochs done, two steps into the third
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nc.fit(fresh(), train, cfg, val=val, run_dir=tmp_path / "run", device=CPU, progress=False,
               after_step=crash)
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]

    resumed = nc.fit(fresh(), train, cfg, val=val, run_dir=tmp_path / "run", device=CPU, progress=False)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    last = {k: torch.load(p / "state.pt", weights_only=True)["model"] for k, p in (("ref", tmp_path / "ref"),
                                                                                  ("run", tmp_path / "run"))}
    for k, v in last["ref"].items():
        assert torch.allclose(last["run"][k].float(), v.float(), atol=1e-6), k
    for k, v in reference.state_dict().items():
        assert torch.allclose(resumed.state_dict()[k].float(), v.float(), atol=1e-6), k


def test_fit_with_average_epochs_returns_the_moving_average_of_every_step():
    """The returned model is the average of the weights after each optimizer step, as WeightAverage says,
    recomputed here from the live weights after_step sees; integer entries (BatchNorm's counter) follow the live."""
    train, net = synthetic_split("training", 64, 0), student()
    seen = []
    averaged = nc.fit(net, train, small_config(2, average_epochs=0.5), device=CPU, progress=False,  # 4 steps/epoch
                      after_step=lambda m: seen.append({k: v.detach().clone() for k, v in m.state_dict().items()}))
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    for step, live in enumerate(seen, 1):
        decay = min(1 - 1 / (0.5 * 4), 1 - 1 / step)
        expected = {k: (v.lerp(live[k], 1 - decay) if v.is_floating_point() else live[k]) for k, v in expected.items()}
    assert len(seen) == 8
    final = averaged.state_dict()
    for key, value in expected.items():
        assert torch.allclose(final[key].float(), value.float(), atol=1e-6), key
    assert any(not torch.allclose(final[k], v) for k, v in seen[-1].items() if v.is_floating_point())


def test_weight_average_is_the_mean_of_the_steps_until_its_span_then_exponential():
    from netcompress.train.average import WeightAverage

    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(100.0)  # the starting weights never weigh in
    average = WeightAverage(net, epochs=1, steps_per_epoch=4)  # decay 0.75 from the 4th step on
    for value in [1.0, 2.0, 3.0, 4.0]:
        with torch.no_grad():
            net.weight.fill_(value)
        average.update(net)
    assert average.state["weight"].item() == pytest.approx(2.5)  # the mean of the 4 steps
    with average.applied(net):
        assert net.weight.item() == pytest.approx(2.5)
    assert net.weight.item() == 4.0  # the live weights come back after the block
    with torch.no_grad():
        net.weight.fill_(6.5)
    average.update(net)
    assert average.state["weight"].item() == pytest.approx(0.75 * 2.5 + 0.25 * 6.5)


def test_resume_with_other_settings_is_refused(tmp_path):
    train, val = synthetic_split("training", 32, 0), synthetic_split("validation", 12, 1)
    nc.fit(student([8] * 8), train, small_config(1), val=val, run_dir=tmp_path, device=CPU, progress=False)
    with pytest.raises(nc.NetcompressError, match="lr"):
        nc.fit(student([8] * 8), train, small_config(1), val=val, run_dir=tmp_path, device=CPU, progress=False, lr=0.1)


def test_class_count_mismatch_is_refused(tmp_path):
    with pytest.raises(nc.NetcompressError, match="2 classes but the data has 3"):
        nc.fit(student(classes="ab"), synthetic_split("training", 8, 0), small_config(1),
               val=synthetic_split("validation", 6, 1), device=CPU, progress=False)
    wrong_head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5))
    with pytest.raises(nc.NetcompressError, match=r"outputs shape \[2, 5\] but the data has 3 classes"):
        nc.fit(wrong_head, synthetic_split("training", 8, 0), small_config(1), device=CPU, progress=False)


@pytest.mark.slow
def test_studentnet_learns_the_real_food_photos(food_root, cache_dir, tmp_path):
    data = nc.ImageFolderData(food_root, 48, cache_dir=cache_dir, progress=False)
    net = nc.new_model("studentnet", data.class_names, 48)
    best = nc.fit(net, data, nc.TrainConfig(epochs=3, batch_size=64), run_dir=tmp_path, device=CPU, progress=False)
    assert nc.spec_of(best).info.val_accuracy > 0.2  # chance is 0.1


def test_bf16_autocast_training_learns_and_keeps_fp32_weights(tmp_path):
    best = nc.fit(student(), synthetic_split("training", 192, 0), small_config(4, 8, precision="bf16"),
                  val=synthetic_split("validation", 30, 1), run_dir=tmp_path, device=CPU, progress=False)
    assert nc.spec_of(best).info.val_accuracy > 0.6
    assert all(p.dtype == torch.float32 for p in best.parameters())


@pytest.mark.parametrize("field, value", [("precision", "fp8"), ("epochs", 0), ("seed", 1.7), ("lr", float("inf")),
                                          ("precise_bn", -1), ("average_epochs", -0.5)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(nc.NetcompressError, match=field):
        nc.TrainConfig(**{field: value})
