"""LiteRT export: fp32 and full-integer int8 .tflite files that plain LiteRT runs, agreeing with eager PyTorch on
real photos, with their spec beside them, refused when damaged, and run by the litert runtime."""

import importlib.util
import json

import numpy as np
import pytest
import torch

import netcompress as nc
from program_checks import assert_damage_is_refused, assert_runs_on_the_calling_thread

litert = pytest.importorskip("ai_edge_litert.interpreter",
                             reason="the litert extra is not installed: pip install 'netcompress[litert]'")
if importlib.util.find_spec("litert_torch") is None:  # found, not imported: it brings JAX, seconds to import
    pytest.skip("the litert extra is not installed: pip install 'netcompress[litert]'", allow_module_level=True)

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # exports once per module: tens of seconds


@pytest.fixture(scope="module")
def exported(course_student_32, food_32, tmp_path_factory):
    folder = tmp_path_factory.mktemp("litert")
    fp32 = nc.export(course_student_32, "litert", folder / "fp32.tflite")
    int8 = nc.export(course_student_32, "litert", folder / "int8.tflite", food_32, int8=True, calibration_images=128,
                     batch=16)
    return fp32, int8


def plain_litert(path, images: torch.Tensor) -> torch.Tensor:
    """Logits from LiteRT alone, as a deployment without netcompress runs the file: its batch is fixed, and an
    integer file takes its input quantized and gives its logits quantized, each with its own scale."""
    interpreter = litert.Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert len(images) % inp["shape"][0] == 0
    logits = []
    for chunk in images.split(int(inp["shape"][0])):
        x = chunk.numpy()
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] == np.int8:
            y = (y - out["quantization"][1]) * out["quantization"][0]
        logits.append(torch.from_numpy(y.copy()))
    return torch.cat(logits)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


def test_fp32_file_runs_in_plain_litert_like_pytorch(course_student_32, food_32_photos, exported):
    fp32, _ = exported
    ref = course_student_32(food_32_photos)
    out = plain_litert(fp32, food_32_photos)
    assert torch.allclose(out, ref, atol=1e-3) and agreement(out, ref) == 1.0
    meta = json.loads(fp32.with_suffix(".json").read_text())["netcompress"]
    assert meta["class_names"] == nc.spec_of(course_student_32).class_names and meta["input_size"] == 32
    assert meta["preprocessing"] == nc.spec_of(course_student_32).preprocessing


def test_int8_file_is_integer_end_to_end_and_agrees_with_pytorch_on_real_photos(course_student_32, food_32_photos,
                                                                              exported):
    fp32, int8 = exported
    interpreter = litert.Interpreter(model_path=str(int8))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    ref = course_student_32(food_32_photos)
    out = plain_litert(int8, food_32_photos[:144])  # its batch is 16
    assert out.shape == ref[:144].shape and torch.isfinite(out).all()
    assert agreement(out, ref[:144]) >= 0.75  # as ExecuTorch's and ONNX Runtime's int8 files
    assert int8.stat().st_size < fp32.stat().st_size / 2.5
    model = nc.load(int8)
    assert nc.spec_of(model).info.exported["litert_int8"]["calibration_images"] == 128 and model.batch == 16
    padded = model(food_32_photos)  # 150 photos: the last chunk of 6 padded to 16
    assert padded.shape == ref.shape and torch.allclose(padded[:144], out, atol=1e-5)
    assert torch.allclose(padded[144:], plain_litert(int8, food_32_photos[134:])[10:], atol=1e-5)


def test_netcompress_loads_the_file_with_its_spec_and_checks_it(course_student_32, food_32_photos, exported,
                                                                tmp_path):
    fp32, _ = exported
    model = nc.load(fp32)
    assert nc.spec_of(model) == nc.spec_of(course_student_32).with_export("litert", {"input_size": 32, "batch": 1})
    assert torch.allclose(model(food_32_photos), course_student_32(food_32_photos), atol=1e-3)
    assert_damage_is_refused(fp32, tmp_path, num_classes=11, input_size=32)
    (tmp_path / "e.tflite").write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(nc.NetcompressError, match="e.tflite: LiteRT cannot load it"):
        nc.load(tmp_path / "e.tflite")


def test_litert_runtime_runs_the_file_on_the_calling_thread(exported, tmp_path):
    assert_runs_on_the_calling_thread("litert", nc.load(exported[0]), tmp_path)
