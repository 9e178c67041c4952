import json

import pytest
import torch
import torch.nn as nn
from test_train import synthetic_split

import netcompress as nc
from netcompress.compress.pruners import apply_masks, magnitude_masks
from netcompress.models.studentnet import course_widths_at, slim_studentnet
from netcompress.formats.course import import_course_checkpoint
from netcompress.measure.cost import zero_fraction

CPU = torch.device("cpu")


def course_network_slimming(old_model, new_model):
    """The course's own HW7 code (comments translated), kept verbatim in logic: the reference to match."""
    params = old_model.state_dict()
    new_params = new_model.state_dict()
    selected_idx = []
    for i in range(8):
        importance = params[f"cnn.{i}.1.weight"]
        new_dim = len(new_params[f"cnn.{i}.1.weight"])
        ranking = torch.argsort(importance, descending=True)
        selected_idx.append(ranking[:new_dim])
    now_processed = 1
    for (name, p1), (name2, p2) in zip(params.items(), new_params.items()):
        if name.startswith("cnn") and p1.size() != torch.Size([]) and now_processed != len(selected_idx):
            if name.startswith(f"cnn.{now_processed}.3"):
                now_processed += 1
            if name.endswith("3.weight"):
                if len(selected_idx) == now_processed:
                    new_params[name] = p1[:, selected_idx[now_processed - 1]]
                else:
                    new_params[name] = p1[selected_idx[now_processed]][:, selected_idx[now_processed - 1]]
            else:
                new_params[name] = p1[selected_idx[now_processed]]
        else:
            new_params[name] = p1
    new_model.load_state_dict(new_params)
    return new_model, selected_idx


@pytest.mark.parametrize("step", [1, 3, 5])
def test_slim_picks_exactly_the_course_channels(course_ckpt, step):
    model = import_course_checkpoint(course_ckpt, input_size=64)
    widths = course_widths_at(model.widths, 0.95, step)
    ours = slim_studentnet(model, widths)
    course_new = nc.new_model("studentnet", nc.spec_of(model).class_names, 64, widths=widths).eval()
    course_new, selected = course_network_slimming(model, course_new)
    # the same channels survive in every block (the course also reorders the unpruned ones)
    for block in range(1, 8):
        gamma = model.cnn[block][1].weight.detach()
        kept_by_course = set(selected[block].tolist())
        kept_by_us = {i for i in range(len(gamma)) if any(torch.equal(gamma[i], g) for g in ours.cnn[block][1].weight)}
        assert kept_by_us == kept_by_course, block
    x = torch.rand(4, 3, 64, 64)
    assert torch.allclose(ours(x), course_new(x), atol=1e-4)
    assert ours.widths == widths


def test_repeated_prune_steps_follow_the_course_schedule(course_ckpt):
    model = import_course_checkpoint(course_ckpt, input_size=64)
    for step in (1, 2, 3):
        model = nc.prune(model, method="slim", rate=0.95)
        assert nc.spec_of(model).kwargs["widths"] == course_widths_at([16, 32, 64, 128, 256, 256, 256, 256], 0.95, step)
    assert nc.spec_of(model).info.pruned.step == 3


def test_course_width_schedule():
    assert course_widths_at([16, 32, 64, 128, 256, 256, 256, 256], 0.95, 1) == [16, 32, 64, 121, 243, 243, 243, 256]
    assert course_widths_at([16, 32, 64, 128, 256, 256, 256, 256], 0.95, 5)[3:7] == [99, 198, 198, 198]


def test_pruned_studentnet_file_round_trips(course_ckpt, tmp_path):
    model = import_course_checkpoint(course_ckpt, input_size=64)
    pruned = nc.prune(nc.prune(model, method="slim", rate=0.5), method="slim", rate=0.5)
    loaded = nc.load(nc.save(pruned, tmp_path / "p.safetensors"))
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(loaded(x), pruned.eval()(x))
    assert nc.spec_of(loaded).kwargs["widths"] == [16, 32, 64, 32, 64, 64, 64, 256]
    assert nc.count_parameters(loaded) < nc.count_parameters(model) / 2


