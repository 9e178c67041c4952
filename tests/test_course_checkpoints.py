"""Course checkpoints as students saved them: every file kind, under any name, into the student's own class or
imported by the command line, with the layout the tensors cannot show never guessed silently."""

import json
import pickle
import re
import shlex

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image

import netcompress as nc
from netcompress.models.studentnet import StudentNet
from test_cli import netcompress

WIDTHS = [8, 12, 16, 16, 24, 24, 24, 24]


def cli(*args) -> tuple[int, str]:
    """A command run in this process (no interpreter start per call): its exit status and error message."""
    from typer.testing import CliRunner

    from netcompress.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(result.exception, nc.NetcompressError):
        return 2, str(result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


class MyStudent(nn.Module):
    """The course's StudentNet as a student wrote it: the same layers in the same order, under names of their own."""

    def __init__(self, widths=tuple(WIDTHS), num_classes=11):
        super().__init__()
        blocks = [nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1), nn.BatchNorm2d(widths[0]), nn.ReLU6(),
                                nn.MaxPool2d(2, 2, 0))]
        for i in range(1, len(widths)):
            p = widths[i - 1]
            layers = [nn.Conv2d(p, p, 3, 1, 1, groups=p), nn.BatchNorm2d(p), nn.ReLU6(), nn.Conv2d(p, widths[i], 1)]
            blocks.append(nn.Sequential(*layers, *([nn.MaxPool2d(2, 2, 0)] if i < 4 else [])))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine terms (fresh ones are constant, which the course's 8-bit code turns
    into NaN), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.num_batches_tracked.fill_(7)
    return model.eval()


# ---- the course's own code (HW7), as it wrote and read its pickles ----------------------------------------------

def encode16(params, fname):
    custom_dict = {}
    for name, param in params.items():
        param = np.float64(param.cpu().numpy())
        if type(param) is np.ndarray:
            custom_dict[name] = np.float16(param)
        else:
            custom_dict[name] = param
    pickle.dump(custom_dict, open(fname, "wb"), protocol=3)


def decode16(fname):
    params = pickle.load(open(fname, "rb"))
    return {name: torch.tensor(param) for name, param in params.items()}


def encode8(params, fname):
    custom_dict = {}
    for name, param in params.items():
        param = np.float64(param.cpu().numpy())
        if type(param) is np.ndarray:
            min_val, max_val = np.min(param), np.max(param)
            param = np.uint8(np.round((param - min_val) / (max_val - min_val) * 255))
            custom_dict[name] = (min_val, max_val, param)
        else:
            custom_dict[name] = param
    pickle.dump(custom_dict, open(fname, "wb"), protocol=3)


def decode8(fname):
    params = pickle.load(open(fname, "rb"))
    custom_dict = {}
    for name, param in params.items():
        if type(param) is tuple:
            min_val, max_val, param = param
            param = np.float64(param)
            param = (param / 255 * (max_val - min_val)) + min_val
        custom_dict[name] = torch.tensor(param)
    return custom_dict


def save_npz16(state, fname):
    np.savez(fname, **{f"module.{k}": v.numpy().astype(np.float16) if v.is_floating_point() else v.numpy()
                       for k, v in state.items()})


def load_npz(fname):
    with np.load(fname) as archive:
        return {k[len("module."):]: torch.from_numpy(archive[k]) for k in archive.files}


# name: (file name, writer, what the course's (or numpy's) own reader gives back)
FORMATS = {
    "legacy torch .bin": ("m.bin", lambda s, f: torch.save(s, f, _use_new_zipfile_serialization=False), None),
    "zip torch .pth, module. keys in a wrapper": (
        "m.pth", lambda s, f: torch.save({"state_dict": {f"module.{k}": v for k, v in s.items()}}, f), None),
    "8-bit pickle": ("m.pkl", encode8, decode8),
    "16-bit pickle": ("m.pkl", encode16, decode16),
    "8-bit pickle named .bin": ("student.bin", encode8, decode8),
    "16-bit pickle with no suffix": ("student16", encode16, decode16),
    "float16 .npz, module. keys": ("m.npz", save_npz16, load_npz),
}


@pytest.fixture(scope="module")
def mine():
    torch.manual_seed(0)
    return trained_looking(MyStudent())


