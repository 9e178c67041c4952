"""`netcompress export`, `course-pkl`, `import-course` and `export-course`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .. import NetcompressError, evaluate, load, save, spec_of
from .. import export as export_model
from ..data.folder import read_class_names
from ..formats.course import (
    export_course_state_dict,
    import_course_checkpoint,
    layout_text,
    save_course_pkl,
)
from ..formats.load import exported_bytes, exporter_for, list_exporters, readable_suffixes, seven_bit_options
from ..formats.state_dict import assumed_layout, load_into_registered
from ..measure.chance import above_chance
from ..models import model_kwargs
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
    folder,
    input_size_of,
    kv_table,
    load_file,
    set_threads,
)
from .options import model_size_option


@app.command()
def export(
    model_file: Path = typer.Argument(..., help="Model file (.safetensors, .ncq, or a course checkpoint: .bin, .pkl, "
                                      ".npz; give those --image-size)."),
    out: Path = typer.Option(..., "--out", help="File to write; its suffix picks the format unless --format is given "
                             "(.onnx: ONNX; .xml: OpenVINO IR, its weights in the .bin beside it; .pte: ExecuTorch "
                             "with XNNPACK; .tflite: LiteRT; those two with their spec in the .json beside them)."),
    target: Optional[str] = Registered(None, "--format", names=list_exporters, help="Export format: one of {names} "
                                       "[default: the one that writes --out's suffix]."),
    int8: bool = typer.Option(False, "--int8", help="Static int8 quantization (ONNX: QDQ for ONNX Runtime; OpenVINO: "
                              "NNCF; ExecuTorch and LiteRT: PT2E, LiteRT's integer end to end), calibrated on training "
                              "images; needs --data."),
    calibration: int = typer.Option(256, "--calibration", help="Training images used to calibrate int8 ranges."),
    method: Optional[str] = typer.Option(None, "--calibration-method", help="ONNX: minmax (default), entropy or "
                                         "percentile."),
    quant_format: Optional[str] = typer.Option(None, "--quant-format", help="ONNX int8: qdq (default) or qoperator; "
                                               "`netcompress deploy` measures which is faster."),
    reduce_range: bool = typer.Option(False, "--reduce-range", help="Int8 with 7-bit weights (ONNX, OpenVINO): "
                                      "what x86 CPUs without VNNI need to keep their 16-bit sums from overflowing; "
                                      "`netcompress deploy` measures both."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder: calibration images (training split) "
                                                             "and, when given, fp32 vs exported validation accuracy."),
    dynamic_size: bool = typer.Option(False, "--dynamic-size", help="Height and width dynamic too (the batch always "
                                      "is); the file records the size the model was trained at."),
    image_size: Optional[int] = model_size_option(help="Default: the model's own input size."),
    threads: Optional[int] = ThreadsOpt,
    cache_dir: Optional[Path] = CacheOpt,
    as_json: bool = JsonOpt,
):
    """Export a model to a deployment format: ONNX, OpenVINO IR, ExecuTorch or LiteRT (fp32), optionally int8.

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
    options = {"int8": True, "calibration_images": calibration} if int8 else {}
    if int8 and method is not None:
        options["calibration_method"] = method
    if int8 and quant_format is not None:
        options["quant_format"] = quant_format
    if int8 and reduce_range:
        options.update(seven_bit_options(target))
    if dynamic_size:
        options["dynamic_size"] = True
    set_threads(threads)
    net = load_file(model_file)
    if image_size:
        attach(net, spec_of(net).replace(input_size=image_size))
    input_size_of(spec_of(net), model_file)  # course files record none: ask for --image-size by name
    ds = None if data is None else data_for(net, model_file, data, image_size, cache_dir, False, True)
    export_model(net, target, out, ds, **options)
    result = {"model": str(model_file), "out": str(out), "format": target, "precision": "int8" if int8 else "fp32",
              "input": "dynamic size" if dynamic_size else f"{spec_of(net).input_size}px", "bytes": exported_bytes(target, out)}
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
    checkpoint: Path = typer.Argument(..., help="A course-style StudentNet checkpoint: a torch state_dict, the "
                                      "course's 8/16-bit pickle or a .npz, whatever its name says (told by its bytes)."),
    out: Path = typer.Option(..., "--out", help="Model file to write (.safetensors)."),
    image_size: int = typer.Option(..., "--image-size", help="Input size the model was trained at (the course: 256); "
                                   "course files do not record it."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="classes.txt with the class names."),
    pool_after: Optional[str] = typer.Option(None, "--pool-after", help="Blocks followed by a MaxPool, e.g. 0,1,2,3, "
                                             "or none: the file does not record them."),
    strided: Optional[str] = typer.Option(None, "--strided", help="Blocks whose first conv has stride 2 (in place of "
                                          "a MaxPool), e.g. 1,2,3,4 [default: none]."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled images (validation split) to check the layout "
                                        "on: near-chance accuracy means the file was saved from another layout."),
    cache_dir: Optional[Path] = CacheOpt,
):
    """Convert a course-style StudentNet checkpoint into a netcompress model file (no pickle code runs).

    Widths, block count, classifier head, conv biases and BatchNorms come from the tensors. Where
    the net downsamples (MaxPool or stride 2), its activations and preprocessing do not: give
    --pool-after/--strided, or --data to check the registered layout on labelled images; with
    neither, the import is refused. Your own class: nc.load(path, model=MyNet()).

    Example: netcompress import-course ../shared/data/hw7/student_custom_small.bin --image-size 256 --pool-after 0,1,2,3 --out course.safetensors
    """
    names = class_names(classes)
    pools = _int_list(pool_after, "--pool-after") if pool_after is not None else None
    strides = _int_list(strided, "--strided") if strided is not None else None
    net = import_course_checkpoint(checkpoint, class_names=names, input_size=image_size, pool_after=pools,
                                   strided=strides)
    given = pools is not None or strides is not None
    layout = layout_text(spec_of(net).kwargs)
    if data is None and not given:
        raise NetcompressError(
            f"{checkpoint}: its tensors give a StudentNet of {len(net.widths)} blocks (widths {net.widths}), but not where it "
            f"downsamples, its activations or its preprocessing; the registered layout would be: {layout}. Check it on "
            "labelled images with --data DIR, or state it: rerun with "
            f"`--pool-after {','.join(map(str, net.pool_after)) or 'none'}`, or load the file with your own class: "
            "nc.load(path, model=YourNet())")
    note = f"layout {'given' if given else 'assumed'}: {layout}"
    if data is not None:
        line, found_names = _check_layout(net, checkpoint, data, image_size, cache_dir, note)
        net = attach(net, spec_of(net).replace(class_names=names or found_names))
        note += "; " + line
    else:
        note += " (not checked: --data DIR checks it)"
    save(net, out)
    spec = spec_of(net)
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes): {spec.arch} widths {spec.kwargs['widths']}"
                  + "".join(f", {k}={spec.kwargs[k]}" for k in ("head", "bias", "pointwise_bn")
                            if spec.kwargs[k] != model_kwargs(spec.arch)[k]))
    print(note, file=sys.stderr)


