"""Recipes: a whole experiment as one TOML file, checked field by field before anything runs.

    [data]      root, image_size
    [teacher]   model + epochs (train or fine-tune), or file (an existing model file)
    [student]   distillation: model, epochs, temperature, alpha, method
    [[prune]]   one table per pruning run: method, rate, steps, finetune_epochs, ...
    [[lowrank]] one table per factorization of the student: energy | rank_ratio | target_params
    [[quantize]] one table per storage codec, applied to the student and every pruned model
    [compare_arch] run = true: plain vs depthwise-pointwise vs group convolution at budget_params
    [evaluate]  test: report the test split once, for the chosen model

`--set section.field=value` overrides any field from the command line (e.g. student.epochs=5).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import NetcompressError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DataSection:
    root: str = "../shared/data/food101_10"
    image_size: int = 96
    skip_bad: bool = False


@dataclass
class TeacherSection:
    model: str = "efficientnet_lite0"
    file: str = ""  # an existing teacher model file: no training
    epochs: int = 10
    lr: float = 5e-4
    batch_size: int = 64


@dataclass
class StudentSection:
    model: str = "studentnet"
    epochs: int = 40
    lr: float = 1e-3
    batch_size: int = 64
    temperature: float = 4.0
    alpha: float = 0.9
    method: str = "logits"


@dataclass
class PruneSection:
    method: str = "slim"
    rate: float = 0.95
    steps: int = 5
    finetune_epochs: int = 5
    global_ranking: bool = False
    distill: bool = True  # fine-tune with the teacher


@dataclass
class LowRankSection:
    energy: float = 0.0  # exactly one of these three, the others left at 0
    rank_ratio: float = 0.0
    target_params: int = 0
    finetune_epochs: int = 3
    distill: bool = True


@dataclass
class QuantizeSection:
    codec: str = "int8-minmax"
    bits: int = 8
    entropy: bool = False


@dataclass
class CompareArchSection:
    budget_params: int = 250_000
    epochs: int = 20
    groups: int = 2
    run: bool = False  # the section alone does nothing: set run = true


@dataclass
class EvaluateSection:
    test: bool = True


@dataclass
class Recipe:
    data: DataSection = field(default_factory=DataSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    prune: list[PruneSection] = field(default_factory=list)
    lowrank: list[LowRankSection] = field(default_factory=list)
    quantize: list[QuantizeSection] = field(default_factory=list)
    compare_arch: CompareArchSection = field(default_factory=CompareArchSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    seed: int = 0


SECTIONS = {"data": DataSection, "teacher": TeacherSection, "student": StudentSection, "prune": PruneSection,
            "lowrank": LowRankSection, "quantize": QuantizeSection, "compare_arch": CompareArchSection,
            "evaluate": EvaluateSection}
LISTS = ("prune", "lowrank", "quantize")  # [[prune]], [[lowrank]], [[quantize]]: any number of tables
CHOICES = {("student", "method"): ("logits", "rkd"), ("prune", "method"): ("slim", "l1", "l2", "taylor", "magnitude"),
           ("quantize", "codec"): ("fp16", "int8-minmax", "int8-channel", "kbit", "kmeans")}
POSITIVE = {"image_size", "epochs", "batch_size", "steps", "lr", "temperature", "budget_params"}


def _section(name: str, cls, table, where: str):
    if not isinstance(table, dict):
        raise NetcompressError(f"{where}: [{name}] must be a table of fields")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in fields:
            raise NetcompressError(f"{where}: [{name}] has no field {key!r}; allowed: {', '.join(fields)}")
        default = fields[key].default
        expected = type(default)
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise NetcompressError(f"{where}: [{name}] {key} = {value!r} must be a {expected.__name__}")
        if key in POSITIVE and value <= 0:
            raise NetcompressError(f"{where}: [{name}] {key} = {value!r} must be > 0")
        choices = CHOICES.get((name, key))
        if choices and value not in choices:
            raise NetcompressError(f"{where}: [{name}] {key} = {value!r}; allowed: {', '.join(choices)}")
        values[key] = value
    section = cls(**values)
    if name == "prune" and not 0 < section.rate < 1:
        raise NetcompressError(f"{where}: [[prune]] rate = {section.rate} must lie strictly between 0 and 1")
    if name == "lowrank" and sum(v > 0 for v in (section.energy, section.rank_ratio, section.target_params)) != 1:
        raise NetcompressError(f"{where}: [[lowrank]] needs exactly one of energy, rank_ratio, target_params")
    if name == "quantize" and not 2 <= section.bits <= 16:
        raise NetcompressError(f"{where}: [[quantize]] bits = {section.bits} must lie in 2..8 (kbit, kmeans)")
    if name == "student" and not 0 <= section.alpha <= 1:
        raise NetcompressError(f"{where}: [student] alpha = {section.alpha} must lie in [0, 1]")
    return section


def _apply_override(raw: dict, assignment: str) -> None:
    """section.field=value (value in TOML syntax; bare words are strings); [[prune]] fields apply to every run."""
    key, sep, value = assignment.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot:
        raise NetcompressError(f"--set {assignment!r}: write section.field=value, e.g. student.epochs=5")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    if section in LISTS:
        for table in raw.setdefault(section, []):
            table[name] = parsed
    else:
        raw.setdefault(section, {})[name] = parsed


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise NetcompressError(f"recipe {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise NetcompressError(f"{path} is not valid TOML: {exc}") from exc
    for assignment in overrides:
        _apply_override(raw, assignment)
    unknown = set(raw) - set(SECTIONS) - {"seed"}
    if unknown:
        raise NetcompressError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; "
                               f"allowed: {', '.join(SECTIONS)}, seed")
    recipe = Recipe(seed=int(raw.get("seed", 0)))
    for name, cls in SECTIONS.items():
        if name not in raw:
            continue
        if name in LISTS:
            tables = raw[name] if isinstance(raw[name], list) else [raw[name]]
            setattr(recipe, name, [_section(name, cls, t, str(path)) for t in tables])
        else:
            setattr(recipe, name, _section(name, cls, raw[name], str(path)))
    return recipe
