"""Latency measured honestly: on the runtime that will serve the model, in interleaved rounds, as median and
p90, and no figure at all when the machine is too busy to measure.

Runtimes are a registry: `torch` (eager PyTorch, channels_last), `ort` (ONNX Runtime with the settings
that serve one image fastest on a CPU: a fixed number of intra-op threads, no spinning, sequential
execution, every graph optimization), `openvino` (the optional `openvino` extra; it also runs OpenVINO IR
files), `executorch` (the optional `executorch` extra: XNNPACK-delegated .pte programs) and `litert` (the
optional `litert` extra: LiteRT's interpreter on .tflite files, fp32 or full-integer int8). Several models
measured together take turns round by round, so a burst of load hits them all alike. Calls shorter than
a millisecond are timed in blocks of at least 1 ms (as timeit does), so the timer's own jitter of a few
microseconds does not pass for load; a measurement whose 90th percentile lies more than `max_spread`
above its median was disturbed and is not reported.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Collection

import torch
import torch.nn as nn

from ..errors import NetcompressError
from ..formats.executorch import export_executorch, load_method
from ..formats.executorch import set_threads as set_executorch_threads
from ..formats.litert import Interpreter as LiteRTInterpreter
from ..formats.litert import export_litert
from ..formats.load import graph_file
from ..formats.onnx import export_onnx, layer_graph, ort_session
from ..formats.openvino import import_openvino
from ..spec import copy_model, spec_of

_RUNTIMES: dict[str, "Runtime"] = {}


class Runtime:
    """One way to run a model. Subclass it, set `name`, implement `prepare` (and `prepare_layer`, for latency
    tables), and register it."""

    name: str = ""
    package = ""  # the module it imports, if any: it is available when that is installed
    install = ""  # what to install when it is missing
    reads: tuple[str, ...] = ()  # suffixes of graph files it runs as they are (a model loaded from an .onnx file)
    # at one thread it computes on the calling thread, so that thread's CPU time is the work's own time
    computes_on_caller: bool = False

    def available(self) -> bool:
        return not self.package or importlib.util.find_spec(self.package.split(".")[0]) is not None

    def runs(self, model: nn.Module) -> bool:
        """Whether it runs `model`: any torch module; a model loaded from a graph file only if it reads that file."""
        path = graph_file(model)
        return path is None or path.suffix.lower() in self.reads

    def prepare(self, model: nn.Module, x: torch.Tensor, threads: int, workdir: Path) -> Callable[[], object]:
        """A function that runs one forward pass of `model` on `x` with `threads` threads."""
        raise NotImplementedError

    def prepare_file(self, path: Path, x: torch.Tensor, threads: int) -> Callable[[], object]:
        """The same for a file it `reads`, opened by the runtime alone (what a deployed program does)."""
        raise NetcompressError(f"runtime {self.name} runs no files of its own")

    def prepare_layer(self, layer: nn.Module, x: torch.Tensor, threads: int, workdir: Path) -> Callable[[], object]:
        """The same for one layer of a latency table (see latency_table.py): nn.Identity, nn.Linear, or
        nn.Sequential(Conv2d, ReLU), on `x` (no spec attached)."""
        raise NetcompressError(f"runtime {self.name} cannot time single layers, which a latency table (pruning to a "
                               f"latency target) needs: give {type(self).__name__} a prepare_layer method, or "
                               f"choose one of {', '.join(n for n in list_runtimes() if _times_layers(_RUNTIMES[n]))}")


def _times_layers(runtime: Runtime) -> bool:
    return type(runtime).prepare_layer is not Runtime.prepare_layer


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: make a runtime available by its name (latency, latency budgets, `netcompress latency`)."""
    if not cls.name:
        raise ValueError(f"runtime {cls.__name__} needs a name")
    _RUNTIMES[cls.name] = cls()
    return cls


def get_runtime(name: str) -> Runtime:
    if name not in _RUNTIMES:
        raise NetcompressError(f"runtime {name!r}: choose one of {', '.join(list_runtimes())}")
    runtime = _RUNTIMES[name]
    if not runtime.available():
        raise NetcompressError(f"runtime {name} is not installed: {runtime.install}")
    return runtime


def list_runtimes(installed: bool = False) -> list[str]:
    """Every registered runtime, or only those whose package is installed."""
    return [name for name, runtime in _RUNTIMES.items() if not installed or runtime.available()]


def runtimes_for(model: nn.Module) -> list[str]:
    """The registered runtimes that run `model` (all of them for a torch module)."""
    return [name for name, runtime in _RUNTIMES.items() if runtime.runs(model)]