@app.command("import-state-dict")
def import_state_dict(
    checkpoint: Path = typer.Argument(..., help="A checkpoint: torch state_dict (legacy or zip), the course's 8/16-bit "
                                      "pickle or a .npz, whatever its name says (told by its bytes)."),
    arch: str = typer.Option(..., "--arch", help="Registered architecture (netcompress models), e.g. groupcnn, resnet18."),
    kwargs: str = typer.Option("{}", "--kwargs", help="Constructor arguments as JSON, e.g. '{\"groups\": 4}'; the "
                               "class count, input channels and StudentNet/CNN widths are read from the file."),
    out: Path = typer.Option(..., "--out", help="Model file to write (.safetensors)."),
    image_size: int = typer.Option(..., "--image-size", help="Input size the model was trained at."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="classes.txt with the class names."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled images (validation split) to check on: "
                                        "near-chance accuracy means the file was saved from another layout."),
    cache_dir: Optional[Path] = CacheOpt,
):
    """Load any state_dict checkpoint (weights only: no code runs) into a registered architecture.

    Every tensor the checkpoint lacks, has in excess or has in another shape is listed with the
    likely fix. Where the architecture's layout leaves no trace in tensors (StudentNet's and the
    CNNs' pool_after, strided), give it in --kwargs or check it with --data. The model file it
    writes works with every verb. Your own module class: nc.load_state_dict(path, MyNet()).

    Example: netcompress import-state-dict groupcnn.pt --arch groupcnn --kwargs '{"pool_after": [0, 1, 2, 3]}' --image-size 64 --out gcnn.safetensors
    """
    try:
        given = json.loads(kwargs)
    except json.JSONDecodeError as exc:
        raise NetcompressError(f"--kwargs {kwargs!r} is not JSON ({exc}); write e.g. '{{\"groups\": 4}}'") from exc
    if not isinstance(given, dict):
        raise NetcompressError(f"--kwargs {kwargs!r} must be a JSON object of constructor arguments")
    names = class_names(classes)
    net = load_into_registered(checkpoint, arch, given, class_names=names, input_size=image_size)
    assumed = assumed_layout(arch, given)
    if assumed and data is None:
        raise NetcompressError(
            f"{checkpoint}: the tensors do not show {arch}'s {', '.join(assumed)}; the registered "
            f"{', '.join(f'{k}={v}' for k, v in assumed.items())} would be assumed. Check it on labelled images with "
            f"--data DIR, or state it: rerun with `--kwargs '{json.dumps({**given, **assumed})}'`, or load the file "
            "with your own class: nc.load_state_dict(path, YourNet())")
    note = f"{', '.join(f'{k}={v}' for k, v in assumed.items())} assumed" if assumed else ""
    if data is not None:
        line, found_names = _check_layout(net, checkpoint, data, image_size, cache_dir, note or f"{arch} as registered")
        net = attach(net, spec_of(net).replace(class_names=names or found_names))
        note = "; ".join(filter(None, [note, line]))
    save(net, out)
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes): {arch} "
                  + ", ".join(f"{k}={v}" for k, v in spec_of(net).kwargs.items() if k not in ("base", "multipliers")))
    if note:
        print(note, file=sys.stderr)