@pytest.mark.parametrize("kind", FORMATS)
def test_every_course_format_loads_into_the_users_class_with_exact_logits(kind, mine, tmp_path):
    name, write, read_back = FORMATS[kind]
    path = tmp_path / name
    write(mine.state_dict(), path)
    reference = MyStudent()
    reference.load_state_dict(read_back(path) if read_back else mine.state_dict())
    reference.eval()
    x = torch.rand(3, 3, 32, 32)
    expected = reference(x)
    assert torch.equal(nc.load_state_dict(path, MyStudent())(x), expected)
    assert torch.equal(nc.load(path, model=MyStudent())(x), expected)
    with pytest.warns(UserWarning, match="assumed MaxPool after blocks 0, 1, 2, 3"):  # no class: the course's
        rebuilt = nc.load(path)
    assert isinstance(rebuilt, StudentNet) and torch.equal(rebuilt(x), expected)


class CourseStudentNet(nn.Module):
    """The course's own StudentNet class, as its notebook wrote it (base 16, width_mult 1)."""

    def __init__(self):
        super().__init__()
        b = [16 * m for m in [1, 2, 4, 8, 16, 16, 16, 16]]

        def block(i, pool):
            return nn.Sequential(nn.Conv2d(b[i - 1], b[i - 1], 3, 1, 1, groups=b[i - 1]), nn.BatchNorm2d(b[i - 1]),
                                 nn.ReLU6(), nn.Conv2d(b[i - 1], b[i], 1), *([nn.MaxPool2d(2, 2, 0)] if pool else []))

        self.cnn = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, b[0], 3, 1, 1), nn.BatchNorm2d(b[0]), nn.ReLU6(), nn.MaxPool2d(2, 2, 0)),
            *[block(i, i <= 3) for i in range(1, 8)], nn.AdaptiveAvgPool2d((1, 1)))
        self.fc = nn.Sequential(nn.Linear(b[7], 11))

    def forward(self, x):
        out = self.cnn(x)
        return self.fc(out.view(out.size()[0], -1))


@pytest.mark.parametrize("kind", ["8-bit pickle named .bin", "16-bit pickle", "float16 .npz, module. keys"])
def test_the_course_checkpoint_in_every_kind_loads_into_the_courses_class(kind, course_ckpt, tmp_path):
    name, write, read_back = FORMATS[kind]
    write(torch.load(course_ckpt, map_location="cpu", weights_only=True), tmp_path / name)
    reference = CourseStudentNet()
    reference.load_state_dict(read_back(tmp_path / name))
    x = torch.rand(2, 3, 64, 64)
    expected = reference.eval()(x)
    assert torch.equal(nc.load(tmp_path / name, model=CourseStudentNet())(x), expected)
    with pytest.warns(UserWarning, match="assumed MaxPool after blocks 0, 1, 2, 3"):
        assert torch.equal(nc.load(tmp_path / name)(x), expected)  # rebuilt from the tensors: 256,779 parameters


def test_a_torchvision_net_saved_as_float16_npz_loads_in_its_class_and_imports(tmp_path):
    torch.manual_seed(5)
    theirs = torchvision.models.mobilenet_v2(num_classes=11, width_mult=0.5).eval()
    np.savez(tmp_path / "mnv2.npz", **{f"module.{k}": v.numpy().astype(np.float16) if v.is_floating_point()
                                       else v.numpy() for k, v in theirs.state_dict().items()})
    reference = torchvision.models.mobilenet_v2(num_classes=11, width_mult=0.5)
    reference.load_state_dict(load_npz(tmp_path / "mnv2.npz"))
    x = torch.rand(2, 3, 64, 64)
    loaded = nc.load(tmp_path / "mnv2.npz", model=torchvision.models.mobilenet_v2(num_classes=11, width_mult=0.5))
    assert torch.equal(loaded(x), reference.eval()(x))
    status, message = cli("import-state-dict", tmp_path / "mnv2.npz", "--arch", "mobilenet_v2", "--kwargs",
                          '{"input_scaling": "unit"}', "--image-size", 64, "--out", tmp_path / "m.safetensors")
    # width_mult is not a registered argument: the user's class loads the file, the registered one cannot
    assert status == 2 and "features.0.0.weight: checkpoint [16, 3, 3, 3], model [32, 3, 3, 3]" in message
    assert "rerun with" not in message


