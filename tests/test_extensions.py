"""Extending netcompress: a codec, a pruning method, a runtime, a distillation loss and an export format are each
one class and one registration, usable at once from the library and listed by the command line's help."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.main import get_command
from typer.testing import CliRunner

import netcompress as nc
from netcompress.cli import app
from netcompress.data.augment import Batch
from netcompress.measure import latency as runtimes
from netcompress.train.distill import DistillLoss


def tiny(**kwargs):
    return nc.new_model("studentnet", ["a", "b", "c"], 32, widths=[8] * 8, **kwargs)


def help_of(verb: str) -> str:
    """The verb's --help as a user reads it, on one line (the table's borders and wrapping removed)."""
    result = CliRunner().invoke(app, [verb, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.replace("│", " ").split())


def test_a_codec_is_one_class_and_one_registration(tmp_path):
    @nc.register_codec
    class Float32(nc.Codec):
        name, kind, fixed_bits, fold_bn = "fp32-test", 200, 32, False

        def encode(self, w, bits):
            return w.astype(np.float32).tobytes()

        def decode(self, r, shape):
            return r.array(np.float32, int(np.prod(shape)))

    model = tiny().eval()
    stored = nc.quantize(model, nc.QuantConfig(codec="fp32-test", min_elements=0), progress=False)
    back = nc.load(stored.save(tmp_path / "m.ncq"))
    conv = "cnn.0.0.weight"
    assert torch.equal(back.state_dict()[conv], model.state_dict()[conv])  # stored exactly, as float32
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(back(x), model(x), atol=1e-2)  # vectors stay fp16
    assert "fp32-test" in help_of("quantize")
    bad = CliRunner().invoke(app, ["quantize", "m.safetensors", "--codec", "fp64-test", "--out", "m.ncq"])
    assert "--codec 'fp64-test': choose one of" in str(bad.exception) and "fp32-test" in str(bad.exception)


def test_a_pruner_is_one_class_and_one_registration():
    @nc.register_pruner
    class FirstChannels(nc.Pruner):
        """Keeps each conv's first channels: Torch-Pruning's graph with an importance that ranks by position."""

        name = "first-test"

        def prune(self, model, cfg, *, step, example_input, data):
            import torch_pruning as tp

            by_position = lambda group: -torch.arange(len(group[0].idxs), dtype=torch.float)  # noqa: E731
            classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
            tp.pruner.MetaPruner(model.eval(), example_input, importance=by_position, pruning_ratio=1 - cfg.rate,
                                 ignored_layers=classifier).step()
            return model

    model = tiny()
    x = torch.rand(1, 3, 32, 32)
    pruned = nc.prune(model, nc.PruneConfig(method="first-test", rate=0.5), example_input=x)
    assert nc.count_parameters(pruned) < nc.count_parameters(model) / 2
    assert pruned(x).shape == (1, 3) and nc.count_parameters(model) == nc.count_parameters(tiny())
    assert "first-test" in help_of("prune")


def test_a_runtime_is_one_class_and_one_registration():
    @nc.register_runtime
    class Contiguous(nc.Runtime):
        """Eager PyTorch in the default memory layout (the torch runtime uses channels_last)."""

        name = "contiguous-test"

        def prepare(self, model, x, threads, workdir):
            net = copy.deepcopy(model).eval()

            def run():
                with torch.inference_mode():
                    net(x)

            return run

    found = nc.latency(tiny(), runtime="contiguous-test", rounds=3, seconds=0.01, max_spread=1e9)
    assert found.runtime == "contiguous-test" and found.median_ms > 0 and found.calls > 0
    assert "contiguous-test" in help_of("latency") and "contiguous-test" in help_of("prune")  # --runtime of both
    assert "contiguous-test" in nc.list_runtimes(installed=True)
    with pytest.raises(nc.NetcompressError, match="cannot time single layers"):  # no prepare_layer: said so
        runtimes.get_runtime("contiguous-test").prepare_layer(torch.nn.Identity(), torch.rand(1, 8), 1, None)


def test_a_distillation_loss_declares_what_it_needs():
    @nc.register_kd_loss
    class SimilarityMatching(nc.KDLoss):
        """Logit MSE plus matching the batch's cosine-similarity matrix of the penultimate features."""

        name = "similarity-test"
        needs_features = True

        def __call__(self, s, t, targets, cfg, features=None):
            fs, ft = (F.normalize(f.flatten(1), dim=1) for f in features)
            return F.mse_loss(s, t) + F.mse_loss(fs @ fs.T, ft @ ft.T)

    teacher, student = tiny(), nc.new_model("studentnet", ["a", "b", "c"], 32, widths=[4] * 8)
    cfg = nc.DistillConfig(method="similarity-test", teacher_precision="fp32")
    loss_fn = DistillLoss(teacher, student, cfg)
    x = torch.rand(6, 3, 32, 32)
    logits = student(x)
    loss = loss_fn(logits, Batch(x, torch.arange(6) % 3, torch.arange(6)))
    with torch.no_grad():
        plain = F.mse_loss(logits, teacher(x)).item()
    assert loss.item() > plain  # the features' term was added: the widths differ, the similarities too
    loss.backward()
    assert student.fc[0].weight.grad is not None and teacher.fc[0].weight.grad is None
    with pytest.raises(nc.NetcompressError, match="similarity-test needs the live teacher's features"):
        DistillLoss(None, student, cfg)  # cached teacher views hold logits only
    assert "similarity-test" in help_of("distill")


