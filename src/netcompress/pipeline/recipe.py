"""Recipes: a whole experiment as one TOML file, checked field by field before anything runs.

    [data]        root, image_size, channels, labels, val_fraction, skip_bad, test_from
    [teacher]     model + epochs (train or fine-tune), or file (an existing model file); image_size, mixup, cutmix
    [student]     distillation: model, model_args, epochs, lr, batch_size, temperature, alpha, method, mixup,
                  cutmix, views
    [[student_variant]] one table per further student: [student] again with some model_args, its image_size or
                  its epochs changed, or started from a file's weights (init), another model (model, with its own model_args), or taught by the labels alone
                  (teacher = false: a plain baseline)
                  (model_args = {blocks = 6}: a smaller one for a smaller budget); codecs apply to it too
    [[prune]]     one table per pruning run: PruneConfig's fields + finetune_epochs, lr, distill, precise_bn;
                  source = "teacher" prunes the teacher instead of the student; target_latency_ms with
                  runtime, batch, threads prunes to a latency instead of by rate
    [[lowrank]]   one table per factorization of the student: LowRankConfig's fields + finetune_epochs, distill
    [[quantize]]  one table per storage codec (QuantConfig's fields), applied to the student and every
                  pruned or factorized model
    [compare_arch] run = true: plain vs depthwise-pointwise vs group convolution at budget_params
    [deploy]      run = true: the deployment files (targets x precisions) of the students (models = "all": of
                  every fp32 candidate), each measured as it ships and a candidate for the budgets
    [evaluate]    test: report the test split once, for the chosen models; budgets: byte budgets to choose for

Each section maps onto the library's configs (TrainConfig, DistillConfig, PruneConfig,
LowRankConfig, QuantConfig), which validate their own fields: a bad value is reported with the
recipe file and the section. `--set section.field=value` overrides any field from the command
line (e.g. student.epochs=5; prune.* applies to every [[prune]] table; seed=1 the run's seed).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..compress.codecs import get_codec
from ..compress.lowrank import LowRankConfig
from ..compress.prune import PruneConfig
from ..compress.quant_config import QuantConfig
from ..data.augment import AugmentConfig
from ..data.folder import TEST_SOURCES
from ..data.layout import split_name
from ..data.sizes import check_image_size
from ..errors import NetcompressError
from ..measure.latency import LatencyTarget
from ..formats.integrity import MAX_MODEL_BYTES
from ..models.registry import create_model, model_kwargs
from ..train.distill import DistillConfig
from ..train.fit import TrainConfig
from .deploy import PRECISIONS, DeployConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class DataSection:
    root: str = "../shared/data/food101_10"
    image_size: int = 96
    channels: int = 3
    labels: str = ""  # a file,label CSV (relative paths are from the working directory)
    val_fraction: float = 0.1  # carved from training where there is no validation folder
    skip_bad: bool = False
    test_from: str = "training"  # without a testing folder: carve it from training, or "validation" (the same images)

    def configs(self, seed: int) -> tuple:
        check_image_size(self.image_size, "image_size")
        split_name(self.test_from, TEST_SOURCES, "test_from")
        if self.channels not in (1, 3) or not 0 < self.val_fraction < 1:
            raise NetcompressError(f"channels = {self.channels} must be 1 or 3 and val_fraction = {self.val_fraction} "
                                   "lie in (0, 1)")
        return ()


@dataclass(frozen=True)
class TeacherSection:
    model: str = "efficientnet_lite0"
    file: str = ""  # an existing teacher model file: no training
    image_size: int = 0  # the teacher's input; 0: the data's (a larger one: the student sees its views shrunk)
    epochs: int = 10
    lr: float = 5e-4
    batch_size: int = 64
    mixup: float = 0.0
    cutmix: float = 0.0

    def configs(self, seed: int) -> tuple[TrainConfig]:
        if self.image_size:
            check_image_size(self.image_size, "image_size", "0: the data's")
        return (TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=seed,
                            augment=AugmentConfig(mixup=self.mixup, cutmix=self.cutmix)),)


TEACH = ("always", "if-better", "never")


@dataclass(frozen=True)
class StudentSection:
    model: str = "studentnet"
    epochs: int = 40
    lr: float = 1e-3
    batch_size: int = 64
    temperature: float = DistillConfig.temperature  # the distillation defaults live in DistillConfig
    alpha: float = DistillConfig.alpha
    method: str = DistillConfig.method
    mixup: float = 0.0  # the teacher sees the same mixed images
    cutmix: float = 0.0
    views: int = 0  # > 0: the teacher's outputs cached for this many fixed views of every image (TeacherViews)
    model_args: dict = field(default_factory=dict)  # the model's keyword arguments, e.g. {blocks = 8}
    # "if-better": distil only from a teacher more accurate on validation than every student trained without one
    # ([[student_variant]] teacher = false); else every student learns from the labels alone, and the run says why;
    # "never": no teacher is trained, every student learns from the labels (when there is no time for one)
    teach: str = "always"

    def configs(self, seed: int) -> tuple[TrainConfig, DistillConfig]:
        settable = set(model_kwargs(self.model)) - {"num_classes", "in_channels"}  # those two come from the data
        unknown = sorted(set(self.model_args) - settable)
        if unknown:
            raise NetcompressError(f"model_args {', '.join(unknown)}: {self.model} takes "
                                   f"{', '.join(sorted(settable)) or 'none'}")
        if not 0 <= self.views <= 1024:
            raise NetcompressError(f"views = {self.views} must lie in 0..1024 (0: the teacher runs live)")
        if self.teach not in TEACH:
            raise NetcompressError(f"teach = {self.teach!r}: choose {' or '.join(TEACH)}")
        return (TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=seed,
                            augment=AugmentConfig(mixup=self.mixup, cutmix=self.cutmix)),
                DistillConfig(temperature=self.temperature, alpha=self.alpha, method=self.method))

    def finetune(self, epochs: int, seed: int, lr: float = 0.0,
                 precise_bn: int = 0) -> tuple[TrainConfig | None, DistillConfig]:
        """Fine-tuning after pruning or factorization (None for 0 epochs): the student's optimizer (at `lr` when
        given), the course's augmentation and the student's distillation."""
        train = TrainConfig(epochs=epochs, lr=lr or self.lr, batch_size=self.batch_size, seed=seed,
                            precise_bn=precise_bn) if epochs else None
        return train, DistillConfig(self.temperature, self.alpha, self.method)

    def for_variant(self, variant: StudentVariantSection) -> StudentSection:
        """This student as a [[student_variant]] makes it: another model with its own arguments, or this one with
        some of its arguments changed."""
        epochs = variant.epochs or self.epochs
        if variant.model:
            return dataclasses.replace(self, model=variant.model, model_args=dict(variant.model_args), epochs=epochs)
        return dataclasses.replace(self, model_args={**self.model_args, **variant.model_args}, epochs=epochs)


@dataclass(frozen=True)
class StudentVariantSection:
    model_args: dict = field(default_factory=dict)  # changed from [student]'s, e.g. {blocks = 6}
    image_size: int = 0  # this student's input size where it differs from [data]'s, e.g. 64 (a faster student)
    teacher: bool = True  # false: trained on the labels alone, the plain baseline a teacher has to beat
    model: str = ""  # another architecture, with model_args its own (not [student]'s changed)
    epochs: int = 0  # this student's epochs where they differ from [student]'s
    init: str = ""  # a model file of the same model whose weights it starts from (relative to the run folder)

    def configs(self, seed: int) -> tuple:
        if not (self.model_args or self.image_size or self.model or self.epochs or self.init) and self.teacher:
            raise NetcompressError("model_args is empty, image_size is 0 and teacher is true: name what differs "
                                   "from [student], e.g. model_args = {blocks = 6}, image_size = 64 or teacher = false")
        if self.epochs < 0:
            raise NetcompressError(f"epochs = {self.epochs}: use 0 ([student]'s) or a positive count")
        if self.image_size:
            check_image_size(self.image_size, "image_size", "0: the data's")
        return ()

    @property
    def stage(self) -> str:
        return "student-" + "-".join(([self.model] if self.model else [])
                                     + [f"{key}{value}" for key, value in self.model_args.items()]
                                     + ([f"{self.image_size}px"] if self.image_size else [])
                                     + ([f"{self.epochs}epochs"] if self.epochs else [])
                                     + (["continued"] if self.init else [])
                                     + ([] if self.teacher else ["plain"]))


@dataclass(frozen=True)
class PruneSection:
    method: str = "slim"
    rate: float = 0.95
    steps: int = 5
    global_ranking: bool = False
    finetune_epochs: int = 5
    lr: float = 0.0  # the fine-tuning's learning rate; 0: the student's
    distill: bool = True  # fine-tune with the teacher (its cached views, where the student had them)
    target_latency_ms: float = 0.0  # > 0: prune to this latency (NetAdapt) on runtime/batch/threads, not by rate
    runtime: str = "ort"
    batch: int = 1
    threads: int = 1
    proposal_images: int = 1024
    source: str = "student"  # the model pruned: the distilled student, or the teacher itself
    precise_bn: int = 0  # > 0: BatchNorm statistics recomputed on this many images before each validation
    sparsity: float = 0.0  # with sparsity_epochs: Network Slimming's L1 on BatchNorm γ before the first step
    sparsity_epochs: int = 0
    taylor_batches: int = 8
    recalibrate: int = 1024

    def configs(self, seed: int) -> tuple[PruneConfig, TrainConfig]:
        if self.source not in ("student", "teacher"):
            raise NetcompressError(f"source = {self.source!r} must be \"student\" or \"teacher\"")
        target = (LatencyTarget(self.target_latency_ms, self.runtime, self.batch, self.threads)
                  if self.target_latency_ms else None)
        return (PruneConfig(method=self.method, rate=self.rate, steps=self.steps, global_ranking=self.global_ranking,
                            sparsity=self.sparsity, sparsity_epochs=self.sparsity_epochs,
                            taylor_batches=self.taylor_batches, latency=target, proposal_images=self.proposal_images,
                            recalibrate=self.recalibrate),
                TrainConfig(epochs=self.finetune_epochs, seed=seed, precise_bn=self.precise_bn))

    @property
    def stage(self) -> str:
        how = (f"latency-{self.target_latency_ms:g}ms-{self.runtime}-b{self.batch}-t{self.threads}-{self.method}"
               if self.target_latency_ms else f"{self.method}-{self.rate}")
        steps = f"{self.steps}step" + ("s" if self.steps != 1 else "")
        proposals = self.proposal_images != PruneSection.proposal_images and self.target_latency_ms
        return (f"prune-{'teacher-' if self.source == 'teacher' else ''}{how}-{steps}"
                + ("-global" if self.global_ranking else "")
                + f"-ft{self.finetune_epochs}" + (f"-lr{self.lr:g}" if self.lr else "")
                + (f"-proposals{self.proposal_images}" if proposals else "") + ("" if self.distill else "-nodistill")
                + (f"-precisebn{self.precise_bn}" if self.precise_bn else "")
                + (f"-sparsity{self.sparsity:g}x{self.sparsity_epochs}" if self.sparsity else "")
                + (f"-taylor{self.taylor_batches}" if self.taylor_batches != PruneSection.taylor_batches else "")
                + (f"-recalibrate{self.recalibrate}" if self.recalibrate != PruneSection.recalibrate else ""))


@dataclass(frozen=True)
class LowRankSection:
    energy: float = 0.0  # exactly one of these three, the others left at 0
    rank_ratio: float = 0.0
    target_params: int = 0
    min_saving: float = 0.1
    finetune_epochs: int = 3
    lr: float = 0.0  # the fine-tuning's learning rate; 0: the student's
    distill: bool = True

    def configs(self, seed: int) -> tuple[LowRankConfig, TrainConfig | None]:
        chosen = {k: v for k, v in (("energy", self.energy), ("rank_ratio", self.rank_ratio),
                                    ("target_params", self.target_params)) if v}
        if self.finetune_epochs < 0:
            raise NetcompressError(f"finetune_epochs = {self.finetune_epochs} must be >= 0 (0: no fine-tuning)")
        return (LowRankConfig(min_saving=self.min_saving, **chosen),
                TrainConfig(epochs=self.finetune_epochs, seed=seed) if self.finetune_epochs else None)

    @property
    def stage(self) -> str:
        setting = next((f"{k}-{v}" for k, v in (("energy", self.energy), ("rank_ratio", self.rank_ratio),
                                                  ("target_params", self.target_params)) if v), "none")
        return (f"lowrank-{setting}-ft{self.finetune_epochs}" + (f"-lr{self.lr:g}" if self.lr else "")
                + (f"-minsaving{self.min_saving:g}" if self.min_saving != LowRankSection.min_saving else "")
                + ("" if self.distill else "-nodistill"))


@dataclass(frozen=True)
class QuantizeSection(QuantConfig):
    """QuantConfig's own fields, checked by QuantConfig, and which models the codec stores: every candidate, or
    (best = k) the k most accurate on validation, among those whose file with this codec (before any fine-tuning)
    fits within_bytes where that is set: quantization-aware fine-tuning of a model that loses anyway is time lost."""

    best: int = 0  # 0: every candidate
    within_bytes: int = 0  # 0: any size

    def configs(self, seed: int) -> tuple[QuantConfig]:
        if self.best < 0 or self.within_bytes < 0:
            raise NetcompressError(f"best = {self.best}, within_bytes = {self.within_bytes}: use 0 (all, any size) "
                                   "or a positive count and size")
        own = {f.name for f in dataclasses.fields(QuantizeSection)} - {f.name for f in dataclasses.fields(QuantConfig)}
        return (QuantConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k not in own}),)

    @property
    def stage(self) -> str:
        return ("quantize-" + self.label + (f"-best{self.best}" if self.best else "")
                + (f"-within{self.within_bytes}" if self.within_bytes else ""))

    @property
    def label(self) -> str:
        """The codec and its settings, as the stored models' names show it."""
        cfg = self
        label = cfg.codec + ("" if get_codec(cfg.codec).fixed_bits else f"-{cfg.width}bit")
        return (label + ("-lzma" if cfg.entropy else "") + (f"-budget{cfg.budget}" if cfg.budget else "")
                + (f"-qat{cfg.finetune_epochs}" if cfg.finetune_epochs else "")
                + (f"-lr{cfg.finetune_lr:g}" if cfg.finetune_epochs and cfg.finetune_lr != QuantizeSection.finetune_lr
                   else "")
                + (f"-avg{cfg.finetune_average:g}" if cfg.finetune_epochs
                   and cfg.finetune_average != QuantizeSection.finetune_average else "")
                + (f"-calib{cfg.calibration}" if cfg.calibration != QuantizeSection.calibration else "")
                + ("" if cfg.fold_bn is None else "-fold" if cfg.fold_bn else "-nofold")
                + (f"-min{cfg.min_elements}" if cfg.min_elements != QuantizeSection.min_elements else "")
                + (f"-tensorbits{zlib.crc32(json.dumps(cfg.tensor_bits, sort_keys=True).encode()):08x}"
                   if cfg.tensor_bits else ""))