def test_shapes_are_checked_against_the_users_class(mine, tmp_path):
    encode8(mine.state_dict(), tmp_path / "m.bin")
    with pytest.raises(nc.NetcompressError) as refused:
        nc.load(tmp_path / "m.bin", model=MyStudent(num_classes=5))
    assert "classifier.weight: checkpoint [11, 24], model [5, 24]" in str(refused.value)
    assert "the checkpoint predicts 11 classes" in str(refused.value)


def test_renamed_layers_load_through_the_users_class_and_say_so(mine, tmp_path):
    encode16(mine.state_dict(), tmp_path / "mine.pkl")
    x = torch.rand(2, 3, 32, 32)
    expected = MyStudent()
    expected.load_state_dict(decode16(tmp_path / "mine.pkl"))
    course_named = nc.new_model("studentnet", [str(i) for i in range(11)], 32, widths=WIDTHS)
    with pytest.warns(UserWarning, match=r"named differently; matched to the model's by position.*features\.0\.0 -> "
                                         r"cnn\.0\.0"):
        loaded = nc.load_state_dict(tmp_path / "mine.pkl", course_named)
    assert torch.equal(loaded(x), expected.eval()(x))
    assert ["classifier", "fc.0"] in nc.spec_of(loaded).info.extra["renamed_by_position"]
    # the other way: a file with the course's names into the student's class
    torch.save(loaded.state_dict(), tmp_path / "course.bin")
    with pytest.warns(UserWarning, match="cnn.0.0 -> features.0.0"):
        assert torch.equal(nc.load(tmp_path / "course.bin", model=MyStudent())(x), expected(x))


def test_renamed_layers_that_do_not_line_up_are_refused(mine, tmp_path):
    state = mine.state_dict()
    torch.save({k: state[k] for k in sorted(state)}, tmp_path / "sorted.bin")  # saved in another order
    course_named = nc.new_model("studentnet", [str(i) for i in range(11)], 32, widths=WIDTHS)
    with pytest.raises(nc.NetcompressError, match=r"do not line up with the model's: tensor 1 in order is "
                                                  r"classifier.bias \[11\] in the checkpoint but cnn.0.0.weight"):
        nc.load_state_dict(tmp_path / "sorted.bin", course_named)


def test_a_course_pickle_named_bin_is_not_called_a_pickled_model(mine, tmp_path):
    encode8(mine.state_dict(), tmp_path / "student.bin")
    proc = netcompress("import-course", tmp_path / "student.bin", "--image-size", 32, "--pool-after", "0,1,2,3",
                       "--out", tmp_path / "s.safetensors")
    assert "whole pickled model" not in proc.stderr and "layout given: MaxPool after blocks 0, 1, 2, 3" in proc.stderr
    expected = MyStudent()
    expected.load_state_dict(decode8(tmp_path / "student.bin"))
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(nc.load(tmp_path / "s.safetensors")(x), expected.eval()(x))


@pytest.mark.parametrize("variant", [{"head": [16]}, {"bias": False, "pointwise_bn": True},
                                     {"widths": [16, 32, 48, 64, 64, 96], "head": [32, 20]}])
def test_import_reads_head_bias_and_batchnorms_from_the_tensors(variant, tmp_path):
    kwargs = {"widths": WIDTHS, **variant}
    torch.manual_seed(1)
    theirs = trained_looking(nc.create_model("studentnet", num_classes=11, **kwargs))
    renamed = {k.replace("cnn.", "backbone.").replace("fc.", "head."): v for k, v in theirs.state_dict().items()}
    encode8(renamed, tmp_path / "v.bin")
    status, message = cli("import-course", tmp_path / "v.bin", "--image-size", 32, "--pool-after", "0,1,2,3", "--out",
                          tmp_path / "v.safetensors")
    assert status == 0, message
    imported = nc.load(tmp_path / "v.safetensors")
    spec = nc.spec_of(imported)
    assert {k: spec.kwargs[k] for k in kwargs} == kwargs
    theirs.load_state_dict({k.replace("backbone.", "cnn.").replace("head.", "fc."): v
                            for k, v in decode8(tmp_path / "v.bin").items()})
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(imported(x), theirs(x))