def test_prune_leaves_its_argument_alone():
    model = nc.new_model("resnet18", list("abcde"), 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nc.prune(model, method="l2", rate=0.5)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_resnet18_prunes_saves_and_loads_with_residuals(tmp_path):
    torch.manual_seed(0)
    model = nc.new_model("resnet18", list("abcde"), 32)
    pruned = nc.prune(model, nc.PruneConfig(method="l2", rate=0.5))
    assert nc.count_parameters(pruned) < 0.3 * nc.count_parameters(model)  # half the channels: a quarter of weights
    assert pruned.layer1[0].conv1.out_channels == 32
    assert nc.spec_of(pruned).overrides
    loaded = nc.load(nc.save(pruned, tmp_path / "r.safetensors"))
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x), pruned.eval()(x), atol=1e-5)


def test_pruned_layers_keep_their_class_when_loaded(tmp_path):
    """EfficientNet-Lite's convs subclass Conv2d to pad like TensorFlow's SAME: a reloaded pruned model must too."""
    torch.manual_seed(0)
    model = nc.new_model("efficientnet_lite0", list("abcde"), 64, pretrained=False)
    pruned = nc.prune(model, method="l2", rate=0.5)
    loaded = nc.load(nc.save(pruned, tmp_path / "lite.safetensors"))
    stem = pruned.get_submodule("net._conv_stem")
    assert type(loaded.get_submodule("net._conv_stem")) is type(stem) and stem.out_channels == 16
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(loaded(x), pruned.eval()(x), atol=1e-5)


def test_a_resized_layer_must_exist_with_its_kind_in_the_base():
    from netcompress.models.surgery import apply_overrides

    desc = {"type": "Linear", "in_features": 4, "out_features": 2, "bias": True, "resized": True}
    net = apply_overrides(nn.Sequential(nn.Linear(8, 3)), {"0": desc})
    assert net[0].weight.shape == (2, 4) and net[0].in_features == 4
    with pytest.raises(nc.NetcompressError, match="layer '0' \\(a Conv2d\\) into a Linear"):
        apply_overrides(nn.Sequential(nn.Conv2d(8, 3, 1)), {"0": desc})
    block = {"type": "Sequential", "layers": [desc], "resized": True}
    with pytest.raises(nc.NetcompressError, match="into a Sequential"):
        apply_overrides(nn.Sequential(nn.Sequential(nn.Linear(8, 3))), {"0": block})