def onnx_file(model: nn.Module, workdir: Path) -> Path:
    """The model as an .onnx file: its own file when it was loaded from one, else an fp32 export in workdir."""
    return graph_file(model) or export_onnx(model, workdir / "model.onnx")


@register_runtime
class Eager(Runtime):
    name = "torch"
    computes_on_caller = True

    def prepare(self, model, x, threads, workdir):
        net = copy_model(model).to(memory_format=torch.channels_last)
        return self.prepare_layer(net, x.contiguous(memory_format=torch.channels_last), threads, workdir)

    def prepare_layer(self, layer, x, threads, workdir):
        layer.eval()

        def run():
            with torch.inference_mode():
                layer(x)

        return run


class OnnxBased(Runtime):
    """A runtime that runs .onnx files: models are exported (fp32) or taken as the .onnx file they are."""

    reads = (".onnx",)

    def prepare(self, model, x, threads, workdir):
        return self.prepare_file(onnx_file(model, workdir), x, threads)

    def prepare_layer(self, layer, x, threads, workdir):
        return self.prepare_file(layer_graph(layer, x, workdir / "layer.onnx"), x, threads)


@register_runtime
class OnnxRuntime(OnnxBased):
    name, package = "ort", "onnxruntime"
    computes_on_caller = True  # intra_op_num_threads=1: no pool, the session runs in the caller

    def prepare_file(self, path, x, threads):
        session = ort_session(path, threads, spinning=False)
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)


@register_runtime
class OpenVino(OnnxBased):
    """OpenVINO on the CPU: a torch module through its fp32 ONNX export, or the .onnx or OpenVINO IR (.xml, fp32 or
    NNCF int8) file the model was loaded from, as it is."""

    name = "openvino"
    package = "openvino"
    install = "pip install 'netcompress[openvino]' (the openvino package)"
    reads = (".onnx", ".xml")

    def prepare_file(self, path, x, threads):
        core = import_openvino().Core()
        try:
            compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                          {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                           "NUM_STREAMS": 1})
        except RuntimeError as exc:  # OpenVINO's own errors: an operator it lacks (ONNX Runtime's QLinear kinds)
            reason = next((line for line in str(exc).splitlines() if line.strip() and "Exception from" not in line),
                          "no reason given")
            raise NetcompressError(f"{path}: OpenVINO cannot run it ({reason.strip()[:300]})") from None
        request = compiled.create_infer_request()
        array = x.numpy()
        return lambda: request.infer([array])


class ProgramRuntime(Runtime):
    """A runtime of fixed-batch programs (see formats/program.py): a torch module runs through its fp32 export at
    the batch measured, a file as it is, at its own batch."""

    def export(self, model: nn.Module, path: Path, batch: int) -> Path:
        raise NotImplementedError

    def prepare(self, model, x, threads, workdir):
        path = graph_file(model)
        if path is None:
            path = self.export(model, workdir / f"model{self.reads[0]}", len(x))
        elif len(x) != getattr(model, "batch", len(x)):
            raise NetcompressError(f"{path} runs batches of {model.batch} images, not {len(x)}; export it with "
                                   f"batch={len(x)}")
        return self.prepare_file(path, x, threads)


@register_runtime
class ExecuTorch(ProgramRuntime):
    """ExecuTorch with the XNNPACK delegate: a torch module through its fp32 .pte export, or the .pte file (fp32 or
    PT2E int8) the model was loaded from, as it is."""

    name = "executorch"
    package = "executorch.runtime"
    install = "pip install 'netcompress[executorch]' (the executorch package)"
    reads = (".pte",)
    computes_on_caller = True  # XNNPACK's pool of one thread runs the work on the calling thread

    def export(self, model, path, batch):
        return export_executorch(model, path, batch=batch)

    def prepare_file(self, path, x, threads):
        set_executorch_threads(threads)
        method, inputs = load_method(path), [x.contiguous()]
        return lambda: method.execute(inputs)


@register_runtime
class LiteRT(ProgramRuntime):
    """LiteRT's interpreter (XNNPACK on the CPU): a torch module through its fp32 .tflite export, or the .tflite
    file (fp32 or full-integer int8) the model was loaded from, as it is. An int8 file's input is quantized once,
    outside the timed call, as a camera pipeline hands it integers."""

    name = "litert"
    package = "ai_edge_litert"
    install = "pip install 'netcompress[litert]' (the ai-edge-litert and litert-torch packages)"
    reads = (".tflite",)
    computes_on_caller = True  # one thread: the interpreter runs on the calling thread

    def export(self, model, path, batch):
        return export_litert(model, path, batch=batch)

    def prepare_file(self, path, x, threads):
        interpreter = LiteRTInterpreter(path, threads)
        fed = interpreter.feed(x.numpy())
        return lambda: interpreter.invoke(fed)


