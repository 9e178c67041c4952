"""What every command shares: the app, option declarations, output tables, data folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import typer
from rich.console import Console
from rich.table import Table
from typer.models import OptionInfo

from .. import (
    DistillConfig,
    ImageFolderData,
    NetcompressError,
    list_models,
    list_runtimes,
    load,
    new_model,
    spec_of,
)
from ..data.sizes import check_image_size
from ..files import json_text
from ..measure.cost import LATENCY_HEADINGS, latency_texts
from ..measure.latency import LatencyTarget
from ..preflight import Preflight, training_bytes
from ..process import fair_threads, log, usable_cores
from ..spec import attach
from ..version import __version__
from ..train.distributed import launch, strip_nproc

app = typer.Typer(
    help="Compress image classifiers: train, distill, prune, quantize, measure and report.\n\n"
    "Data folders hold training|train, validation|val, testing|test folders in the Food-11 layout "
    "(<label>_<k>.jpg) or the ImageFolder layout (<split>/<class>/*.jpg), or one folder per class; "
    "--labels adds labels from a CSV. A missing validation or testing split is carved from training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 160)  # no truncated tables in logs


def print_version(wanted: bool) -> None:
    if wanted:
        print(f"netcompress {__version__}")
        raise typer.Exit()


@app.callback()
def options(no_verify: bool = typer.Option(False, "--no-verify", help="Load netcompress model files without checking "
                                           "their checksums and that their weights are finite."),
            version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=print_version,
                                         help="Print the version and exit.")) -> None:
    """Options for every verb, given before it: netcompress --no-verify evaluate ..."""
    if no_verify:
        os.environ["NETCOMPRESS_NO_VERIFY"] = "1"

class Registered(OptionInfo):
    """An option whose value is a registered name (codec, pruning method, runtime, distillation loss, export format).

    Its help is written from the registry when the command line is built, which typer does on every run, after
    every registration: "{names}" in `help` becomes the registered names. A name the registry lacks is refused
    before the verb runs, naming the option. `also`: values accepted besides the names (e.g. "all"). `many`: the
    value is a comma-separated list of names.
    """

    def __init__(self, default, *decls: str, names: Callable[[], list[str]], help: str, also: tuple[str, ...] = (),
                 many: bool = False):
        super().__init__(default=default, param_decls=decls, help=help, callback=self.check)
        self.names, self.also, self.flag, self.many = names, also, decls[0], many

    @property
    def help(self) -> str:
        return self.template.replace("{names}", ", ".join(self.names()))

    @help.setter
    def help(self, template: str) -> None:
        self.template = template

    def check(self, value: str | None) -> str | None:
        choices = [*self.names(), *self.also]
        given = [] if value is None else [v.strip() for v in value.split(",")] if self.many else [value]
        if any(v not in choices for v in given):
            raise NetcompressError(f"{self.flag} {value!r}: choose {'from' if self.many else 'one of'} "
                                   f"{', '.join(choices)}{', comma-separated' if self.many else ''}")
        return value


DataOpt = typer.Option(..., "--data", help="Dataset folder (Food-11 or ImageFolder layout).")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")
SkipBadOpt = typer.Option(False, "--skip-bad", help="Skip unreadable or odd images with a warning instead of stopping.")
CacheOpt = typer.Option(None, "--cache-dir", help="Where decoded images are cached [default: ~/.cache/netcompress].")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Progress bars and per-epoch lines on stderr.")
SeedOpt = typer.Option(0, "--seed")
BlocksOpt = typer.Option(None, "--blocks", help="EfficientNet-Lite: keep only its first N pretrained MBConv blocks, a "
                         "small student that starts from ImageNet features (8 of Lite0's 16: 254k parameters).")
HeadOpt = typer.Option(None, "--head", help="With --blocks: a fresh 1x1 conv to this many channels before the "
                       "pooling [default: none, the last block feeds the classifier].")
BatchSizeOpt = typer.Option(64, "--batch-size")
TeacherOpt = typer.Option(None, "--teacher", help="Fine-tune with distillation from this model file.")
FinetuneTemperatureOpt = typer.Option(DistillConfig.temperature, "--temperature", "-T",
                                      help="Distillation temperature (with --teacher).")
FinetuneAlphaOpt = typer.Option(DistillConfig.alpha, "--alpha", help="Weight of the teacher term (with --teacher).")
ModelSizeOpt = typer.Option(None, "--image-size", help="Default: the model's input size.")
PrecisionOpt = typer.Option("fp32", "--precision", help="fp32, or bf16 autocast (faster where the hardware "
                            "has bf16: AMX CPUs, recent GPUs; weights stay fp32).")
NprocOpt = typer.Option(1, "--nproc", help="Processes on this machine: >1 relaunches under torchrun (DDP).")
LabelsOpt = typer.Option(None, "--labels", help="CSV with file,label columns (paths relative to --data, or bare file "
                         "names): labels for images whose names and folders carry none.")
ValFractionOpt = typer.Option(None, "--val-fraction", help="Where --data has no validation folder: the share of each "
                              "class carved off training (seeded, stratified; recorded in the run and the model) "
                              "[default: as the model file records, else 0.1].")
TestFromOpt = typer.Option(None, "--test-from", help="Where --data has no testing folder: training (carve 10%% of "
                           "each class off it, as for validation) or validation (test figures on the validation "
                           "images: choice and test are then the same images, and the model records it) [default: "
                           "as the model file records, else training].")
TRAINING_SPLITS = ("training", "validation")
ChannelsOpt = typer.Option(3, "--channels", help="3: RGB (grayscale, palette and CMYK images are converted); "
                           "1: grayscale images and a 1-channel model.")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads for torch and ONNX Runtime [default: the cores this "
                          "process may use that other work is not keeping busy, or OMP_NUM_THREADS]. "
                          "Give each of several jobs on one machine its own cores: on 2 cores, two jobs of 2 "
                          "threads trained 2.9x slower than two jobs of 1 thread (benchmarks/threads.py).")
MixupOpt = typer.Option(0.0, "--mixup", help="Mixup: Beta(a, a) weight of blending two images (0: off; 0.2-0.8 "
                        "typical). A teacher sees the same mixed images.")
CutmixOpt = typer.Option(0.0, "--cutmix", help="CutMix: Beta(a, a) area kept when pasting a patch of another image "
                         "(0: off; 1.0 typical). With --mixup: either, half the batches each.")
MODEL_FILES = "Model file: .safetensors, quantized .ncq, .onnx, course checkpoint .bin or course .pkl."


def emit(result: dict, as_json: bool, table: Table | None = None) -> None:
    """The command's result: JSON on stdout with --json, else the table."""
    if as_json:
        print(json_text(result))
    elif table is not None:
        console.print(table)