# ---- layouts the tensors cannot show -------------------------------------------------------------------------------

def labelled_by(model: nn.Module, root, per_class: int = 30, size: int = 32):
    """An ImageFolder dataset (PNG, lossless) whose labels are `model`'s own predictions: it scores 1.0 on it.
    The model's classifier is set to the top principal directions of its features on random images, so its
    predictions spread over every class."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40 * per_class, 3, size, size), dtype=np.uint8)
    x = torch.from_numpy(images).float() / 255
    classes = model.fc[-1].out_features
    with torch.no_grad():
        features = model.cnn(x).flatten(1)
        mean = features.mean(0)
        _, _, v = torch.pca_lowrank(features - mean, q=classes, center=False)
        weight = v[:, :classes].T.contiguous()  # unit rows: float16 holds them
        model.fc[-1].weight.copy_(weight)
        model.fc[-1].bias.copy_(-weight @ mean)
        labels = model(x).argmax(1)
    for split in ("training", "validation"):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True)
    for c in range(classes):
        chosen = (labels == c).nonzero().flatten()[:2 * per_class].tolist()
        assert len(chosen) == 2 * per_class, f"class {c}: only {len(chosen)} images"
        for k, i in enumerate(chosen):
            split = "training" if k % 2 else "validation"
            Image.fromarray(images[i].transpose(1, 2, 0)).save(root / split / f"c{c}" / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def strided(tmp_path_factory):
    """A student's StudentNet with stride-2 depthwise convs in place of the MaxPools (what the tensors cannot
    show), its checkpoint, and images it labels itself."""
    torch.manual_seed(2)
    model = trained_looking(nc.create_model("studentnet", widths=WIDTHS, num_classes=3, pool_after=[],
                                            strided=[1, 2, 3, 4]))
    root = tmp_path_factory.mktemp("strided")
    data = labelled_by(model, root / "data")
    torch.save(model.state_dict(), root / "strided.bin", _use_new_zipfile_serialization=False)
    return model, root / "strided.bin", data


def test_a_checkpoint_with_other_strides_is_never_imported_silently(strided, tmp_path, cache_dir):
    model, ckpt, data = strided
    out, cache = ["--out", tmp_path / "m.safetensors"], ["--cache-dir", cache_dir]
    status, message = cli("import-course", ckpt, "--image-size", 32, *out)
    assert status == 2 and "not where it downsamples" in message and not (tmp_path / "m.safetensors").exists()
    status, message = cli("import-course", ckpt, "--image-size", 32, "--data", data, *out, *cache)
    assert status == 2 and "near chance, so the file was saved from another layout" in message
    assert re.search(r"accuracy 0\.[0-4]\d\d, chance 0\.333", message), message
    status, message = cli("import-state-dict", ckpt, "--arch", "studentnet", "--image-size", 32, "--data", data,
                          *out, *cache)
    assert status == 2 and "near chance" in message and not (tmp_path / "m.safetensors").exists()
    with pytest.warns(UserWarning, match="If it was saved from another layout its outputs are wrong"):
        nc.load(ckpt)
    status, message = cli("import-course", ckpt, "--image-size", 32, "--pool-after", "none", "--strided", "1,2,3,4",
                          "--data", data, *out, *cache)
    assert status == 0 and re.search(r"accuracy (0\.9[5-9]\d|1\.000), chance 0\.333", message), message
    x = torch.rand(2, 3, 32, 32)
    imported = nc.load(tmp_path / "m.safetensors")
    assert torch.equal(imported(x), model(x)) and nc.spec_of(imported).class_names == ["c0", "c1", "c2"]


def test_the_registered_layout_passes_the_data_check(tmp_path, cache_dir):
    torch.manual_seed(3)
    model = trained_looking(nc.create_model("studentnet", widths=WIDTHS, num_classes=3))
    data = labelled_by(model, tmp_path / "data")
    torch.save(model.state_dict(), tmp_path / "course.bin", _use_new_zipfile_serialization=False)
    proc = netcompress("import-course", tmp_path / "course.bin", "--image-size", 32, "--data", data, "--out",
                       tmp_path / "m.safetensors", cache=cache_dir)  # the command as a user runs it
    assert "layout assumed: MaxPool after blocks 0, 1, 2, 3" in proc.stderr
    assert re.search(r"accuracy (0\.9[5-9]\d|1\.000)", proc.stderr), proc.stderr


# ---- every hint, followed literally, loads the file ---------------------------------------------------------------

def hints(text: str) -> list[str]:
    return re.findall(r"`(--[^`]+)`", text)


def followed(args: list, hint: str) -> list:
    """The command line with the hint's options in place of the same options given before."""
    extra = shlex.split(hint)
    named = {extra[i] for i in range(0, len(extra), 2)}
    kept, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif str(a) in named:
            skip = True
        else:
            kept.append(a)
    return kept + extra


