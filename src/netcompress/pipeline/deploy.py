"""Deploy: one model written as every export target x precision, each file measured as the thing that ships, and
the fastest whose accuracy holds.

Each artifact is measured itself, not the fp32 model it came from: validation accuracy of the exported file run
by its runtime, and its top-1 agreement with the fp32 model (int8 agreement ranged 0.77-0.98 across models, so
it cannot be assumed), bytes on disk
of every file that ships with it, the memory a fresh process adds by loading and running it once, and latency at
batch 1 and batch N on every installed runtime that reads it, all artifacts timed together in interleaved rounds.
No runtime wins on every model, so the choice is measured: the fastest at batch 1 whose validation accuracy lies
within `max_drop` points of the fp32 model's.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import NetcompressError
from ..files import atomic_write_text, json_text
from ..formats.load import exported_bytes, get_exporter, list_exporters
from ..formats.load import export as export_model
from ..formats.load import graph_file, load
from ..measure.cost import count_macs, count_parameters
from ..measure.evaluate import classification_metrics, scored_logits
from ..measure.latency import LatencyConfig, consistent, get_runtime, latency_across, list_runtimes
from ..measure.memory import peak_memory_mb
from ..process import log
from ..spec import spec_of
from .artifact import Artifact

PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class DeployConfig:
    """What to build and how to choose. targets: export targets (`list_exporters()`); empty: every one that an
    installed runtime reads. precisions: fp32 and/or int8 (every int8 kind a format writes, e.g. ONNX's QDQ and
    QOperator). max_drop: validation accuracy points an artifact may lose against the fp32 model.
    batch: the second latency batch (the first is 1). threads: the runtimes' threads when timing."""

    targets: tuple[str, ...] = ()
    precisions: tuple[str, ...] = PRECISIONS
    max_drop: float = 1.0
    batch: int = 64
    threads: int = 1
    calibration_images: int = 256
    rounds: int = 7
    memory: bool = True  # measure each artifact's memory in a fresh process (a few seconds each)

    def __post_init__(self):
        for target in self.targets:
            get_exporter(target)  # a clear error for an unknown name
        unknown = set(self.precisions) - set(PRECISIONS)
        if unknown or not self.precisions:
            raise NetcompressError(f"precisions {sorted(unknown) or '(none)'}: choose from {', '.join(PRECISIONS)}")
        if not 0 <= self.max_drop <= 100:
            raise NetcompressError(f"max_drop = {self.max_drop}: accuracy points, 0..100")
        if not 1 <= self.calibration_images <= 100_000:
            raise NetcompressError(f"calibration_images = {self.calibration_images}: use 1..100000")
        LatencyConfig(batch=self.batch, threads=self.threads, rounds=self.rounds)  # validates those

    def chosen_targets(self) -> list[str]:
        if self.targets:
            return list(self.targets)
        return [name for name in list_exporters() if runtimes_reading(name)]


@dataclass(frozen=True)
class Deployment:
    """Every artifact built (with why it was not a candidate, where it was not), the fp32 model's validation
    accuracy, and the chosen artifact (None when none is within the drop)."""

    artifacts: list[Artifact]
    fp32_accuracy: float
    chosen: Artifact | None
    config: DeployConfig
    why_none: str = ""
    failed: dict = field(default_factory=dict)  # "target precision [on runtime]" -> why it was not built or run

    def to_dict(self) -> dict:
        return {"fp32_val_accuracy": self.fp32_accuracy, "chosen": self.chosen.name if self.chosen else None,
                "chosen_file": self.chosen.file if self.chosen else None, "why_none": self.why_none,
                "config": dataclasses.asdict(self.config), "failed": self.failed,
                "artifacts": [a.to_dict() for a in self.artifacts]}


def runtimes_reading(target: str) -> list[str]:
    """The installed runtimes that run a file of this export target as it is."""
    suffixes = get_exporter(target).suffixes
    return [name for name in list_runtimes(installed=True) if name != "torch"
            and any(suffix in get_runtime(name).reads for suffix in suffixes)]


def deploy(model: nn.Module, data, out: str | Path, config: DeployConfig | None = None) -> Deployment:
    """Build every target x precision of `model` in folder `out`, measure each file, choose the fastest within the
    accuracy drop, and write `out/deploy.json`. `data`: an ImageFolderData (anything with `.split(name)`) whose
    training images calibrate int8 and whose validation images measure accuracy. The model is not changed."""
    cfg = config or DeployConfig()
    if graph_file(model) is not None:
        raise NetcompressError(f"{graph_file(model)} is already a deployment file; deploy a .safetensors or .ncq "
                               "model")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    val, fp32_logits = scored_logits(model, data, "validation", device="cpu")
    fp32_accuracy, fp32_top1 = _accuracy(fp32_logits, val), fp32_logits.argmax(1)
    params, macs = count_parameters(model), count_macs(model)
    built, failed = {}, {}
    for target in cfg.chosen_targets():
        for precision, options in export_variants(target, cfg).items():
            path = out / f"{target}-{precision.replace(' ', '-')}{get_exporter(target).suffixes[0]}"
            log(f"deploy: {target} {precision} -> {path}")
            try:
                built[(target, precision)] = export_model(model, target, path, data, **options)
            except NetcompressError as exc:
                failed[f"{target} {precision}"] = str(exc)
                log(f"deploy: {target} {precision} not built: {exc}")
    artifacts, loaded = [], {}
    for (target, precision), path in built.items():
        loaded[path.name] = load(path)
        logits = scored_logits(loaded[path.name], val, "validation", device="cpu")[1]
        accuracy, agreement = _accuracy(logits, val), (logits.argmax(1) == fp32_top1).float().mean()
        for runtime in runtimes_reading(target):
            why = _cannot_run(path, runtime, spec_of(model).input_shape(1))
            if why:
                failed[f"{target} {precision} on {runtime}"] = why
                continue
            artifacts.append(Artifact(
                name=f"{target} {precision} on {runtime}", stage="deploy", file=path.name, format=target,
                precision=precision, runtime=runtime, file_bytes=exported_bytes(target, path), params=params,
                macs=macs, val_accuracy=accuracy,
                details={"drop_points": round(100 * (fp32_accuracy - accuracy), 2),
                         "agreement": round(float(agreement), 4)}))
    artifacts = _timed(artifacts, loaded, model, data, cfg)
    if cfg.memory:
        artifacts = [_with_memory(a, out, spec_of(model).input_shape(1)) for a in artifacts]
    deployment = _choose(artifacts, fp32_accuracy, cfg, failed)
    atomic_write_text(out / "deploy.json", json_text(deployment.to_dict()))
    return deployment


