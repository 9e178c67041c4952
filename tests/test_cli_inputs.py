"""Command-line values checked as they are read: each bad one is one `error:` line and exit 2, on every verb."""

import json
from pathlib import Path

import pytest
import torch

import netcompress as nc
from test_bad_inputs import cli


@pytest.fixture()
def model(tmp_path) -> Path:
    torch.manual_seed(0)
    return nc.save(nc.new_model("studentnet", ["a", "b", "c"], 16, widths=[8] * 8), tmp_path / "m.safetensors")


IMAGE_SIZE_VERBS = {
    "evaluate": lambda m, t: ["evaluate", m, "--data", t],
    "predict": lambda m, t: ["predict", m, "--data", t, "--out", t / "p.csv"],
    "summary": lambda m, t: ["summary", m, "--no-latency"],
    "summary of a name": lambda m, t: ["summary", "studentnet", "--no-latency"],
    "latency": lambda m, t: ["latency", m],
    "quantize": lambda m, t: ["quantize", m, "--data", t, "--out", t / "m.ncq"],
    "export": lambda m, t: ["export", m, "--out", t / "m.onnx"],
}


@pytest.mark.parametrize("size", [0, -3, 4097])
@pytest.mark.parametrize("verb", list(IMAGE_SIZE_VERBS))
def test_an_image_size_out_of_range_is_refused_by_every_verb(tmp_path, model, verb, size):
    code, _, err = cli(*IMAGE_SIZE_VERBS[verb](model, tmp_path), "--image-size", size, cache=tmp_path / "c")
    assert code == 2
    assert err == f"error: --image-size = {size} must lie in 8..4096 (leave it out for the model's own size)\n"


def test_a_valid_image_size_is_used(model):
    code, out, err = cli("summary", model, "--image-size", 32, "--no-latency", "--json")
    assert code == 0, err
    assert json.loads(out)["input_size"] == 32


def test_models_matches_part_of_a_name_and_says_when_nothing_does():
    code, out, _ = cli("models", "efficient")
    assert code == 0 and "efficientnet_lite0" in out.split() and "studentnet" not in out
    code, out, _ = cli("models", "student*")
    assert code == 0 and out.split() and all(n.startswith("student") for n in out.split())
    code, out, err = cli("models", "zzz")
    assert code == 0 and out == "" and "no registered model name matches 'zzz'" in err


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    code, out, _ = cli(flag)
    assert code == 0 and out == f"netcompress {nc.__version__}\n"


def test_summary_prints_one_mac_count_and_no_enum_names(model):
    code, out, err = cli("summary", model, "--no-latency")
    assert code == 0, err
    assert "Units." not in out and "mult-adds" not in out.lower()
    macs = nc.count_macs(nc.load(model))
    assert f"Total MACs (convolutions and linear layers): {macs:,}" in out and out.count(f"{macs:,}") == 2


@pytest.mark.slow  # loads and measures every installed runtime: about a minute on 2 busy cores
def test_latency_all_measures_each_file_on_every_runtime_it_can_run_on(tmp_path, model):
    onnx = nc.export_onnx(nc.load(model), tmp_path / "m.onnx")
    code, out, err = cli("latency", model, onnx, "--runtime", "all", "--rounds", 3, "--seconds", 0.01,
                         "--max-spread", 100, "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    installed = nc.list_runtimes(installed=True)
    assert [r["runtime"] for r in rows if r["model"] == str(model)] == installed
    on_onnx = [r["runtime"] for r in rows if r["model"] == str(onnx)]
    assert on_onnx and "torch" not in on_onnx and set(on_onnx) < set(installed)