def test_every_printed_hint_loads_the_file(course_ckpt, mine, tmp_path):
    torch.manual_seed(4)
    two_layer = trained_looking(nc.create_model("studentnet", num_classes=11, head=[64]))
    encode8(two_layer.state_dict(), tmp_path / "two_layer.bin")
    groups = nc.create_model("groupcnn", num_classes=11, groups=4, widths=[16, 32, 64, 64, 128, 128])
    torch.save(groups.state_dict(), tmp_path / "g.pth")
    ten = nc.create_model("studentnet", multipliers=[1, 2, 4, 8, 8, 8, 8, 16, 16, 16], num_classes=11)
    np.savez(tmp_path / "ten.npz", **{f"module.{k}": v.numpy() for k, v in ten.state_dict().items()})
    encode16(mine.state_dict(), tmp_path / "renamed.pkl")
    mobilenet = torchvision.models.mobilenet_v2(num_classes=11)
    np.savez(tmp_path / "mnv2.npz", **{f"module.{k}": v.numpy().astype(np.float16) if v.is_floating_point()
                                       else v.numpy() for k, v in mobilenet.state_dict().items()})
    out = ["--out", tmp_path / "x.safetensors"]
    cases = [
        ["import-course", course_ckpt, "--image-size", 64],
        ["import-course", tmp_path / "two_layer.bin", "--image-size", 64],
        ["import-course", tmp_path / "ten.npz", "--image-size", 64],
        ["import-course", tmp_path / "renamed.pkl", "--image-size", 32],
        ["import-state-dict", tmp_path / "two_layer.bin", "--arch", "studentnet", "--image-size", 64],
        ["import-state-dict", tmp_path / "two_layer.bin", "--arch", "studentnet", "--kwargs", '{"head": []}',
         "--image-size", 64],
        ["import-state-dict", tmp_path / "two_layer.bin", "--arch", "studentnet", "--kwargs", '{"num_classes": 64}',
         "--image-size", 64],
        ["import-state-dict", tmp_path / "g.pth", "--arch", "groupcnn", "--kwargs", '{"groups": 2}', "--image-size", 64],
        ["import-state-dict", tmp_path / "renamed.pkl", "--arch", "studentnet", "--kwargs",
         json.dumps({"widths": WIDTHS[:-1] + [32]}), "--image-size", 32],
        ["import-state-dict", tmp_path / "mnv2.npz", "--arch", "mobilenet_v2", "--image-size", 64],
    ]
    for args in cases:
        status, message = cli(*args, *out)
        assert status == 2, (args, message)
        offered = hints(message)
        assert len(offered) == 1, (args, message)
        assert "num_classes=64" not in message and "num_classes\": 64" not in offered[0]
        status, message = cli(*followed(args, offered[0]), *out)
        assert status == 0, (args, offered, message)
        assert nc.spec_of(nc.load(tmp_path / "x.safetensors")).num_classes == 11
        (tmp_path / "x.safetensors").unlink()
    # in Python: into a registered model of the wrong shape, the offered build loads it
    with pytest.raises(nc.NetcompressError) as refused:
        nc.load_state_dict(tmp_path / "two_layer.bin", nc.new_model("studentnet", list("abcdefghijk"), 64))
    message = str(refused.value)
    assert "predicts 11 classes through 2 Linear layers (256 -> 64 -> 11)" in message and "num_classes=64" not in message
    build = re.search(r"build the model with `([^`]+)`", message).group(1)
    kwargs = eval(f"dict({build})")
    assert nc.load_state_dict(tmp_path / "two_layer.bin", nc.new_model("studentnet", list("abcdefghijk"), 64,
                                                                         **kwargs))
    # into the user's own class of another shape: facts, no build offered that would not load
    with pytest.raises(nc.NetcompressError) as own:
        nc.load_state_dict(tmp_path / "two_layer.bin", MyStudent())
    assert "build the model with" not in str(own.value) and "num_classes=64" not in str(own.value)


