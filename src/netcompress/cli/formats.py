"""`netcompress export`, `course-pkl`, `import-course` and `export-course`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import NetcompressError, evaluate, export_onnx, load, save, spec_of
from ..data.folder import read_class_names
from ..formats.course import export_course_state_dict, import_course_checkpoint, save_course_pkl
from ..formats.onnx import OnnxModel
from .common import CacheOpt, JsonOpt, app, console, emit, folder, kv_table


@app.command()
def export(
    model_file: Path = typer.Argument(..., help="Model file (.safetensors, .ncq or a course .bin)."),
    out: Path = typer.Option(..., "--out", help="ONNX file to write (.onnx)."),
    int8: bool = typer.Option(False, "--int8", help="Static int8 (QDQ) quantization with ONNX Runtime; needs --data."),
    calibration: int = typer.Option(256, "--calibration", help="Training images used to calibrate int8 ranges."),
    method: str = typer.Option("minmax", "--calibration-method", help="minmax, entropy or percentile."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder: calibration images (training split) "
                                                             "and, when given, fp32 vs exported validation accuracy."),
    cache_dir: Optional[Path] = CacheOpt,
    as_json: bool = JsonOpt,
):
    """Export a model to ONNX (fp32, dynamic batch), optionally int8 for ONNX Runtime.

    Example: netcompress export runs/kd/best.safetensors --int8 --calibration 256 --data ../shared/data/food101_10 --out kd-int8.onnx
    """
    if int8 and data is None:
        raise NetcompressError("--int8 needs --data DIR: its training images calibrate the activation ranges")
    net = load(model_file)
    if isinstance(net, OnnxModel):
        raise NetcompressError(f"{model_file} is already ONNX; export a .safetensors or .ncq model")
    ds = None if data is None else folder(data, spec_of(net).input_size, cache_dir, False, True)
    export_onnx(net, out, int8=int8, calibration=ds, calibration_images=calibration, calibration_method=method)
    result = {"model": str(model_file), "out": str(out), "precision": "int8 (QDQ)" if int8 else "fp32",
              "bytes": out.stat().st_size}
    if ds is not None:
        result.update(val_accuracy_fp32=evaluate(net, ds, device="cpu")["accuracy"],
                      val_accuracy=evaluate(load(out), ds, device="cpu")["accuracy"])
    emit(result, as_json, kv_table(f"export {model_file.name}", result))


@app.command("course-pkl")
def course_pkl(
    model_file: Path = typer.Argument(..., help="A StudentNet model file (.safetensors, .ncq or course .bin)."),
    out: Path = typer.Option(..., "--out", help="Pickle to write (.pkl)."),
    bits: int = typer.Option(8, "--bits", help="8 (min-max uint8) or 16 (float16), as the course's encode8/encode16."),
    protocol: int = typer.Option(3, "--protocol", help="Pickle protocol (the course's files: 3)."),
    as_json: bool = JsonOpt,
):
    """Write the course's 8- or 16-bit weight pickle; `.pkl` files load back in every verb (safely, no code runs).

    Example: netcompress course-pkl ../shared/data/hw7/student_custom_small.bin --bits 8 --protocol 3 --out student8.pkl
    """
    save_course_pkl(load(model_file), out, bits, protocol)
    result = {"model": str(model_file), "out": str(out), "bits": bits, "protocol": protocol,
              "bytes": out.stat().st_size}
    emit(result, as_json, kv_table("course pickle", result))


@app.command("import-course")
def import_course(
    checkpoint: Path = typer.Argument(..., help="The course's StudentNet state_dict, e.g. student_custom_small.bin."),
    out: Path = typer.Option(..., "--out", help="Model file to write (.safetensors)."),
    image_size: int = typer.Option(256, "--image-size", help="Input size the model expects (the course used 256)."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="classes.txt with the class names."),
):
    """Convert a course checkpoint into a netcompress model file (no pickle code runs).

    Example: netcompress import-course ../shared/data/hw7/student_custom_small.bin --out course.safetensors
    """
    if classes and classes.name != "classes.txt":
        raise NetcompressError(f"--classes {classes}: expected a file named classes.txt")
    names = read_class_names(classes.parent) if classes else None
    net = import_course_checkpoint(checkpoint, class_names=names, input_size=image_size)
    save(net, out)
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes): {spec_of(net).arch} widths {spec_of(net).kwargs['widths']}")


@app.command("export-course")
def export_course(
    model_file: Path = typer.Argument(..., help="A StudentNet model file."),
    out: Path = typer.Option(..., "--out", help="state_dict file to write (.bin)."),
    zip_format: bool = typer.Option(False, "--zip", help="torch's zip serialization instead of the legacy one."),
):
    """Export a StudentNet as a plain state_dict that the course's code loads.

    Example: netcompress export-course runs/student/best.safetensors --out student.bin
    """
    export_course_state_dict(load(model_file), out, legacy=not zip_format)
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes, {'zip' if zip_format else 'legacy'} torch format)")