@dataclass(frozen=True)
class CompareArchSection:
    budget_params: int = 250_000
    epochs: int = 20
    groups: int = 2
    run: bool = False  # the section alone does nothing: set run = true

    def configs(self, seed: int) -> tuple[TrainConfig]:
        if self.budget_params < 1 or self.groups < 2:
            raise NetcompressError(f"budget_params = {self.budget_params} must be positive and groups = {self.groups} "
                                   "at least 2")
        return (TrainConfig(epochs=self.epochs, seed=seed),)


@dataclass(frozen=True)
class DeploySection:
    """Deployment files (`deploy`) of the students, or of every fp32 candidate: each file a candidate for the
    budgets, with the bytes and latency of the file that runs."""

    run: bool = False  # the section alone does nothing: set run = true
    models: str = "students"  # or "all": the pruned and factorized models too
    targets: list[str] = field(default_factory=list)  # empty: every export target an installed runtime reads
    precisions: list[str] = field(default_factory=lambda: list(PRECISIONS))
    calibration_images: int = 256
    batch: int = 64

    def configs(self, seed: int) -> tuple[DeployConfig]:
        if self.models not in ("students", "all"):
            raise NetcompressError(f"models = {self.models!r}: choose students or all")
        return (DeployConfig(targets=tuple(self.targets), precisions=tuple(self.precisions), batch=self.batch,
                             calibration_images=self.calibration_images),)


