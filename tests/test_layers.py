"""The library's layers as a user and a maintainer meet them: pure transforms, typed records, configs whose
defaults never leak from one codec to another, a user's own module saved right after a verb."""

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import netcompress as nc
from netcompress.compress.quant_config import QuantConfig
from netcompress.errors import NetcompressError

SRC = Path(nc.__file__).parent


class MyNet(nn.Module):
    """A user's own classifier, not registered."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.features(x))


def _imports(path: Path) -> set[str]:
    """The package-relative modules a file imports ("train.fit" for `from ..train.fit import ...`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            here = path.relative_to(SRC).parent.parts
            base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
            found.add(".".join([*base, *(node.module or "").split(".")]).strip("."))
    return found


@pytest.mark.parametrize("path", sorted((SRC / "compress").glob("*.py")), ids=lambda p: p.name)
def test_compress_holds_transforms_that_neither_train_nor_schedule(path):
    above = [m for m in _imports(path) if m.split(".")[0] in ("train", "schedule", "pipeline", "cli")]
    assert not above, f"compress/{path.name} imports {above}: training and schedules belong above compress/"


def test_the_schedules_import_no_module_that_imports_them_back():
    for path in (SRC / "compress").glob("*.py"):
        assert not any(m.startswith("schedule") for m in _imports(path))
    for path in (SRC / "train").glob("*.py"):
        assert not any(m.split(".")[0] in ("schedule", "pipeline") for m in _imports(path)), path.name


def test_quantize_with_keywords_writes_the_bytes_of_the_same_config():
    net = nc.new_model("studentnet", ["a", "b", "c"], 32, widths=[8, 16, 16, 32, 32, 32, 32, 32])
    by_keywords = nc.quantize(net, codec="kbit", bits=4)
    by_config = nc.quantize(net, nc.QuantConfig(codec="kbit", bits=4))
    assert by_keywords.data == by_config.data
    assert by_keywords.config.folds_batchnorm  # kbit folds BatchNorm: not int8-minmax's default carried over


def test_replacing_the_codec_takes_the_new_codecs_defaults():
    fp16 = QuantConfig(codec="fp16")
    assert fp16.width == 16 and not fp16.folds_batchnorm
    kbit = dataclasses.replace(fp16, codec="kbit")
    assert kbit.width == 8 and kbit.folds_batchnorm
    with pytest.raises(NetcompressError, match="always 16-bit"):  # a width the user chose is not dropped silently
        dataclasses.replace(QuantConfig(codec="kbit", bits=3), codec="fp16")
    with pytest.raises(NetcompressError, match="bits = 12"):
        QuantConfig(codec="kbit", bits=12)


def test_a_users_module_saves_right_after_pruning_and_loads_back(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 24, 24)
    pruned = nc.prune(MyNet(), nc.PruneConfig(method="l2", rate=0.5), example_input=x)
    path = nc.save(pruned, tmp_path / "m.safetensors")
    back = nc.load(path, model=MyNet())
    spec = nc.spec_of(back)
    assert spec.input_size == 24 and spec.class_names == ["0", "1", "2", "3", "4"]
    assert back.features[0].out_channels == 8
    torch.testing.assert_close(back(x), pruned.eval()(x))


def test_a_users_module_without_a_known_input_size_is_refused_with_the_fix(tmp_path):
    with pytest.raises(NetcompressError, match="input_size=N"):
        nc.save(MyNet(), tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_pruning_records_a_typed_step_that_the_next_step_continues():
    net = nc.new_model("studentnet", ["a", "b", "c"], 32)
    once = nc.prune(net, method="slim", rate=0.9)
    twice = nc.prune(once, method="slim", rate=0.9)
    record = nc.spec_of(twice).info.pruned
    assert isinstance(record, nc.PruningRecord) and record.step == 2 and record.kept == pytest.approx(0.81)
    assert record.start == {"widths": [16, 32, 64, 128, 256, 256, 256, 256]}  # what the course's rule scales
    assert nc.spec_of(twice).kwargs["widths"] == [16, 32, 64, 103, 207, 207, 207, 256]  # int(w * 0.9 * 0.9)
    assert nc.spec_of(net).info.pruned is None  # the argument is left as it was


def test_a_model_declares_its_own_pruning_rule_and_shape():
    class Declares(nn.Module):
        """A model with a rule of its own for slim: keep the first channels."""

        def __init__(self, width=8):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.Linear(width, 2)

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).mean((2, 3)))

        def prune_channels(self, config, step, start):
            keep = int(start["width"] * config.rate**step)
            new = Declares(keep)
            new.load_state_dict({k: v[:keep] if v.dim() and k.split(".")[0] in ("conv", "bn") else
                                 (v[:, :keep] if k == "fc.weight" else v) for k, v in self.state_dict().items()})
            return new

        def architecture_kwargs(self):
            return {"width": self.conv.out_channels}

    pruned = nc.prune(Declares(), method="slim", rate=0.5, example_input=torch.rand(1, 3, 8, 8))
    assert pruned.conv.out_channels == 4 and nc.spec_of(pruned).info.pruned.start == {"width": 8}
    assert set(nc.spec_of(pruned).overrides) == {"conv", "bn", "fc"}  # a user's module: its changed layers


