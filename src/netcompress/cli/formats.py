"""`netcompress export`, `course-pkl`, `import-course` and `export-course`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .. import NetcompressError, evaluate, load, save, spec_of
from .. import export as export_model
from ..data.folder import read_class_names
from ..formats.course import export_course_state_dict, import_course_checkpoint, load_course_pkl, save_course_pkl
from ..formats.load import exporter_for, list_exporters, readable_suffixes
from ..formats.state_dict import load_into_registered
from ..spec import attach
from .common import (
    CacheOpt,
    JsonOpt,
    Registered,
    ThreadsOpt,
    app,
    console,
    data_for,
    emit,
    kv_table,
    load_file,
    set_threads,
)


@app.command()
def export(
    model_file: Path = typer.Argument(..., help="Model file (.safetensors, .ncq or a course .bin)."),
    out: Path = typer.Option(..., "--out", help="File to write; its suffix picks the format unless --format is given "
                             "(.onnx: ONNX)."),
    target: Optional[str] = Registered(None, "--format", names=list_exporters, help="Export format: one of {names} "
                                       "[default: the one that writes --out's suffix]."),
    int8: bool = typer.Option(False, "--int8", help="Static int8 quantization (ONNX: QDQ for ONNX Runtime), "
                              "calibrated on training images; needs --data."),
    calibration: int = typer.Option(256, "--calibration", help="Training images used to calibrate int8 ranges."),
    method: str = typer.Option("minmax", "--calibration-method", help="minmax, entropy or percentile."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder: calibration images (training split) "
                                                             "and, when given, fp32 vs exported validation accuracy."),
    dynamic_size: bool = typer.Option(False, "--dynamic-size", help="Height and width dynamic too (the batch always "
                                      "is); the file records the size the model was trained at."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Default: the model's own input size."),
    threads: Optional[int] = ThreadsOpt,
    cache_dir: Optional[Path] = CacheOpt,
    as_json: bool = JsonOpt,
):
    """Export a model to a deployment format: ONNX (fp32, dynamic batch), optionally int8 for ONNX Runtime.

    Example: netcompress export runs/kd/best.safetensors --int8 --calibration 256 --data ../shared/data/food101_10 --out kd-int8.onnx
    """
    if target is None:
        fmt = exporter_for(out)
        if fmt is None:
            raise NetcompressError(f"--out {out}: no export format writes {out.suffix or 'suffix-less'} files; name "
                                   f"one with --format ({', '.join(list_exporters())})")
        target = fmt.name
    if int8 and data is None:
        raise NetcompressError("--int8 needs --data DIR: its training images calibrate the activation ranges")
    options = {"int8": True, "calibration_images": calibration, "calibration_method": method} if int8 else {}
    if dynamic_size:
        options["dynamic_size"] = True
    set_threads(threads)
    net = load_file(model_file)
    if image_size:
        attach(net, spec_of(net).replace(input_size=image_size))
    ds = None if data is None else data_for(net, model_file, data, image_size, cache_dir, False, True)
    export_model(net, target, out, ds, **options)
    result = {"model": str(model_file), "out": str(out), "format": target, "precision": "int8" if int8 else "fp32",
              "input": "dynamic size" if dynamic_size else f"{spec_of(net).input_size}px", "bytes": out.stat().st_size}
    if ds is not None and out.suffix.lower() in readable_suffixes():
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
    checkpoint: Path = typer.Argument(..., help="The course's StudentNet: a state_dict (.bin, .pt) or 8/16-bit pickle (.pkl)."),
    out: Path = typer.Option(..., "--out", help="Model file to write (.safetensors)."),
    image_size: int = typer.Option(..., "--image-size", help="Input size the model was trained at (the course: 256); "
                                   "course files do not record it."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="classes.txt with the class names."),
    pool_after: Optional[str] = typer.Option(None, "--pool-after", help="Blocks followed by a MaxPool, e.g. 0,1,2,3 "
                                             "[default: the course's for 8 blocks, the seed report's 0,1,2,5 for 9]."),
):
    """Convert a course checkpoint or pickle into a netcompress model file (no pickle code runs).

    Example: netcompress import-course ../shared/data/hw7/student_custom_small.bin --image-size 256 --out course.safetensors
    """
    if classes and classes.name != "classes.txt":
        raise NetcompressError(f"--classes {classes}: expected a file named classes.txt")
    names = read_class_names(classes.parent) if classes else None
    pools = _int_list(pool_after, "--pool-after") if pool_after else None
    if checkpoint.suffix.lower() == ".pkl":
        net = load_course_pkl(checkpoint, class_names=names, input_size=image_size, pool_after=pools)
    else:
        net = import_course_checkpoint(checkpoint, class_names=names, input_size=image_size, pool_after=pools)
    save(net, out)
    spec = spec_of(net)
    note = f"; MaxPool positions {spec.info.extra['pool_after']}" if "pool_after" in spec.info.extra else ""
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes): {spec.arch} widths {spec.kwargs['widths']}{note}")


@app.command("import-state-dict")
def import_state_dict(
    checkpoint: Path = typer.Argument(..., help="A torch state_dict file (legacy or zip format; .pt, .pth, .bin)."),
    arch: str = typer.Option(..., "--arch", help="Registered architecture (netcompress models), e.g. groupcnn, resnet18."),
    kwargs: str = typer.Option("{}", "--kwargs", help="Constructor arguments as JSON, e.g. '{\"groups\": 4}'; the "
                               "class count, input channels and StudentNet/CNN widths are read from the file."),
    out: Path = typer.Option(..., "--out", help="Model file to write (.safetensors)."),
    image_size: int = typer.Option(..., "--image-size", help="Input size the model was trained at."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="classes.txt with the class names."),
):
    """Load any state_dict checkpoint (weights only: no code runs) into a registered architecture.

    Every tensor the checkpoint lacks, has in excess or has in another shape is listed with the
    likely fix. The model file it writes works with every verb. Your own module class: use
    nc.load_state_dict(path, MyNet()) from Python.

    Example: netcompress import-state-dict groupcnn.pt --arch groupcnn --kwargs '{"pool_after": [0, 1, 2, 3]}' --image-size 64 --out gcnn.safetensors
    """
    try:
        given = json.loads(kwargs)
    except json.JSONDecodeError as exc:
        raise NetcompressError(f"--kwargs {kwargs!r} is not JSON ({exc}); write e.g. '{{\"groups\": 4}}'") from exc
    if not isinstance(given, dict):
        raise NetcompressError(f"--kwargs {kwargs!r} must be a JSON object of constructor arguments")
    if classes and classes.name != "classes.txt":
        raise NetcompressError(f"--classes {classes}: expected a file named classes.txt")
    names = read_class_names(classes.parent) if classes else None
    net = load_into_registered(checkpoint, arch, given, class_names=names, input_size=image_size)
    save(net, out)
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes): {arch} "
                  + ", ".join(f"{k}={v}" for k, v in spec_of(net).kwargs.items() if k not in ("base", "multipliers")))


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError as exc:
        raise NetcompressError(f"{option} {text!r}: write block numbers separated by commas, e.g. 0,1,2,3") from exc


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