def class_names(classes: Path | None) -> list[str] | None:
    if classes and classes.name != "classes.txt":
        raise NetcompressError(f"--classes {classes}: expected a file named classes.txt")
    return read_class_names(classes.parent) if classes else None


def _check_layout(net, checkpoint: Path, data: Path, image_size: int, cache_dir, layout: str) -> tuple[str, list[str]]:
    """The import's check on labelled images: a line saying it holds and the data's class names, or the refusal."""
    ds = folder(data, image_size, cache_dir, False, True, channels=spec_of(net).channels)
    if len(ds.class_names) != spec_of(net).num_classes:
        raise NetcompressError(f"{checkpoint} predicts {spec_of(net).num_classes} classes but --data {data} has "
                               f"{len(ds.class_names)}: check the layout on data of the classes it was trained on")
    found = above_chance(net, ds)
    line = (f"checked on {data} ({found['split']}, {found['images']} images): accuracy {found['accuracy']:.3f}, "
            f"chance {found['chance']:.3f}")
    if not found["holds"]:
        raise NetcompressError(f"{checkpoint}: with {layout}, {line}: near chance, so the file was saved from another "
                               "layout (strides, pooling, activation or preprocessing); nothing written. Give the "
                               "layout (import-course: --pool-after and --strided), or load the file with your own "
                               "class: nc.load(path, model=YourNet())")
    return line, list(ds.class_names)


def _int_list(text: str, option: str) -> list[int]:
    if text.strip().lower() in ("none", ""):
        return []
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