@dataclass(frozen=True)
class EvaluateSection:
    test: bool = True
    budgets: list[int] = field(default_factory=list)  # file sizes in bytes: the best model within each is chosen

    def configs(self, seed: int) -> tuple:
        if any(b < 1 for b in self.budgets):
            raise NetcompressError(f"budgets = {self.budgets}: file sizes in bytes must be positive")
        return ()


@dataclass(frozen=True)
class Recipe:
    data: DataSection = field(default_factory=DataSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    student_variant: tuple[StudentVariantSection, ...] = ()
    prune: tuple[PruneSection, ...] = ()
    lowrank: tuple[LowRankSection, ...] = ()
    quantize: tuple[QuantizeSection, ...] = ()
    compare_arch: CompareArchSection = field(default_factory=CompareArchSection)
    deploy: DeploySection = field(default_factory=DeploySection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    seed: int = 0


SECTIONS = {"data": DataSection, "teacher": TeacherSection, "student": StudentSection,
            "student_variant": StudentVariantSection, "prune": PruneSection,
            "lowrank": LowRankSection, "quantize": QuantizeSection, "compare_arch": CompareArchSection,
            "deploy": DeploySection, "evaluate": EvaluateSection}
LISTS = ("student_variant", "prune", "lowrank", "quantize")  # [[prune]] etc.: any number of tables


def _check_type(value, hint, where: str):
    """`value` converted to the field's type (int -> float where a float is expected), or a clear error."""
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise NetcompressError(f"{where} = {value!r} must be a list")
        return [_check_type(v, typing.get_args(hint)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    allowed = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    for expected in allowed:
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
            return value
    names = " or ".join(a.__name__ for a in allowed)
    raise NetcompressError(f"{where} = {value!r} must be {'an' if names[0] in 'aeiou' else 'a'} {names}")


def _section(name: str, cls, table, where: str, seed: int):
    label = f"[[{name}]]" if name in LISTS else f"[{name}]"
    if not isinstance(table, dict):
        raise NetcompressError(f"{where}: {label} must be a table of fields")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in table.items():
        if key not in hints:
            raise NetcompressError(f"{where}: {label} has no field {key!r}; allowed: {', '.join(hints)}")
        values[key] = _check_type(value, hints[key], f"{where}: {label} {key}")
    try:
        section = cls(**values)
        section.configs(seed)
    except NetcompressError as exc:
        raise NetcompressError(f"{where}: {label} {exc}") from exc
    return section


def _apply_override(raw: dict, assignment: str) -> None:
    """section.field=value or seed=N (value in TOML syntax; bare words are strings); [[prune]] fields apply to
    every run."""
    key, sep, value = assignment.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not (dot or section == "seed"):
        raise NetcompressError(f"--set {assignment!r}: write section.field=value or seed=N, e.g. student.epochs=5")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    if not dot:
        raw[section] = parsed
    elif section in LISTS:
        for table in raw.setdefault(section, []):
            table[name] = parsed
    else:
        raw.setdefault(section, {})[name] = parsed


MAX_SEED = 2**32 - 1  # numpy's seeds end there, and a run's seed is every library's seed


def _read_toml(path: Path) -> dict:
    """The recipe file parsed, or one line saying why it cannot be: missing, a folder, not UTF-8, too deep."""
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.toml"))[:5]
        raise NetcompressError(f"recipe {path} is a folder; name a .toml file" + (
            f" in it ({', '.join(found)})" if found else ""))
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise NetcompressError(f"recipe {path} does not exist") from None
    except OSError as exc:
        raise NetcompressError(f"recipe {path} cannot be read ({exc.strerror or exc})") from None
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = blob[:exc.start].count(b"\n") + 1
        raise NetcompressError(f"{path} is not UTF-8 text (byte 0x{blob[exc.start]:02x} on line {line}); TOML files "
                               "are UTF-8: save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise NetcompressError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise NetcompressError(f"{path} nests arrays or tables deeper than a recipe needs; flatten it") from None


def _check_model_size(model: str, model_args: dict, where: str) -> None:
    """A model the arguments make must fit MAX_MODEL_BYTES: counted on the meta device, nothing allocated."""
    args = {**model_args, **({"pretrained": False} if "pretrained" in model_kwargs(model) else {})}
    try:
        with torch.device("meta"):
            net = create_model(model, **args)
    except NetcompressError as exc:
        raise NetcompressError(f"{where} model_args: {exc}") from None
    except Exception as exc:  # constructors raise many types for impossible arguments
        raise NetcompressError(f"{where} model_args make no {model} ({type(exc).__name__}: {exc})") from None
    n = sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))
    if n > MAX_MODEL_BYTES:
        raise NetcompressError(f"{where} model_args make a {model} of {n / 2**30:,.1f} GiB of weights, above the "
                               f"{MAX_MODEL_BYTES / 2**30:,.0f} GiB limit (NETCOMPRESS_MAX_MODEL_BYTES); choose "
                               "smaller widths")


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    raw = _read_toml(path)
    for assignment in overrides:
        _apply_override(raw, assignment)
    unknown = set(raw) - set(SECTIONS) - {"seed"}
    if unknown:
        raise NetcompressError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; "
                               f"allowed: {', '.join(SECTIONS)}, seed")
    seed = _check_type(raw.get("seed", 0), int, f"{path}: seed")
    if not 0 <= seed <= MAX_SEED:
        raise NetcompressError(f"{path}: seed = {seed} must be an integer in 0..{MAX_SEED:,}")
    sections: dict = {"seed": seed}
    for name, cls in SECTIONS.items():
        if name not in raw:
            continue
        if name in LISTS:
            tables = raw[name] if isinstance(raw[name], list) else [raw[name]]
            sections[name] = tuple(_section(name, cls, t, str(path), seed) for t in tables)
            stages = [getattr(s, "label", s.stage) for s in sections[name]]  # a codec names its models: once
            repeated = sorted({s for s in stages if stages.count(s) > 1})
            if repeated:
                raise NetcompressError(f"{path}: two [[{name}]] tables describe the same run ({', '.join(repeated)}); "
                                       "remove one or change a field")
        else:
            sections[name] = _section(name, cls, raw[name], str(path), seed)
    recipe = Recipe(**sections)
    for variant in recipe.student_variant:
        student = recipe.student.for_variant(variant)
        try:
            student.configs(seed)
        except NetcompressError as exc:
            raise NetcompressError(f"{path}: [[student_variant]] {exc}") from exc
        _check_model_size(student.model, student.model_args, f"{path}: [[student_variant]]")
    if recipe.student.model_args:
        _check_model_size(recipe.student.model, recipe.student.model_args, f"{path}: [student]")
    if recipe.student.teach == "never" and any(p.source == "teacher" for p in recipe.prune):
        raise NetcompressError(f"{path}: [student] teach = 'never' trains no teacher, and a [[prune]] table has "
                               "source = 'teacher': remove one of them")
    if recipe.student.teach == "if-better" and all(v.teacher for v in recipe.student_variant):
        raise NetcompressError(f"{path}: [student] teach = 'if-better' compares the teacher with a student trained "
                               "without one: add a [[student_variant]] with teacher = false")
    return recipe
