"""`deploy`: every target x precision built and measured as the file that ships, the fastest within the drop chosen."""

import json

import pytest

import netcompress as nc
from netcompress.formats.load import get_exporter
from netcompress.pipeline.artifact import Artifact
from netcompress.pipeline.deploy import DeployConfig, _choose, runtimes_reading
from test_cli import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(food_32, tmp_path_factory):
    """A small StudentNet trained 2 epochs on the real photos at 32 px: above chance, so accuracy means something."""
    import torch

    torch.manual_seed(0)
    model = nc.new_model("studentnet", food_32.class_names, 32, widths=[16, 16, 32, 32, 32, 32, 32, 32])
    model = nc.fit(model, food_32, epochs=2, progress=False)
    return model, nc.save(model, tmp_path_factory.mktemp("deploy") / "m.safetensors")


def _artifact(name, drop, b1, runtime="ort"):
    return Artifact(name=name, stage="deploy", file=name, format="onnx", precision="int8", runtime=runtime,
                    file_bytes=1, params=1, macs=1, val_accuracy=0.5, latency_ms={f"{runtime}@1": b1},
                    details={"drop_points": drop})


def test_the_fastest_within_the_drop_is_chosen_and_the_others_say_why():
    artifacts = [_artifact("fast but lossy", 2.5, 0.05), _artifact("busy", 0.0, None), _artifact("slow", 0.5, 0.3),
                 _artifact("chosen", 0.9, 0.1)]
    result = _choose(artifacts, 0.7, DeployConfig(max_drop=1.0), {})
    assert result.chosen.name == "chosen"
    why = {a.name: a.why_not for a in result.artifacts}
    assert why == {"fast but lossy": "loses 2.50 points (limit 1)", "busy": "no latency figure", "slow": "",
                   "chosen": ""}
    none = _choose(artifacts[:1], 0.7, DeployConfig(max_drop=1.0), {})
    assert none.chosen is None and "within 1 points of the fp32 model's 70.00%" in none.why_none


@pytest.mark.parametrize("fields, message", [
    ({"targets": ("tflite-x",)}, "export format 'tflite-x'"),
    ({"precisions": ("int4",)}, "precisions ['int4']: choose from fp32, int8"),
    ({"max_drop": -1}, "max_drop = -1"),
    ({"batch": 0}, "batch = 0"),
])
def test_a_bad_config_is_one_clear_error(fields, message):
    with pytest.raises(nc.NetcompressError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DeployConfig(**fields)


def test_onnx_artifacts_are_measured_as_they_ship(trained, food_32, tmp_path):
    model, _ = trained
    result = nc.deploy(model, food_32, tmp_path, DeployConfig(targets=("onnx",), rounds=3, batch=8))
    fp32 = nc.evaluate(model, food_32, "validation")["accuracy"]
    assert result.fp32_accuracy == pytest.approx(fp32)
    names = {a.name for a in result.artifacts}  # each pair measured, or said why not (OpenVINO lacks QLinear ops)
    assert {f"onnx {p} on {r}" for p in ("fp32", *get_exporter("onnx").int8_variants)
            for r in runtimes_reading("onnx")} == names | set(result.failed)
    assert {"onnx fp32 on ort", "onnx int8 qdq on ort", "onnx int8 qoperator on ort"} <= names
    assert all("cannot run it" in why for why in result.failed.values())
    for a in result.artifacts:
        shipped = tmp_path / a.file
        assert a.file_bytes == shipped.stat().st_size
        assert a.val_accuracy == pytest.approx(nc.evaluate(nc.load(shipped), food_32, "validation")["accuracy"])
        assert a.details["drop_points"] == pytest.approx(100 * (fp32 - a.val_accuracy), abs=0.01)
        assert a.details["memory_mb"] is None or 0 <= a.details["memory_mb"] < 2000
        assert set(a.latency_ms) == {f"{a.runtime}@1", f"{a.runtime}@8"}
    fp32_file = next(a for a in result.artifacts if a.precision == "fp32")
    assert fp32_file.val_accuracy == pytest.approx(fp32, abs=1 / 750)  # the same model, rounding aside
    timed = [a for a in result.artifacts if a.candidate]
    assert result.chosen is not None and result.chosen.latency_ms[f"{result.chosen.runtime}@1"] == \
        min(a.latency_ms[f"{a.runtime}@1"] for a in timed)
    written = json.loads((tmp_path / "deploy.json").read_text())
    assert written["chosen"] == result.chosen.name and len(written["artifacts"]) == len(result.artifacts)


@pytest.mark.slow
def test_every_installed_target_and_precision_is_built_and_measured(trained, food_32, tmp_path):
    model, _ = trained
    result = nc.deploy(model, food_32, tmp_path, DeployConfig(rounds=3, batch=8))
    built = {(a.format, a.precision) for a in result.artifacts}
    assert built == {(t, p) for t in DeployConfig().chosen_targets()
                     for p in ("fp32", *get_exporter(t).int8_variants)}, result.failed
    for a in result.artifacts:  # fixed-batch programs (ExecuTorch) were exported again to be timed at batch 8
        assert (tmp_path / a.file).exists() and set(a.latency_ms) == {f"{a.runtime}@1", f"{a.runtime}@8"}


def test_the_cli_writes_the_table_and_json(trained, food_root, cache_dir, tmp_path):
    _, path = trained
    code, out, err = run_cli("deploy", path, "--data", food_root, "--out", tmp_path / "d", "--target", "onnx",
                             "--precision", "fp32", "--no-memory", "--batch", "4", "--json", cache=cache_dir)
    assert code == 0, err
    result = json.loads(out)
    assert result["chosen"] in {a["name"] for a in result["artifacts"]}
    assert (tmp_path / "d" / result["chosen_file"]).exists()
    assert all("memory_mb" not in a["details"] for a in result["artifacts"])
    code, _, err = run_cli("deploy", path, "--data", food_root, "--out", tmp_path / "e", "--precision", "int4")
    assert code == 2 and "--precision 'int4': choose from fp32, int8, all, comma-separated" in err


def test_export_reduce_range_writes_7_bit_weights_where_the_format_has_them(trained, food_root, cache_dir, tmp_path):
    _, path = trained
    code, out, err = run_cli("export", path, "--int8", "--reduce-range", "--calibration", 16, "--data", food_root,
                             "--out", tmp_path / "m.onnx", "--json", cache=cache_dir)
    assert code == 0, err
    assert nc.spec_of(nc.load(tmp_path / "m.onnx")).info.exported["onnx_int8"]["reduce_range"] is True
    code, _, err = run_cli("export", path, "--int8", "--reduce-range", "--data", food_root, "--out",
                           tmp_path / "m.pte", cache=cache_dir)
    assert code == 2 and "7-bit weights are for onnx, openvino, not executorch" in err