def kv_table(title: str, rows: dict) -> Table:
    table = Table(title=title, show_header=False)
    for k, v in rows.items():
        table.add_row(k, ("yes" if v else "no") if isinstance(v, bool) else f"{v:,}" if isinstance(v, int)
                      else f"{v:.4f}" if isinstance(v, float) else str(v))
    return table


LATENCY_COLUMNS = {heading: key for key, heading in LATENCY_HEADINGS.items()}


def with_latencies(rows: list[dict]) -> list[dict]:
    """Rows with their latencies flattened into LATENCY_COLUMNS' keys, as text ('busy' where not measured)."""
    return [{**r, **latency_texts(r)} for r in rows]


def rows_table(title: str, columns: dict[str, str], rows: list[dict]) -> Table:
    """A table of `rows`: columns maps a heading to a row key; ints get separators, floats 4 decimals."""
    table = Table(title=title)
    for heading in columns:
        table.add_column(heading, justify="right")
    for r in rows:
        table.add_row(*(("" if r.get(k) is None else f"{r[k]:,}" if isinstance(r[k], int) and not isinstance(r[k], bool)
                         else f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])) for k in columns.values()))
    return table


def launch_if_asked(nproc: int) -> None:
    """--nproc N outside torchrun: run this very command under torchrun with N processes."""
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(launch(nproc, strip_nproc(sys.argv[1:])))


def folder(data: Path, image_size: int, cache_dir, skip_bad: bool, progress: bool, *, channels: int = 3,
           labels: Path | None = None, val_fraction: float | None = None, test_from: str | None = None,
           recorded: dict | None = None, check: Preflight | None = None,
           splits: tuple[str, ...] = TRAINING_SPLITS) -> ImageFolderData | None:
    """The dataset folder; with `check`, its problems for `splits` are added there (None where it cannot be read).
    Split options left at None are as `recorded` (a model's spec.info.data) says, else the defaults."""
    given = {k: v for k, v in (("val_fraction", val_fraction), ("test_from", test_from)) if v is not None}
    options = dict(channels=channels, labels_csv=labels, cache_dir=cache_dir, skip_bad=skip_bad, progress=progress,
                   **{**ImageFolderData.options_from(recorded), **given})
    if check is None:
        return ImageFolderData(data, image_size, **options)
    return check.data(splits, data, image_size, **options)