def test_an_export_format_is_one_class_and_one_registration(tmp_path):
    @nc.register_format
    class ExportedProgram(nc.ModelFormat):
        name, suffixes = "pt2-test", (".pt2",)

        def export(self, model, path, data=None):
            example = torch.rand(nc.spec_of(model).input_shape(1))
            torch.export.save(torch.export.export(copy.deepcopy(model).eval(), (example,)), str(path))
            return path

    model = tiny().eval()
    path = nc.export(model, "pt2-test", tmp_path / "m.pt2")
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(torch.export.load(str(path)).module()(x), model(x), atol=1e-5)
    with pytest.raises(nc.NetcompressError, match="export to pt2-test: .*int8"):
        nc.export(model, "pt2-test", tmp_path / "q.pt2", int8=True)
    assert "pt2-test" in help_of("export")
    nc.save(model, tmp_path / "m.safetensors")
    done = CliRunner().invoke(app, ["export", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "cli.pt2"),
                                    "--json"])  # the suffix picks the format
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["format"] == "pt2-test" and (tmp_path / "cli.pt2").exists()


def test_latency_takes_a_registered_model_name():
    done = CliRunner().invoke(app, ["latency", "studentnet", "--image-size", "32", "--num-classes", "3", "--rounds",
                                    "3", "--seconds", "0.02", "--max-spread", "1000", "--json"])
    assert done.exit_code == 0, done.output
    [row] = json.loads(done.stdout)["rows"]
    assert row["model"] == "studentnet" and row["runtime"] == "ort" and row["median_ms"] > 0


def test_macs_use_the_recorded_input_size():
    model = tiny()
    assert nc.count_macs(model) == nc.count_macs(model, 32) > 0
    with pytest.raises(nc.NetcompressError, match="input_size"):
        nc.count_macs(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))


def test_distillation_defaults_live_in_one_place():
    assert (nc.DistillConfig().temperature, nc.DistillConfig().alpha) == (4.0, 0.9)
    course = nc.DistillConfig.course(method="dkd")
    assert (course.temperature, course.alpha, course.method) == (20.0, 0.5, "dkd")
    option = {p.name: p.default for p in get_command(app).commands["distill"].params}
    assert (option["temperature"], option["alpha"]) == (nc.DistillConfig.temperature, nc.DistillConfig.alpha)
