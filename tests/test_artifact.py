import json
import subprocess
import sys

import pytest
import torch

import netcompress as nc
from netcompress.formats.course import export_course_state_dict, import_course_checkpoint
from netcompress.formats.model_file import read_spec


@pytest.mark.parametrize("arch, kwargs", [("studentnet", {"width_mult": 0.5}), ("groupcnn", {"groups": 4}),
                                          ("resnet18", {}), ("efficientnet_lite0", {}),
                                          ("efficientnet_lite0", {"blocks": 5, "head": 64})])
def test_save_then_load_gives_identical_outputs(tmp_path, arch, kwargs):
    net = nc.new_model(arch, ["a", "b", "c"], 32, **kwargs).eval()
    path = nc.save(net, tmp_path / "m.safetensors")
    loaded = nc.load(path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(net(x), loaded(x))
    assert nc.spec_of(loaded).class_names == ["a", "b", "c"] and nc.spec_of(loaded).arch == arch


def test_model_file_loads_in_a_fresh_process_without_pickle(tmp_path):
    net = nc.new_model("studentnet", ["x", "y"], 32, widths=[8, 12, 20, 24, 30, 30, 30, 40])
    path = nc.save(net, tmp_path / "m.safetensors")
    assert b"\x80\x04" not in path.read_bytes()[:16]  # safetensors header, not a pickle stream
    code = ("import netcompress as nc; m = nc.load(%r); "
            "print(sum(p.numel() for p in m.parameters()), nc.spec_of(m).kwargs['widths'])" % str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert int(out[0]) == nc.count_parameters(net) and json.loads(out[1]) == [8, 12, 20, 24, 30, 30, 30, 40]


def test_not_a_model_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"hello world, not safetensors")
    with pytest.raises(nc.NetcompressError, match="bogus.safetensors is not a netcompress model file"):
        read_spec(bogus)
    with pytest.raises(nc.NetcompressError, match="does not exist"):
        nc.load(tmp_path / "missing.safetensors")
    with pytest.raises(nc.NetcompressError, match="unknown model file type '.h5'"):
        nc.load(tmp_path / "model.h5")


def test_course_checkpoint_imports_with_its_exact_architecture(course_ckpt, tmp_path):
    net = import_course_checkpoint(course_ckpt, input_size=64)
    spec = nc.spec_of(net)
    assert nc.count_parameters(net) == 256_779
    assert spec.kwargs["widths"] == [16, 32, 64, 128, 256, 256, 256, 256] and spec.num_classes == 11
    x = torch.rand(2, 3, 64, 64)
    path = nc.save(net, tmp_path / "course.safetensors")
    assert torch.equal(nc.load(path)(x), net(x))
    exported = export_course_state_dict(net, tmp_path / "back.bin")
    state = torch.load(exported, weights_only=True)
    original = torch.load(course_ckpt, map_location="cpu", weights_only=True)
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)


def test_foreign_state_dict_is_refused(tmp_path):
    torch.save({"layer.weight": torch.zeros(2)}, tmp_path / "other.bin")
    with pytest.raises(nc.NetcompressError, match=r"its tensors do not fit a StudentNet \(expected a 3x3 first conv"):
        import_course_checkpoint(tmp_path / "other.bin")