def test_model_info_reads_every_older_entry_and_writes_it_back():
    older = {"pruned": {"method": "slim", "rate": 0.95, "step": 2, "kept": 0.9025,
                        "original_widths": [16, 32, 64, 128, 256, 256, 256, 256]},
             "onnx": {"input_size": 32, "dynamic_size": True}, "val_accuracy": 0.5, "pool_after": "guessed"}
    info = nc.ModelInfo.from_dict(older)
    assert info.pruned.start == {"widths": [16, 32, 64, 128, 256, 256, 256, 256]} and info.pruned.step == 2
    assert info.exported == {"onnx": {"input_size": 32, "dynamic_size": True}} and info.extra == {"pool_after": "guessed"}
    again = nc.ModelInfo.from_dict(info.to_dict())
    assert again == info
    with pytest.raises(NetcompressError, match="JSON object"):
        nc.ModelInfo.from_dict([1, 2])


def test_quantization_aware_training_leaves_a_plain_module_whose_weights_moved(jpeg_dataset):
    from netcompress.schedule import Finetune, finetune_quantized

    data = nc.ImageFolderData(jpeg_dataset, 16, progress=False)
    net = nc.new_model("studentnet", data.class_names, 16, widths=[4, 8, 8, 8, 8, 8, 8, 8], pool_after=[0])
    cfg = QuantConfig(codec="kbit", bits=2, finetune_epochs=1, finetune_lr=1e-2)
    tuned = finetune_quantized(net, cfg, Finetune.on(data, nc.TrainConfig(batch_size=4), progress=False))
    assert not any(type(m).__name__.startswith("Parametrized") for m in tuned.modules())
    assert list(tuned.state_dict()) == list(net.state_dict())  # in order: .ncq records follow it
    moved = [k for k, v in tuned.state_dict().items() if k.endswith("3.weight") and not torch.equal(v, net.state_dict()[k])]
    assert moved  # the pointwise weights were trained
    stored = nc.quantize(tuned, QuantConfig(codec="kbit", bits=2))  # stores and decodes like any module
    assert list(stored.decode().state_dict()) == list(net.state_dict())


def test_recipe_tables_take_every_field_of_their_configs(tmp_path):
    from netcompress.pipeline.recipe import load_recipe

    path = tmp_path / "r.toml"
    path.write_text("[[prune]]\nmethod = \"taylor\"\nsparsity = 1e-4\nsparsity_epochs = 2\ntaylor_batches = 4\n"
                    "recalibrate = 0\n\n[[quantize]]\ncodec = \"kbit\"\nbits = 4\nfold_bn = false\nmin_elements = 0\n\n"
                    "[[quantize]]\ncodec = \"kbit\"\nbits = 4\n")
    recipe = load_recipe(path)
    prune_cfg, _ = recipe.prune[0].configs(0)
    assert (prune_cfg.sparsity, prune_cfg.sparsity_epochs, prune_cfg.taylor_batches, prune_cfg.recalibrate) == \
        (1e-4, 2, 4, 0)
    (quant_cfg,) = recipe.quantize[0].configs(0)
    assert quant_cfg == QuantConfig(codec="kbit", bits=4, fold_bn=False, min_elements=0)
    assert recipe.quantize[0].stage != recipe.quantize[1].stage  # two runs, two stage folders
    path.write_text("[[quantize]]\ncodec = \"fp16\"\nbits = 3\n")
    with pytest.raises(NetcompressError, match=r"r.toml: \[\[quantize\]\] bits = 3: codec fp16 is always 16-bit"):
        load_recipe(path)