@pytest.mark.parametrize("method", ["slim", "l1", "taylor"])
def test_torch_pruning_methods_on_studentnet(method):
    model = nc.new_model("studentnet", list("abc"), 32)
    for m in model.modules():  # trained BatchNorms have distinct γ; fresh ones all start at 1
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.1, 1.0)
    pruned = nc.prune(model, method=method, rate=0.5, global_ranking=True, data=synthetic_split("training", 64, 0))
    widths = nc.spec_of(pruned).kwargs["widths"]
    assert sum(widths) < 0.75 * sum(model.widths) and widths == pruned.widths
    assert pruned(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_pruning_with_data_recomputes_the_batchnorm_statistics():
    """The first BatchNorm after pruning holds the mean of its pruned conv's outputs over the training images."""
    torch.manual_seed(0)
    model = nc.new_model("resnet18", ["a", "b", "c"], 32)
    train = synthetic_split("training", 128, 0)
    pruned = nc.prune(model, method="l2", rate=0.5, data=train, recalibrate=128)
    stale = nc.prune(model, method="l2", rate=0.5, recalibrate=128)  # no data: nothing to recompute them from
    with torch.no_grad():
        features = pruned.conv1(train.images.float() / 255)
    expected = features.mean(dim=(0, 2, 3))
    assert torch.allclose(pruned.bn1.running_mean, expected, atol=1e-4)
    assert not torch.allclose(stale.bn1.running_mean, expected, atol=1e-2)
    assert pruned.bn1.momentum == model.bn1.momentum


@pytest.mark.parametrize("rate", [0.0, 1.0, 1.5, -0.2])
def test_rate_outside_0_1_is_refused(rate):
    with pytest.raises(nc.NetcompressError, match="rate"):
        nc.PruneConfig(rate=rate)


def test_negative_recalibration_is_refused():
    with pytest.raises(nc.NetcompressError, match="recalibrate"):
        nc.PruneConfig(recalibrate=-1)


def test_unknown_method_lists_the_registry():
    with pytest.raises(nc.NetcompressError, match="choose one of slim, l1, l2, taylor, magnitude"):
        nc.PruneConfig(method="random")


def test_slim_needs_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(nc.NetcompressError, match="no BatchNorm"):
        nc.prune(model, method="slim", example_input=torch.rand(1, 3, 16, 16))


def test_a_new_method_is_one_class_and_one_registration():
    @nc.register_pruner
    class FirstChannels(nc.Pruner):  # keeps the first channels of every conv: the simplest structured rule
        name = "first-channels-test"

        def prune(self, model, cfg, *, step, example_input, data):
            import torch_pruning as tp

            ranking = type("Importance", (tp.importance.Importance,), {
                "__call__": lambda self, group: -torch.arange(len(group[0].idxs), dtype=torch.float)})()
            tp.pruner.MetaPruner(model, example_input, importance=ranking, pruning_ratio=1 - cfg.rate,
                                 ignored_layers=[model.fc]).step()
            return model

    model = _TinyNet()
    pruned = nc.prune(model, method="first-channels-test", rate=0.5, example_input=torch.rand(1, 3, 16, 16))
    assert pruned.conv.out_channels == 4 and torch.equal(pruned.conv.weight, model.conv.weight[:4])
    assert "first-channels-test" in nc.list_pruners()


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_magnitude_masks_and_sparse_bytes(tmp_path):
    model = nc.new_model("studentnet", list("abc"), 32)
    apply_masks(model, magnitude_masks(model, 0.25))
    assert zero_fraction(model) == pytest.approx(0.75, abs=0.01)
    dense = nc.save(model, tmp_path / "d.safetensors")
    sparse = nc.save(model, tmp_path / "s.safetensors", sparse=True)
    assert sparse.stat().st_size < 0.4 * dense.stat().st_size
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(nc.load(sparse)(x), model.eval()(x))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["slim", "magnitude"])
def test_schedule_fine_tunes_every_step_and_resumes(tmp_path, method):
    def fresh():
        torch.manual_seed(0)
        return nc.new_model("studentnet", ["a", "b", "c"], 32, widths=[8, 16, 16, 32, 32, 32, 32, 32])

    train, val = synthetic_split("training", 96, 0), synthetic_split("validation", 30, 1)
    cfg = nc.PruneConfig(method=method, rate=0.6, steps=2)
    tcfg = nc.TrainConfig(epochs=2, batch_size=16, lr=3e-3)
    run = nc.prune_iteratively(fresh(), cfg, train, tcfg, val=val, run_dir=tmp_path, device=CPU, progress=False)
    rows = run.rows
    assert [r["step"] for r in rows] == [0, 1, 2] and len(run.models) == 3
    for k in (1, 2):
        history = [json.loads(line) for line in (tmp_path / f"step{k}" / "metrics.jsonl").read_text().splitlines()]
        assert len(history) == 2 and history[-1]["train_loss"] < history[0]["train_loss"] * 1.5
        assert (tmp_path / f"step{k}.safetensors").exists()
    if method == "slim":
        assert rows[2]["params"] < rows[1]["params"] < rows[0]["params"]
        assert rows[2]["widths"][3:7] == [11, 11, 11, 11]
    else:
        assert rows[2]["zero_fraction"] == pytest.approx(1 - 0.36, abs=0.02)  # zeros kept through fine-tuning
        assert rows[2]["sparse_file_bytes"] < rows[2]["file_bytes"]
    # rerunning finds every step finished: same result, no training
    again = nc.prune_iteratively(fresh(), cfg, train, tcfg, val=val, run_dir=tmp_path, device=CPU, progress=False)
    assert [r["val_accuracy"] for r in again.rows[1:]] == [r["val_accuracy"] for r in rows[1:]]
