import json
import subprocess
import sys

import pytest
import torch

from netcompress.artifact import (export_course_state_dict, import_course_checkpoint, load_model, new_model,
                                  read_spec, save_model)
from netcompress.errors import NetcompressError
from netcompress.measure import count_parameters


@pytest.mark.parametrize("arch, kwargs", [("studentnet", {"width_mult": 0.5}), ("groupcnn", {"groups": 4}),
                                          ("resnet18", {}), ("efficientnet_lite0", {})])
def test_save_then_load_gives_identical_outputs(tmp_path, arch, kwargs):
    net, spec = new_model(arch, ["a", "b", "c"], 32, **kwargs)
    net.eval()
    path = save_model(tmp_path / "m.safetensors", net, spec)
    loaded, loaded_spec = load_model(path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(net(x), loaded(x))
    assert loaded_spec.class_names == ["a", "b", "c"] and loaded_spec.arch == arch


def test_model_file_loads_in_a_fresh_process_without_pickle(tmp_path):
    net, spec = new_model("studentnet", ["x", "y"], 32, widths=[8, 12, 20, 24, 30, 30, 30, 40])
    path = save_model(tmp_path / "m.safetensors", net, spec)
    assert b"\x80\x04" not in path.read_bytes()[:16]  # safetensors header, not a pickle stream
    code = ("from netcompress.artifact import load_model; import torch; m, s = load_model(%r); "
            "print(sum(p.numel() for p in m.parameters()), s.kwargs['widths'])" % str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert int(out[0]) == count_parameters(net) and json.loads(out[1]) == [8, 12, 20, 24, 30, 30, 30, 40]


def test_not_a_model_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"hello world, not safetensors")
    with pytest.raises(NetcompressError, match="bogus.safetensors is not a netcompress model file"):
        read_spec(bogus)
    with pytest.raises(NetcompressError, match="does not exist"):
        read_spec(tmp_path / "missing.safetensors")


def test_course_checkpoint_imports_with_its_exact_architecture(course_ckpt, tmp_path):
    net, spec = import_course_checkpoint(course_ckpt)
    assert count_parameters(net) == 256_779
    assert spec.kwargs["widths"] == [16, 32, 64, 128, 256, 256, 256, 256] and spec.num_classes == 11
    x = torch.rand(2, 3, 64, 64)
    path = save_model(tmp_path / "course.safetensors", net, spec)
    assert torch.equal(load_model(path)[0](x), net(x))
    exported = export_course_state_dict(net, tmp_path / "back.bin")
    state = torch.load(exported, weights_only=True)
    original = torch.load(course_ckpt, map_location="cpu", weights_only=True)
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)


def test_foreign_state_dict_is_refused(tmp_path):
    torch.save({"layer.weight": torch.zeros(2)}, tmp_path / "other.bin")
    with pytest.raises(NetcompressError, match="not a course StudentNet state_dict"):
        import_course_checkpoint(tmp_path / "other.bin")