def _accuracy(logits: torch.Tensor, split) -> float:
    return classification_metrics(logits, split.labels, split.num_classes)["accuracy"]


def export_variants(target: str, cfg: DeployConfig) -> dict[str, dict]:
    """The export options of each precision to build: fp32, and each int8 kind the format writes."""
    variants = {"fp32": {}} if "fp32" in cfg.precisions else {}
    if "int8" in cfg.precisions:
        variants.update({name: {"int8": True, "calibration_images": cfg.calibration_images, **options}
                         for name, options in get_exporter(target).int8_variants.items()})
    return variants


def _cannot_run(path: Path, runtime: str, shape: tuple[int, ...]) -> str:
    """Why `runtime` cannot run the file, or "": a runtime that reads a suffix may still lack one of its operators."""
    try:
        get_runtime(runtime).prepare_file(path, torch.rand(shape), 1)()
    except NetcompressError as exc:
        return str(exc)
    return ""


def _with_memory(artifact: Artifact, out: Path, shape: tuple[int, ...]) -> Artifact:
    try:
        memory = {"memory_mb": peak_memory_mb(out / artifact.file, artifact.runtime, shape)}
    except NetcompressError as exc:  # a figure missing is no reason to lose the others
        memory = {"memory_mb": None, "memory_note": str(exc)}
    return artifact.replace(details={**artifact.details, **memory})


def _timed(artifacts: list[Artifact], loaded: dict[str, nn.Module], model, data,
           cfg: DeployConfig) -> list[Artifact]:
    """Latency at batch 1 and cfg.batch of every artifact (`loaded`: its file as a module, by file name), all timed
    together; a file whose batch is fixed at 1 (an ExecuTorch program) is exported again at cfg.batch for its
    second figure."""
    log(f"deploy: timing {len(artifacts)} artifact(s) together at batch 1 and {cfg.batch}")
    timing = LatencyConfig(threads=cfg.threads, rounds=cfg.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        at_batch = {}
        for a in artifacts:
            fixed = getattr(loaded[a.file], "batch", None)
            if fixed is not None and fixed != cfg.batch and a.file not in at_batch:
                options = export_variants(a.format, cfg)[a.precision]
                again = export_model(model, a.format, Path(tmp) / f"b{cfg.batch}-{a.file}", data, **options,
                                     batch=cfg.batch)
                at_batch[a.file] = load(again)
        one = latency_across({a.name: (loaded[a.file], a.runtime) for a in artifacts}, timing, batch=1)
        many = latency_across({a.name: (at_batch.get(a.file, loaded[a.file]), a.runtime) for a in artifacts}, timing,
                              batch=cfg.batch)
    timed = []
    for a in artifacts:
        b1, bn = consistent(one[a.name], many[a.name])
        timed.append(a.replace(
            latency_ms={f"{a.runtime}@1": b1.median_ms, f"{a.runtime}@{cfg.batch}": bn.median_ms},
            details={**a.details, "clock": b1.clock, "spread": b1.spread, **({"note": b1.note} if b1.note else {})}))
    return timed


def _choose(artifacts: list[Artifact], fp32_accuracy: float, cfg: DeployConfig, failed: dict) -> Deployment:
    """The fastest at batch 1 within the drop; the others marked with why they were not chosen."""
    marked = []
    for a in artifacts:
        b1 = a.latency_ms.get(f"{a.runtime}@1")
        why = (f"loses {a.details['drop_points']:.2f} points (limit {cfg.max_drop:g})"
               if a.details["drop_points"] > cfg.max_drop else "" if b1 is not None else "no latency figure")
        marked.append(a.replace(candidate=not why, why_not=why))
    candidates = [a for a in marked if a.candidate]
    if not candidates:
        why = "no artifact was built" if not marked else \
            f"no artifact keeps its validation accuracy within {cfg.max_drop:g} points of the fp32 model's " \
            f"{100 * fp32_accuracy:.2f}%, with a latency figure; raise --max-drop, or fine-tune with QAT first"
        return Deployment(marked, fp32_accuracy, None, cfg, why, failed)
    chosen = min(candidates, key=lambda a: a.latency_ms[f"{a.runtime}@1"])
    return Deployment(marked, fp32_accuracy, chosen, cfg, "", failed)