@dataclass(frozen=True)
class LatencyConfig:
    """How to measure: runtime, batch and threads; rounds x seconds of timed calls per model."""

    runtime: str = "ort"
    batch: int = 1
    threads: int = 1
    rounds: int = 7
    seconds: float = 0.15  # timed calls per model per round
    warmup: int = 5
    max_spread: float = 0.3  # p90 more than 30% above the median: the machine was busy

    def __post_init__(self):
        if self.runtime not in _RUNTIMES:
            raise NetcompressError(f"runtime = {self.runtime!r}: choose one of {', '.join(list_runtimes())}")
        if not 1 <= self.batch <= 4096 or not 1 <= self.threads <= 1024:
            raise NetcompressError(f"batch = {self.batch} and threads = {self.threads} must be positive")
        if self.rounds < 3 or not 0 < self.seconds <= 60 or self.warmup < 0 or not self.max_spread > 0:
            raise NetcompressError("latency: rounds >= 3, seconds in (0, 60], warmup >= 0 and max_spread > 0")


@dataclass(frozen=True)
class LatencyTarget:
    """A latency budget: at most `ms` milliseconds per call on `runtime` at `batch` images and `threads` threads."""

    ms: float
    runtime: str = "ort"
    batch: int = 1
    threads: int = 1

    def __post_init__(self):
        if not self.ms > 0:
            raise NetcompressError(f"target latency = {self.ms} ms must be positive")
        self.config  # validates the runtime, batch and threads

    @property
    def config(self) -> LatencyConfig:
        return LatencyConfig(runtime=self.runtime, batch=self.batch, threads=self.threads)

    def __str__(self) -> str:
        return f"{self.ms} ms on {self.runtime} (batch {self.batch}, {self.threads} thread(s))"


@dataclass(frozen=True)
class Latency:
    """One model's measured latency; median_ms and p90_ms are None when the measurement was disturbed."""

    runtime: str
    batch: int
    threads: int
    median_ms: float | None
    p90_ms: float | None
    spread: float  # p90 / median - 1
    calls: int
    note: str = ""
    clock: str = "wall"  # or "thread CPU": the machine was busy, and the work's own CPU time is reported

    @property
    def trusted(self) -> bool:
        return self.median_ms is not None

    def __str__(self) -> str:
        if not self.trusted:
            return self.note
        return f"{self.median_ms:.3f} ms" + (" (thread CPU time)" if self.clock != "wall" else "")


def latency(models: nn.Module | dict[str, nn.Module], config: LatencyConfig | None = None,
            **overrides) -> Latency | dict[str, Latency]:
    """The latency of one model, or of several measured together in interleaved rounds (a dict by name).

    Models run on the CPU with inputs of their spec's shape. Keyword overrides replace config fields:
    latency(model, runtime="torch", batch=64).
    """
    cfg = replace(config or LatencyConfig(), **overrides)
    single = isinstance(models, nn.Module)
    named = {"model": models} if single else dict(models)
    results = latency_across({name: (model, cfg.runtime) for name, model in named.items()}, cfg)
    return results["model"] if single else results


def latency_across(models: dict[str, tuple[nn.Module, str]], config: LatencyConfig | None = None,
                   **overrides) -> dict[str, Latency]:
    """Several models, each on its own runtime (name -> (model, runtime)), timed together in interleaved rounds,
    so that a burst of load hits every runtime alike; `config.runtime` is not used."""
    cfg = replace(config or LatencyConfig(), **overrides)
    runtimes = {name: get_runtime(runtime) for name, (_, runtime) in models.items()}
    for name, (model, runtime) in models.items():
        if not runtimes[name].runs(model):
            raise NetcompressError(f"{graph_file(model)} runs on the {' or '.join(runtimes_for(model))} runtime, "
                                   f"not {runtime}")
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # eager PyTorch's threads; the other runtimes set their own
    try:
        with tempfile.TemporaryDirectory() as tmp:
            calls = {}
            for i, (name, (model, _)) in enumerate(models.items()):
                workdir = Path(tmp) / str(i)
                workdir.mkdir()
                calls[name] = runtimes[name].prepare(model, torch.rand(spec_of(model).input_shape(cfg.batch)),
                                                     cfg.threads, workdir)
            on_caller = {name for name, runtime in runtimes.items() if cfg.threads == 1 and runtime.computes_on_caller}
            results = time_calls(calls, cfg, cpu_clock=on_caller)
    finally:
        torch.set_num_threads(previous)
    return {name: replace(result, runtime=runtimes[name].name) for name, result in results.items()}