def model_and_data(what: str, model_file: Path, data: Path, image_size, cache_dir, skip_bad: bool, progress: bool,
                   labels: Path | None = None, val_fraction: float | None = None, test_from: str | None = None, *,
                   splits: tuple[str, ...] = TRAINING_SPLITS, out: Path | None = None, teacher: Path | None = None,
                   need_bytes: int | None = None, same_classes: bool = True):
    """A model file to work on, with its dataset folder (None without --data) at the model's input size (or
    --image-size) and channels: the model, the data, the teacher and the output folder (with `need_bytes` free,
    default what training the model writes) checked together before any work, in one message."""
    check = Preflight(what)
    net = check.attempt(load_file, model_file)
    spec = None if net is None else spec_of(net)
    if spec is not None and image_size:
        spec = spec.replace(input_size=check.attempt(check_image_size, image_size, "--image-size") or spec.input_size)
        attach(net, spec)
    size = image_size
    if spec is not None and data is not None:  # the data is read at the model's input size
        size = spec.input_size or check.attempt(input_size_of, spec, model_file)
    ds = None if data is None else folder(data, size or NAME_IMAGE_SIZE, cache_dir, skip_bad, progress,
                                          channels=spec.channels if spec else 3, labels=labels,
                                          val_fraction=val_fraction, test_from=test_from,
                                          recorded=spec.info.data if spec else None, check=check, splits=splits)
    if same_classes:  # predict writes indices for any folder; every other verb compares labels
        check.matches(spec, ds, model_file)
    if teacher is not None:
        check.matches(check.model_file(teacher, "teacher"), ds, teacher, "teacher")
    if out is not None:
        params = sum(p.numel() for p in net.parameters()) if net is not None else 0
        check.output(out, training_bytes(params) if need_bytes is None else need_bytes)
    check.raise_if_any()
    return net, ds


def data_for(net, model_file: Path, data: Path, image_size, cache_dir, skip_bad: bool, progress: bool,
             labels: Path | None = None) -> ImageFolderData:
    """The dataset folder as a model file sees it: its input size (or --image-size), its channels, and the splits
    it was trained with (the carve its file records)."""
    spec = spec_of(net)
    return folder(data, image_size or input_size_of(spec, model_file), cache_dir, skip_bad, progress,
                  channels=spec.channels, labels=labels, recorded=spec.info.data)


NAME_IMAGE_SIZE = 96  # the input size of a model built from its registered name when --image-size is not given


def model_or_name(model: str, image_size: int | None, num_classes: int = 11) -> nn.Module:
    """A model file, or a registered model name built fresh (random weights) with `num_classes` classes at
    `image_size` (default NAME_IMAGE_SIZE): what summary and latency take."""
    path = Path(model)
    if path.exists():
        return load(path)
    if path.suffix or model not in list_models():
        raise NetcompressError(f"{model}: no such model file, nor a registered model name (netcompress models lists "
                               "them)")
    return new_model(model, [str(i) for i in range(num_classes)], image_size or NAME_IMAGE_SIZE)


def load_file(path: Path) -> nn.Module:
    """A model file with trained weights; a registered model name gets a message saying where weights come from."""
    if not path.exists() and not path.suffix and str(path) in list_models():
        raise NetcompressError(f"{path} is a registered model name, not a model file: this verb needs trained "
                               f"weights; train some with `netcompress train --model {path} ...`")
    return load(path)


def input_size_of(spec, model_file) -> int:
    """The model's recorded input size, or a clear error asking for --image-size (course files record none)."""
    if not spec.input_size:
        raise NetcompressError(f"{model_file} does not record the input size its model expects: pass --image-size N "
                               "(the course's models took 256)")
    return spec.input_size


TargetLatencyOpt = typer.Option(None, "--target-latency", help="Latency budget in milliseconds per call, measured "
                                "on --runtime at --batch images and --runtime-threads threads, e.g. 0.12.")
RuntimeOpt = Registered("ort", "--runtime", names=list_runtimes, help="Runtime of the latency budget: one of "
                        "{names} (ort: ONNX Runtime, torch: eager PyTorch).")
LatencyBatchOpt = typer.Option(1, "--batch", help="Images per call for the latency budget.")
RuntimeThreadsOpt = typer.Option(1, "--runtime-threads", help="Threads of the runtime for the latency budget "
                                 "(--threads sets training's).")


def latency_target(ms: float | None, runtime: str, batch: int, threads: int) -> LatencyTarget | None:
    return None if ms is None else LatencyTarget(ms, runtime, batch, threads)


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads (ONNX Runtime sessions opened afterwards use as many): --threads N, else the cores
    this process may use that other work is not already keeping busy (`fair_threads`), said when fewer."""
    if threads is not None and threads < 1:
        raise NetcompressError(f"--threads {threads} must be >= 1")
    if threads is None and "OMP_NUM_THREADS" in os.environ:
        return  # the user's own setting stands
    chosen = threads or fair_threads()
    if threads is None and chosen < usable_cores():
        log(f"using {chosen} of {usable_cores()} cores: other work keeps the rest busy; --threads N sets the number")
    torch.set_num_threads(chosen)


def distill_config(teacher, temperature: float, alpha: float) -> DistillConfig | None:
    return DistillConfig(temperature=temperature, alpha=alpha) if teacher else None
