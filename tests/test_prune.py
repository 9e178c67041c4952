import json

import pytest
import torch
import torch.nn as nn

from netcompress.artifact import import_course_checkpoint, load_model, new_model, save_model
from netcompress.errors import NetcompressError
from netcompress.measure import count_parameters, zero_fraction
from netcompress.prune import (PruneConfig, apply_masks, course_widths_at, magnitude_masks, prune_schedule,
                               slim_studentnet, tp_prune)
from netcompress.train import TrainConfig
from test_train import synthetic_split

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
    model, spec = import_course_checkpoint(course_ckpt)
    widths = course_widths_at(model.widths, 0.95, step)
    ours, ours_spec = slim_studentnet(model, spec, widths)
    course_new, _ = import_course_checkpoint(course_ckpt)  # same architecture family, then resized:
    course_new = ours_spec.build().eval()
    course_new, selected = course_network_slimming(model, course_new)
    # the same channels survive in every block (the course also reorders the unpruned ones)
    for block in range(1, 8):
        gamma = model.cnn[block][1].weight.detach()
        kept_by_course = set(selected[block].tolist())
        kept_by_us = {i for i in range(len(gamma)) if any(torch.equal(gamma[i], g) for g in ours.cnn[block][1].weight)}
        assert kept_by_us == kept_by_course, block
    x = torch.rand(4, 3, 64, 64)
    assert torch.allclose(ours(x), course_new(x), atol=1e-4)
    assert ours_spec.kwargs["widths"] == widths


def test_course_width_schedule():
    assert course_widths_at([16, 32, 64, 128, 256, 256, 256, 256], 0.95, 1) == [16, 32, 64, 121, 243, 243, 243, 256]
    assert course_widths_at([16, 32, 64, 128, 256, 256, 256, 256], 0.95, 5)[3:7] == [99, 198, 198, 198]


def test_pruned_studentnet_file_round_trips(course_ckpt, tmp_path):
    model, spec = import_course_checkpoint(course_ckpt)
    pruned, pspec = slim_studentnet(model, spec, course_widths_at(model.widths, 0.5, 2))
    path = save_model(tmp_path / "p.safetensors", pruned, pspec)
    loaded, lspec = load_model(path)
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(loaded(x), pruned(x)) and lspec.kwargs["widths"] == [16, 32, 64, 32, 64, 64, 64, 256]
    assert count_parameters(loaded) < count_parameters(model) / 2


def test_resnet18_prunes_saves_and_loads_with_residuals(tmp_path):
    torch.manual_seed(0)
    model, spec = new_model("resnet18", list("abcde"), 32)
    before = count_parameters(model)
    pruned, pspec = tp_prune(model, spec, PruneConfig(method="l2", rate=0.5), None, CPU)
    assert count_parameters(pruned) < 0.3 * before  # about half the channels: about a quarter of the weights
    assert pruned.layer1[0].conv1.out_channels == 32 and pspec.overrides
    path = save_model(tmp_path / "r.safetensors", pruned, pspec)
    loaded, _ = load_model(path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x), pruned.eval()(x), atol=1e-5)


@pytest.mark.parametrize("method", ["slim", "l1", "taylor"])
def test_torch_pruning_methods_on_studentnet(method):
    model, spec = new_model("studentnet", list("abc"), 32)
    train = synthetic_split("training", 64, 0)
    for m in model.modules():  # trained BatchNorms have distinct γ; fresh ones all start at 1
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.1, 1.0)
    before = sum(model.widths)
    pruned, pspec = tp_prune(model, spec, PruneConfig(method=method, rate=0.5, global_ranking=True), train, CPU)
    assert sum(pspec.kwargs["widths"]) < 0.75 * before and pspec.kwargs["widths"] == pruned.widths
    assert pruned(torch.rand(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("rate", [0.0, 1.0, 1.5, -0.2])
def test_rate_outside_0_1_is_refused(rate):
    model, _ = new_model("studentnet", list("abc"), 32)
    with pytest.raises(NetcompressError, match="--rate"):
        PruneConfig(rate=rate).check(model)


def test_slim_needs_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(NetcompressError, match="no BatchNorm"):
        PruneConfig(method="slim").check(model)


def test_magnitude_masks_and_sparse_bytes(tmp_path):
    model, spec = new_model("studentnet", list("abc"), 32)
    apply_masks(model, magnitude_masks(model, 0.25))
    assert zero_fraction(model) == pytest.approx(0.75, abs=0.01)
    dense = save_model(tmp_path / "d.safetensors", model, spec)
    sparse = save_model(tmp_path / "s.safetensors", model, spec, sparse=True)
    assert sparse.stat().st_size < 0.4 * dense.stat().st_size
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(load_model(sparse)[0](x), model.eval()(x))


@pytest.mark.parametrize("method", ["slim", "magnitude"])
def test_schedule_fine_tunes_every_step_and_resumes(tmp_path, method):
    torch.manual_seed(0)
    model, spec = new_model("studentnet", ["a", "b", "c"], 32, widths=[8, 16, 16, 32, 32, 32, 32, 32])
    train, val = synthetic_split("training", 96, 0), synthetic_split("validation", 30, 1)
    cfg = PruneConfig(method=method, rate=0.6, steps=2)
    tcfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3)
    rows = prune_schedule(model, spec, train, val, cfg, tcfg, tmp_path, device=CPU, progress=False)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for k in (1, 2):
        history = [json.loads(line) for line in (tmp_path / f"step{k}" / "metrics.jsonl").read_text().splitlines()]
        assert len(history) == 2 and history[-1]["train_loss"] < history[0]["train_loss"] * 1.5
        assert (tmp_path / f"step{k}.safetensors").exists()
    if method == "slim":
        assert rows[2]["params"] < rows[1]["params"] < rows[0]["params"]
        assert rows[2]["widths"][3:7] == [11, 11, 11, 11]
    else:
        assert rows[2]["zero_fraction"] == pytest.approx(1 - 0.36, abs=0.02)
        assert rows[2]["sparse_file_bytes"] < rows[2]["file_bytes"]
    # rerunning finds every step finished: same result, no training
    again = prune_schedule(*(new_model("studentnet", ["a", "b", "c"], 32, widths=[8, 16, 16, 32, 32, 32, 32, 32])),
                           train, val, cfg, tcfg, tmp_path, device=CPU, progress=False)
    assert [r["val_accuracy"] for r in again[1:]] == [r["val_accuracy"] for r in rows[1:]]