def time_calls(calls: dict[str, Callable[[], object]], cfg: LatencyConfig,
               cpu_clock: bool | Collection[str] = False) -> dict[str, Latency]:
    """Time prepared calls (see `Runtime.prepare`) in interleaved rounds: after `cfg.warmup` calls each, every
    round runs each one for `cfg.seconds`, in blocks of at least MIN_BLOCK_SECONDS; a block's time per call
    is one value. cpu_clock (True, or the names of such calls): the calls compute on this thread alone, so its
    CPU time is timed too and stands in for wall time when other work kept the wall clock from being honest
    (see `_summarize`)."""
    on_caller = set(calls) if cpu_clock is True else set(cpu_clock or ())
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    block = {name: _block_size(run, cfg.warmup) for name, run in calls.items()}
    for _ in range(cfg.rounds):
        for name, run in calls.items():
            start = time.perf_counter()
            while True:
                t0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(block[name]):
                    run()
                wall[name].append((time.perf_counter() - t0) / block[name])
                cpu[name].append((time.thread_time() - c0) / block[name])
                if t0 - start >= cfg.seconds:
                    break
    return {name: _summarize(wall[name], cpu[name] if name in on_caller else None, block[name], cfg)
            for name in calls}


MIN_BLOCK_SECONDS = 1e-3


def _block_size(run: Callable[[], object], warmup: int) -> int:
    """Calls per timed block: enough to last MIN_BLOCK_SECONDS, judged by the fastest warm-up call."""
    fastest = math.inf
    for _ in range(max(warmup, 2)):
        t0 = time.perf_counter()
        run()
        fastest = min(fastest, time.perf_counter() - t0)
    return max(1, math.ceil(MIN_BLOCK_SECONDS / max(fastest, 1e-9)))


def _summarize(wall: list[float], cpu: list[float] | None, block: int, cfg: LatencyConfig) -> Latency:
    """Median and p90 of the wall times; when other work disturbed them (p90 above the median by more than
    cfg.max_spread) but the calls computed on this thread alone (`cpu`), its CPU time per call instead: a
    preempted thread's CPU clock stops, so it barely moves under contention, and on an idle machine it equals
    the wall time. Else no figure, and why."""
    median, p90, spread = _spread(wall)
    if spread <= cfg.max_spread:
        return Latency(cfg.runtime, cfg.batch, cfg.threads, round(median * 1000, 4), round(p90 * 1000, 4),
                       round(spread, 3), len(wall) * block)
    if cpu is not None:
        cpu_median, cpu_p90, cpu_spread = _spread(cpu)
        if cpu_median > 0:
            return Latency(cfg.runtime, cfg.batch, cfg.threads, round(cpu_median * 1000, 4), round(cpu_p90 * 1000, 4),
                           round(cpu_spread, 3), len(cpu) * block,
                           f"thread CPU time: other work kept the wall clock busy (wall median {median * 1000:.3f} "
                           f"ms, p90 {100 * spread:.0f}% above it)", clock="thread CPU")
    return Latency(cfg.runtime, cfg.batch, cfg.threads, None, None, round(spread, 3), len(wall) * block,
                   f"too busy to measure (p90 {100 * spread:.0f}% above the median; limit "
                   f"{100 * cfg.max_spread:.0f}%): rerun on an idle machine, or time one thread (--threads 1), "
                   "whose CPU time stands in for a busy wall clock")


def _spread(values: list[float]) -> tuple[float, float, float]:
    """Median, p90 and how far the p90 lies above the median (a fraction)."""
    values = sorted(values)
    median = statistics.median(values)
    p90 = values[min(len(values) - 1, math.ceil(0.9 * len(values)) - 1)]
    return median, p90, (p90 / median - 1 if median > 0 else math.inf)


def consistent(one: Latency, many: Latency) -> tuple[Latency, Latency]:
    """Batch 1 cannot honestly take longer than a batch of `many.batch` images: if it did, the machine was
    busy during one of them, and neither figure is reported."""
    if one.trusted and many.trusted and one.median_ms > many.median_ms:
        note = (f"too busy to measure (batch 1 took {one.median_ms:.3f} ms, batch {many.batch} "
                f"{many.median_ms:.3f} ms): rerun on an idle machine")
        return replace(one, median_ms=None, p90_ms=None, note=note), replace(many, median_ms=None, p90_ms=None,
                                                                               note=note)
    return one, many
