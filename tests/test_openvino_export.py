"""OpenVINO IR export: fp32 and NNCF int8 files that plain OpenVINO loads, agreeing with eager PyTorch on real
photos, carrying their spec, refused when damaged, and run by the openvino latency runtime."""

import json
import multiprocessing
import os
import shutil

import pytest
import torch

import netcompress as nc

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'netcompress[openvino]'")


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # exports once per module: tens of seconds


@pytest.fixture(scope="module")
def exported(course_student_32, food_32, tmp_path_factory):
    folder = tmp_path_factory.mktemp("openvino")
    fp32 = nc.export(course_student_32, "openvino", folder / "fp32.xml")
    if not _has_nncf():
        return fp32, None
    return fp32, nc.export(course_student_32, "openvino", folder / "int8.xml", food_32, int8=True,
                           calibration_images=128)


def _has_nncf() -> bool:
    import importlib.util

    return importlib.util.find_spec("nncf") is not None


def plain_openvino(path, images: torch.Tensor) -> torch.Tensor:
    """Logits from OpenVINO alone, as a deployment without netcompress runs the file."""
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return torch.from_numpy(compiled(images.numpy())[compiled.output(0)].copy())


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


def test_fp32_ir_runs_in_plain_openvino_like_pytorch(course_student_32, food_32_photos, exported):
    fp32, _ = exported
    assert fp32.with_suffix(".bin").stat().st_size > 4 * 200_000  # fp32 weights, not compressed to fp16
    ref = course_student_32(food_32_photos)
    out = plain_openvino(fp32, food_32_photos)
    assert torch.allclose(out, ref, atol=1e-3) and agreement(out, ref) == 1.0
    assert torch.allclose(plain_openvino(fp32, food_32_photos[:1]), ref[:1], atol=1e-3)  # dynamic batch
    meta = json.loads(ov.Core().read_model(str(fp32)).get_rt_info(["netcompress", "spec"]).astype(str))
    assert meta["class_names"] == nc.spec_of(course_student_32).class_names and meta["input_size"] == 32
    assert meta["preprocessing"] == nc.spec_of(course_student_32).preprocessing


def test_int8_ir_agrees_with_pytorch_on_real_photos(course_student_32, food_32_photos, exported):
    if not _has_nncf():
        pytest.skip("NNCF is not installed (the openvino extra installs it): int8 OpenVINO export needs it")
    fp32, int8 = exported
    ref = course_student_32(food_32_photos)
    out = plain_openvino(int8, food_32_photos)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert agreement(out, ref) >= 0.85
    assert int8.with_suffix(".bin").stat().st_size < fp32.with_suffix(".bin").stat().st_size / 2.5
    assert nc.spec_of(nc.load(int8)).info.exported["openvino_int8"]["calibration_images"] == 128


def test_netcompress_loads_the_ir_with_its_spec_and_checks_it(course_student_32, food_32_photos, exported, tmp_path):
    fp32, _ = exported
    model = nc.load(fp32)
    assert nc.spec_of(model) == nc.spec_of(course_student_32).with_export("openvino",
                                                                          {"input_size": 32, "dynamic_size": False})
    assert torch.allclose(model(food_32_photos), course_student_32(food_32_photos), atol=1e-3)
    for damaged, offset in (("xml", 200), ("bin", 1000)):
        shutil.copy(fp32, tmp_path / "d.xml")
        shutil.copy(fp32.with_suffix(".bin"), tmp_path / "d.bin")
        raw = bytearray((tmp_path / f"d.{damaged}").read_bytes())
        raw[offset] = ord("7") if raw[offset] != ord("7") else ord("8")
        (tmp_path / f"d.{damaged}").write_bytes(bytes(raw))
        try:
            with pytest.raises(nc.NetcompressError, match="checksum mismatch|cannot read"):
                nc.load(tmp_path / "d.xml")
        except AssertionError:
            raise AssertionError(f"a changed byte in the .{damaged} file was not noticed") from None
    (tmp_path / "d.bin").unlink()
    with pytest.raises(nc.NetcompressError, match="d.bin are not beside it"):
        nc.load(tmp_path / "d.xml")


def test_openvino_runtime_runs_the_ir_and_ort_refuses_it(exported, tmp_path):
    from netcompress.measure.latency import get_runtime, runtimes_for

    model = nc.load(exported[0])
    assert runtimes_for(model) == ["openvino"]
    x = torch.rand(nc.spec_of(model).input_shape(1))
    get_runtime("openvino").prepare(model, x, 1, tmp_path)()
    with pytest.raises(nc.NetcompressError, match="runs on the openvino runtime, not ort"):
        nc.latency(model, runtime="ort")


def test_cli_exports_openvino_by_suffix(course_student_32, tmp_path):
    from typer.testing import CliRunner

    from netcompress.cli import app

    nc.save(course_student_32, tmp_path / "s.safetensors")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "s.safetensors"), "--out", str(tmp_path / "s.xml"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert row["format"] == "openvino"
    assert row["bytes"] == (tmp_path / "s.xml").stat().st_size + (tmp_path / "s.bin").stat().st_size


def test_export_starts_no_telemetry_process_and_leaves_the_environment_as_it_was(course_student_32, food_32,
                                                                                    tmp_path, monkeypatch):
    """OpenVINO's converter (and NNCF) would send usage events, each from a forked process, on every export."""
    started = []
    monkeypatch.setattr(multiprocessing.Process, "start", lambda process: started.append(process))  # never runs it
    monkeypatch.delenv("CI", raising=False)
    nc.export(course_student_32, "openvino", tmp_path / "fp32.xml")
    if _has_nncf():
        nc.export(course_student_32, "openvino", tmp_path / "int8.xml", food_32, int8=True, calibration_images=32)
    assert started == [] and "CI" not in os.environ