def test_export_of_a_course_file_asks_for_the_image_size(mine, tmp_path):
    encode8(mine.state_dict(), tmp_path / "student.bin")
    status, message = cli("export", tmp_path / "student.bin", "--out", tmp_path / "s.onnx")
    assert status == 2 and "student.bin does not record the input size" in message and "--image-size N" in message
    assert not (tmp_path / "s.onnx").exists()
    status, message = cli("export", tmp_path / "student.bin", "--image-size", 32, "--out", tmp_path / "s.onnx")
    assert status == 0 and (tmp_path / "s.onnx").stat().st_size > 0, message


@pytest.mark.parametrize("variant", [{"head": [32]}, {"bias": False, "pointwise_bn": True},
                                     {"strided": [1, 2], "pool_after": [0, 3]}])
def test_the_variants_prune_and_reload_exactly(variant, tmp_path):
    model = nc.new_model("studentnet", list("abc"), 32, widths=[8, 16, 16, 32, 32, 32, 32, 32], **variant)
    x = torch.rand(2, 3, 32, 32)
    for method in ("slim", "l2"):
        pruned = nc.prune(model, method=method, rate=0.5, example_input=x)
        assert nc.count_parameters(pruned) < nc.count_parameters(model) / 2
        back = nc.load(nc.save(pruned, tmp_path / f"{method}.safetensors"))
        assert torch.equal(back(x), pruned.eval()(x))
        assert {k: nc.spec_of(back).kwargs[k] for k in variant if k != "head"} == \
            {k: v for k, v in variant.items() if k != "head"}


def test_the_verbs_that_take_a_course_file_name_every_kind_in_their_help():
    for verb in ("quantize", "prune", "lowrank", "export"):
        status, text = cli(verb, "--help")
        assert status == 0 and all(kind in " ".join(text.split()) for kind in (".bin", ".pkl", ".npz")), (verb, text)


class Payload:
    """What a malicious pickle holds: unpickling it would run a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name", ["evil.bin", "evil.pt", "evil.pkl", "evil"])
def test_no_code_runs_whatever_the_file_is_called(name, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / name).write_bytes(pickle.dumps({"cnn.0.0.weight": Payload(marker)}, protocol=3))
    for load in (lambda p: nc.load(p), lambda p: nc.load(p, model=MyStudent()),
                 lambda p: nc.load_state_dict(p, MyStudent())):
        with pytest.raises(nc.NetcompressError, match="refused to load: the pickle asks for (posix|os).system"):
            load(tmp_path / name)
    assert not marker.exists()
    np.savez(tmp_path / "objects.npz", w=np.array([Payload(marker)], dtype=object))
    with pytest.raises(nc.NetcompressError, match="objects.npz: a .npz whose arrays are not all numbers"):
        nc.load(tmp_path / "objects.npz", model=MyStudent())
    assert not marker.exists()


class ClaimsTwoGigabytes:
    """An array whose pickle says 2e9 bytes but carries 4: a 400-byte file must not allocate gigabytes."""

    def __reduce__(self):
        from numpy.core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (2_000_000_000,), np.dtype("uint8"), False, b"\0" * 4)


def test_a_course_pickle_whose_array_claims_2e9_bytes_is_refused_in_one_line(tmp_path):
    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps({"cnn.0.0.weight": (np.float32(0.1), np.float32(0.0), ClaimsTwoGigabytes())},
                                  protocol=2))
    with pytest.raises(nc.NetcompressError, match="big.pkl: not a readable course weight pickle .*buffer size"):
        nc.load(path, model=MyStudent())
