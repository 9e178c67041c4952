"""ExecuTorch export: fp32 and PT2E int8 .pte programs (XNNPACK) that plain ExecuTorch runs, agreeing with eager
PyTorch on real photos, with their spec beside them, refused when damaged, and run by the executorch runtime."""

import json

import pytest
import torch

import netcompress as nc
from program_checks import assert_damage_is_refused, assert_runs_on_the_calling_thread

et_runtime = pytest.importorskip("executorch.runtime",
                                 reason="the executorch extra is not installed: pip install 'netcompress[executorch]'")


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # exports once per module: tens of seconds


@pytest.fixture(scope="module")
def exported(course_student_32, food_32, tmp_path_factory):
    folder = tmp_path_factory.mktemp("executorch")
    fp32 = nc.export(course_student_32, "executorch", folder / "fp32.pte")
    int8 = nc.export(course_student_32, "executorch", folder / "int8.pte", food_32, int8=True, calibration_images=128,
                     batch=16)
    return fp32, int8


def plain_executorch(path, images: torch.Tensor) -> torch.Tensor:
    """Logits from ExecuTorch alone, as a deployment without netcompress runs the program (its batch is fixed)."""
    method = et_runtime.Runtime.get().load_program(path).load_method("forward")
    batch = method.metadata.input_tensor_meta(0).sizes()[0]
    assert len(images) % batch == 0
    return torch.cat([method.execute([chunk.contiguous()])[0].clone() for chunk in images.split(batch)])


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


def test_fp32_program_runs_in_plain_executorch_like_pytorch(course_student_32, food_32_photos, exported):
    fp32, _ = exported
    ref = course_student_32(food_32_photos)
    out = plain_executorch(fp32, food_32_photos)
    assert torch.allclose(out, ref, atol=1e-3) and agreement(out, ref) == 1.0
    meta = json.loads(fp32.with_suffix(".json").read_text())["netcompress"]
    assert meta["class_names"] == nc.spec_of(course_student_32).class_names and meta["input_size"] == 32
    assert meta["preprocessing"] == nc.spec_of(course_student_32).preprocessing


def test_int8_program_agrees_with_pytorch_on_real_photos(course_student_32, food_32_photos, exported):
    fp32, int8 = exported
    ref = course_student_32(food_32_photos)
    out = plain_executorch(int8, food_32_photos[:144])  # its batch is 16
    assert out.shape == ref[:144].shape and torch.isfinite(out).all()
    assert agreement(out, ref[:144]) >= 0.75  # 0.83 measured; ONNX Runtime's int8 QDQ agrees as often
    assert int8.stat().st_size < fp32.stat().st_size / 2.5
    model = nc.load(int8)
    assert nc.spec_of(model).info.exported["executorch_int8"]["calibration_images"] == 128
    padded = model(food_32_photos)  # 150 photos: the last chunk of 6 padded to 16
    assert padded.shape == ref.shape and torch.allclose(padded[:144], out, atol=1e-5)
    assert torch.allclose(padded[144:], plain_executorch(int8, food_32_photos[134:])[10:], atol=1e-5)


def test_netcompress_loads_the_program_with_its_spec_and_checks_it(course_student_32, food_32_photos, exported,
                                                                   tmp_path):
    fp32, _ = exported
    model = nc.load(fp32)
    assert nc.spec_of(model) == nc.spec_of(course_student_32).with_export(
        "executorch", {"input_size": 32, "batch": 1, "delegate": "xnnpack"})
    # 150 photos, one at a time
    assert torch.allclose(model(food_32_photos), course_student_32(food_32_photos), atol=1e-3)
    assert_damage_is_refused(fp32, tmp_path, num_classes=11, input_size=32)


def test_executorch_runtime_runs_the_program_on_the_calling_thread(exported, tmp_path):
    assert_runs_on_the_calling_thread("executorch", nc.load(exported[0]), tmp_path)
