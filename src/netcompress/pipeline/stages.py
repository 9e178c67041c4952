"""Run a recipe: teacher -> distilled student -> pruning and low-rank runs -> codecs -> evaluation.

Each stage writes RUN/<stage>/done.json when it finishes, with the recipe settings it was made
from; a rerun skips finished stages made from the same settings, and a stage killed midway resumes
inside its own training loop (`fit`). A stage whose settings changed since is refused, since the
stages after it build on it; codec stages, which nothing builds on, are made again. Every model a
stage makes is an *artifact* (file, bytes, parameters, MACs, latency, validation accuracy) listed in its done.json;
budgets (--target-bytes, --target-params) choose among them, and `report` shows them. Stages
reach the algorithms through the library's public verbs only.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from .. import (AugmentConfig, ImageFolderData, NetcompressError, evaluate, factorize_and_finetune, fit, load,
               new_model, prune_iteratively, quantize, spec_of)
from ..files import RunLock, atomic_write_text, json_text
from ..formats.load import read_spec
from ..measure.cost import LATENCIES, measure_model
from ..measure.latency import LatencyConfig, LatencyTarget, get_runtime, latency
from ..process import log, machine_state, seed_everything
from ..train.views import TeacherViews, ViewConfig
from .artifact import DECODED, Artifact
from .budgets import CODEC_LOSS_POINTS, choose, choose_by_latency, weigh_teacher
from .compare_arch import compare
from .deploy import deploy
from .plan import check_recipe
from .recipe import SECTIONS, PruneSection, Recipe, StudentSection, StudentVariantSection
from .records import read_done, read_json_object


class Run:
    """One run directory: data loaded once, stages skipped when their done.json holds the same settings."""

    def __init__(self, recipe: Recipe, run_dir: str | Path, device: torch.device, *, cache_dir=None,
                 progress: bool = True):
        self.recipe, self.dir, self.device, self.progress = recipe, Path(run_dir), device, progress
        self.cache_dir = cache_dir
        self.views_file = self.dir / "student" / "teacher_views.safetensors"  # shared by the student's variants
        self._data: dict[int, ImageFolderData] = {}
        self.data = self.data_at(recipe.data.image_size)

    def data_at(self, size: int) -> ImageFolderData:
        """The recipe's dataset folder at one image size (the student's, or a larger teacher's)."""
        if size not in self._data:
            d = self.recipe.data
            self._data[size] = ImageFolderData(d.root, size, channels=d.channels, labels_csv=d.labels or None,
                                               val_fraction=d.val_fraction, test_from=d.test_from,
                                               seed=self.recipe.seed,
                                               cache_dir=self.cache_dir, skip_bad=d.skip_bad, progress=self.progress)
        return self._data[size]

    def data_for(self, model: torch.nn.Module) -> ImageFolderData:
        """The dataset at the model's own input size (a student variant's may differ from the data's)."""
        return self.data_at(spec_of(model).input_size)

    def teacher_data(self, teacher_file: str) -> ImageFolderData:
        """Training images at the teacher's size where it is larger: it sees them as they are, the student shrunk."""
        return self.data_at(max(read_spec(teacher_file).input_size, self.recipe.data.image_size))

    def settings(self, *sections: str, **more) -> dict:
        """The recipe settings a stage is made from: the data, the seed, the named sections and `more`."""
        found = {"seed": self.recipe.seed, "data": asdict(self.recipe.data),
                 **{name: asdict(getattr(self.recipe, name)) for name in sections}, **more}
        return json.loads(json.dumps(found))  # as done.json will hold them: tuples as lists

    def stage(self, name: str, work, settings: dict, redo_when_changed: bool = False) -> dict:
        done = self.dir / name / "done.json"
        if done.exists():
            result = read_done(done, self.dir)
            before = _with_new_fields(result.get("settings"))  # None: made before settings were recorded
            if before == settings or (before is None and not redo_when_changed):
                if self.progress:
                    log(f"[{name}] done earlier: skipped")
                return result
            if not redo_when_changed:
                raise NetcompressError(
                    f"{self.dir / name} was made with other settings ({_changes(before, settings)}) and the "
                    f"stages after it build on it: write the run to a new --out, or delete {self.dir / name} to "
                    "make it and what follows again")
        if self.progress:
            log(f"[{name}] running")
        t0 = time.perf_counter()
        result = work(self.dir / name)
        result["wall_seconds"] = round(time.perf_counter() - t0, 1)
        result["settings"] = settings
        measured = json.loads(json_text({k: v for k, v in result.items() if k != "settings"}))
        atomic_write_text(done, json.dumps({**measured, "settings": settings}, indent=2))  # settings kept exact
        return result

    def artifact(self, name: str, path: Path, stage: str) -> dict:
        """The record of the model file at `path` (as done.json keeps it): what it costs, its validation accuracy."""
        path = Path(path).resolve()
        model = load(path)
        val = self.data_for(model).split("validation")
        row = measure_model(model, val, self.device, path.stat().st_size)
        inside = path.is_relative_to(self.dir.resolve())
        file = str(path.relative_to(self.dir.resolve()) if inside else path)
        return Artifact.measured(row, name=name, stage=stage, file=file).to_dict()


def _with_new_fields(before: dict | None) -> dict | None:
    """Recorded settings with every section field added since at its default: such a field changed nothing."""
    if before is None:
        return None
    defaults = {name: json.loads(json.dumps(asdict(section()))) for name, section in SECTIONS.items()}
    return {key: {**defaults[key], **value} if key in defaults and isinstance(value, dict) else value
            for key, value in before.items()}


def _changes(before: dict, now: dict, prefix: str = "") -> str:
    """What differs between two settings dicts, as 'student.epochs: 40 -> 20'."""
    changes = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes.append(_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return ", ".join(c for c in changes if c)


def _teacher_stage(run: Run):
    t = run.recipe.teacher

    def work(out: Path) -> dict:
        if t.file:
            path = Path(t.file)
            if not path.exists():
                raise NetcompressError(f"[teacher] file = {t.file!r} does not exist")
            return {"model_file": str(path.resolve()), "trained": False,
                    "artifacts": [run.artifact(f"teacher ({path.name})", path, "teacher")]}
        seed_everything(run.recipe.seed)
        size = t.image_size or run.recipe.data.image_size
        net = new_model(t.model, run.data.class_names, size, run.recipe.data.channels)
        (train_cfg,) = t.configs(run.recipe.seed)
        fit(net, run.data_at(size), train_cfg, run_dir=out, device=run.device, progress=run.progress)
        return {"model_file": str(out / "best.safetensors"), "trained": True,
                "artifacts": [run.artifact(f"teacher ({t.model})", out / "best.safetensors", "teacher")]}

    return run.stage("teacher", work, run.settings("teacher"))


def _student_stage(run: Run, teacher_file: str | None, variant: StudentVariantSection | None = None):
    """The distilled student, or a [[student_variant]] of it (distilled from the same cached teacher views); with
    no teacher_file (a plain variant, or a teacher that lost to the plain students) trained on the labels alone."""
    s, size = _student_of(run, variant)
    name = "student" if variant is None else variant.stage

    def work(out: Path) -> dict:
        seed_everything(run.recipe.seed)
        net = new_model(s.model, run.data.class_names, size, run.recipe.data.channels, **s.model_args)
        if variant is not None and variant.init:  # carry on from an earlier student's weights
            start = Path(variant.init) if Path(variant.init).is_absolute() else run.dir / variant.init
            try:
                net.load_state_dict(load(start).state_dict())
            except RuntimeError as exc:
                raise NetcompressError(f"[[student_variant]] init = {variant.init!r}: its weights are not those of "
                                       f"{s.model} {s.model_args}: {str(exc).splitlines()[0]}") from exc
        train_cfg, kd = s.configs(run.recipe.seed)
        if teacher_file is None:
            train, teacher = run.data_at(size), None
        else:
            train = run.teacher_data(teacher_file)
            teacher = teacher_file if not s.views else _teacher_views(run, teacher_file, train.split("training"))
        fit(net, train, replace(train_cfg, input_size=size), val=run.data_at(size).split("validation"),
            teacher=teacher, distill=kd, run_dir=out, device=run.device, progress=run.progress)
        args = "".join(f" {key}={value}" for key, value in s.model_args.items())
        at = (f", {size} px" if size != run.recipe.data.image_size else "") + (
            f", {s.epochs} epochs" if variant is not None and variant.epochs else "") + (
            " more" if variant is not None and variant.init else "")
        how = "distilled" if teacher_file else "no teacher"
        return {"model_file": str(out / "best.safetensors"),
                "artifacts": [run.artifact(f"student ({s.model}{args}{at}, {how})", out / "best.safetensors",
                                           name)]}

    more = {} if variant is None else {"student_variant": asdict(variant)}
    if teacher_file is None and (variant is None or variant.teacher):
        more["taught"] = False  # the teacher lost to the plain students: this one learned from the labels
    return run.stage(name, work, run.settings("teacher", "student", **more))


def _student_of(run: Run, variant: StudentVariantSection | None) -> tuple[StudentSection, int]:
    """The [student] section a variant makes (the student itself for None), and its input size."""
    s = run.recipe.student if variant is None else run.recipe.student.for_variant(variant)
    return s, (variant and variant.image_size) or run.recipe.data.image_size


def _student_key(run: Run, variant: StudentVariantSection | None) -> str:
    """What makes a student, teaching aside: its model, arguments, input size, epochs and starting weights."""
    s, size = _student_of(run, variant)
    return json.dumps([s.model, s.model_args, size, s.epochs, variant.init if variant else ""], sort_keys=True)


def _teaching(run: Run, teacher: dict, plain: list[dict]) -> dict:
    """Whether the students learn from the teacher (see `weigh_teacher`), said on the console."""
    teaching = weigh_teacher(run.recipe.student.teach, artifacts_of(teacher)[0],
                             [a for stage in plain for a in artifacts_of(stage)], len(run.data.split("validation")))
    if run.progress and "best_plain" in teaching:
        log(f"[teaching] {teaching['why']}")
    return teaching


def _teacher_views(run: Run, teacher_file: str, train) -> TeacherViews:
    """The teacher's outputs for the student section's views: computed once, kept in the student's folder."""
    s = run.recipe.student
    cfg = ViewConfig(views=s.views, augment=AugmentConfig(mixup=s.mixup, cutmix=s.cutmix), seed=run.recipe.seed)
    return TeacherViews.cached(load(teacher_file).to(run.device), train, cfg, run.views_file, progress=run.progress)


def _finetune_setup(run: Run, teacher_file: str, distill: bool, finetune):
    """Fine-tuning after pruning or factorization: images at the teacher's size (the student's input stays), and
    the student's teaching: its cached teacher views when it had them, else the live teacher (or none)."""
    if finetune is not None:
        finetune = replace(finetune, input_size=run.recipe.data.image_size)
    if not distill:
        return run.data, finetune, None
    train = run.teacher_data(teacher_file)
    cached = run.recipe.student.views and run.views_file.exists()
    return train, finetune, TeacherViews.load(run.views_file) if cached else teacher_file


def _prune_stage(run: Run, p, student_file: str, teacher_file: str, taught: bool = True):
    name = p.stage

    def work(out: Path) -> dict:
        cfg, _ = p.configs(run.recipe.seed)
        finetune, kd = run.recipe.student.finetune(p.finetune_epochs, run.recipe.seed, p.lr, p.precise_bn)
        train, finetune, teacher = _finetune_setup(run, teacher_file, p.distill and taught, finetune)
        source = teacher_file if p.source == "teacher" else student_file
        result = prune_iteratively(load(source), cfg, train, finetune, val=run.data.split("validation"),
                                   teacher=teacher, distill=kd, run_dir=out, device=run.device, progress=run.progress)
        artifacts = [Artifact.measured(r, name=f"{name}, step {r['step']}", stage=name,
                                       file=f"{name}/{r['model_file']}").to_dict() for r in result.rows[1:]]
        return {"rows": result.rows, "artifacts": artifacts}

    return run.stage(name, work, run.settings("teacher", "student", prune=asdict(p),
                                              **({} if taught else {"taught": False})))


def _lowrank_stage(run: Run, lr, student_file: str, teacher_file: str, taught: bool = True):
    name = lr.stage

    def work(out: Path) -> dict:
        cfg, _ = lr.configs(run.recipe.seed)
        finetune, kd = run.recipe.student.finetune(lr.finetune_epochs, run.recipe.seed, lr.lr)
        train, finetune, teacher = _finetune_setup(run, teacher_file, lr.distill and taught, finetune)
        result = factorize_and_finetune(load(student_file), cfg, train, finetune, val=run.data.split("validation"),
                                        teacher=teacher, distill=kd, run_dir=out, device=run.device,
                                        progress=run.progress)
        tuned = bool(lr.finetune_epochs)
        artifacts = [Artifact.measured({**r, "step": r["stage"]}, name=f"{name}, {r['stage']}", stage=name,
                                       file=f"{name}/{r['model_file']}",
                                       candidate=r["stage"] != "factorized" or not tuned,
                                       why_not="a step on the way: its fine-tuned model follows"
                                       if r["stage"] == "factorized" and tuned else "").to_dict()
                     for r in result.rows if r["stage"] != "original"]
        return {"artifacts": artifacts}

    return run.stage(name, work, run.settings("teacher", "student", lowrank=asdict(lr),
                                              **({} if taught else {"taught": False})))


def _quantize_stage(run: Run, q, sources: list[dict]):
    """One storage codec applied to every source model; the decoded model's accuracy is measured."""
    (cfg,) = q.configs(run.recipe.seed)
    name = q.stage
    label = q.label

    def work(out: Path) -> dict:
        artifacts, skipped = [], []
        chosen = _codec_sources(run, q, cfg, sources)
        for i, src in enumerate(sources):
            if src not in chosen:
                continue
            try:
                model = load(run.dir / src.file)
                data = run.data_for(model)
                stored = quantize(model, cfg, data if cfg.needs_data else None, device=run.device,
                                  progress=run.progress)
            except NetcompressError as exc:
                if cfg.budget is None:
                    raise
                skipped.append({"source": src.name, "why": str(exc)})  # this model cannot get that small
                continue
            path = stored.save(out / codec_file_name(i, src))
            acc = evaluate(stored.decode(), data, "validation", device=run.device)["accuracy"]
            if run.progress and 100 * (src.val_accuracy - acc) > CODEC_LOSS_POINTS:
                log(f"[{name}] {src.name} lost {100 * (src.val_accuracy - acc):.1f} validation points to {label} "
                    f"({src.val_accuracy:.3f} -> {acc:.3f}): flagged in the report")
            artifacts.append(src.replace(name=f"{src.name}, {label}", stage=name, file=str(path.relative_to(run.dir)),
                                         format="ncq", precision=label, runtime=DECODED, latency_ms={},
                                         file_bytes=stored.nbytes, val_accuracy=round(acc, 5),
                                         details={**src.details, "source": src.name}).to_dict())
        return {"artifacts": artifacts, "skipped": skipped}

    return run.stage(name, work, run.settings(quantize=asdict(q), sources=[src.file for src in sources]),
                     redo_when_changed=True)


def _codec_sources(run: Run, q, cfg, sources: list[Artifact]) -> list[Artifact]:
    """The models a codec stores: all, or q.best of them, the most accurate on validation among those whose file
    with the codec, before any fine-tuning, fits q.within_bytes."""
    if not q.best:
        return sources
    fitting = sources
    if q.within_bytes:
        def nbytes(src: Artifact) -> int:
            model = load(run.dir / src.file)
            return quantize(model, replace(cfg, finetune_epochs=0, budget=None),
                            run.data_for(model) if cfg.needs_data else None, device=run.device, progress=False).nbytes
        fitting = [src for src in sources if nbytes(src) <= q.within_bytes]
    return sorted(fitting, key=lambda a: -a.val_accuracy)[:q.best]


def _compare_arch_stage(run: Run):
    c = run.recipe.compare_arch

    def work(out: Path) -> dict:
        (cfg,) = c.configs(run.recipe.seed)
        rows = compare(run.data, cfg, out, device=run.device, params=c.budget_params, groups=c.groups,
                       progress=run.progress)
        return {"rows": rows, "artifacts": [
            Artifact.measured(r, name=f"architecture: {r['architecture']}", stage="compare-arch",
                              file=f"compare-arch/{r['architecture']}/best.safetensors").to_dict() for r in rows]}

    return run.stage("compare-arch", work, run.settings("compare_arch"))


def _deploy_stage(run: Run, sources: list[Artifact]):
    """The deployment files of each source model, measured as they ship (`deploy`): each one an artifact with the
    bytes of the files that ship and the runtime that runs it, so budgets choose among what really runs."""
    d = run.recipe.deploy
    (cfg,) = d.configs(run.recipe.seed)

    def work(out: Path) -> dict:
        artifacts, chosen = [], {}
        for i, src in enumerate(sources):
            folder = out / f"{i:02d}-{Path(src.file).parent.name or 'model'}"
            model = load(run.dir / src.file)
            deployment = deploy(model, run.data_for(model), folder, cfg)
            chosen[src.name] = deployment.chosen.name if deployment.chosen else deployment.why_none
            artifacts += [src.replace(name=f"{src.name}, {a.name}", stage="deploy",
                                      file=str((folder / a.file).relative_to(run.dir)), format=a.format,
                                      precision=a.precision, runtime=a.runtime, file_bytes=a.file_bytes,
                                      val_accuracy=round(a.val_accuracy, 5), latency_ms=a.latency_ms,
                                      details={**src.details, **a.details, "source": src.name,
                                               "deploy": _verdict(a, deployment)}).to_dict()
                          for a in deployment.artifacts]
        return {"artifacts": artifacts, "fastest_within_drop": chosen}

    return run.stage("deploy", work, run.settings("deploy", sources=[src.file for src in sources]),
                     redo_when_changed=True)


def _verdict(artifact: Artifact, deployment) -> str:
    """What `deploy` made of one file: the fastest within the accuracy drop, or why not."""
    chosen = deployment.chosen is not None and artifact.name == deployment.chosen.name
    return "fastest within the drop" if chosen else artifact.why_not


def measure_together(run: Run, artifacts: list[Artifact], config: LatencyConfig, tries: int = 3,
                     load_model: Callable[[str], torch.nn.Module] | None = None) -> dict[str, dict]:
    """The latency of every model of `artifacts` that `config`'s runtime runs as it is, all measured together in
    interleaved rounds (again, up to `tries` times, for those the machine was too busy to measure), so that load
    which comes and goes weighs on every model alike. Kept in RUN/latency/, so a rerun measures only new models.
    Storage codecs are left out: their files decode to the fp32 model. load_model: a model file (relative to the
    run folder) as a module, shared by calls that measure the same models on several runtimes."""
    load_model = load_model or (lambda file: load(run.dir / file))
    path = run.dir / "latency" / f"{config.runtime}-b{config.batch}-t{config.threads}.json"
    found = read_json_object(path, "delete it to measure again") if path.exists() else {}
    found = {k: v for k, v in found.items() if isinstance(v, dict)}  # anything else: measured again
    runtime = get_runtime(config.runtime)
    wanted = [a for a in artifacts if a.runtime != DECODED]
    models: dict[str, torch.nn.Module] = {}
    for _ in range(tries):
        missing = [a for a in wanted if found.get(a.name, {}).get("median_ms") is None]
        models.update({a.name: load_model(a.file) for a in missing if a.name not in models})
        missing = [a.name for a in missing if runtime.runs(models[a.name])]
        if not missing:
            break
        if run.progress:
            log(f"[latency] measuring {len(missing)} models together on {config.runtime}, batch {config.batch}, "
                f"{config.threads} thread(s)")
        measured = latency({name: models[name] for name in missing}, config)
        found.update({name: {"median_ms": r.median_ms, "p90_ms": r.p90_ms, "spread": r.spread, "note": r.note}
                      for name, r in measured.items()})
        atomic_write_text(path, json_text(found))
    return {a.name: found[a.name] for a in wanted if a.name in found}


def with_latencies_measured_together(run: Run, artifacts: list[Artifact]) -> list[Artifact]:
    """The models with the report's latencies (LATENCIES) measured together at the end of the run, in place of
    the figures each stage took when it made a model: those were taken at different times, and a pruned model
    timed while the machine was busy could read slower than its larger source timed while it was idle.

    A file that runs as it is on one runtime (a deployed file) is timed at batch 1 on that runtime only (beside
    the fp32 models where it is one of the report's); its batch-N figure stays the one its stage measured."""
    load_once = functools.cache(lambda file: load(run.dir / file))
    configs = {key: LatencyConfig(runtime=m.runtime, batch=m.batch, threads=m.threads or torch.get_num_threads(),
                                  rounds=5, seconds=0.1)
               for key, m in LATENCIES.items() if get_runtime(m.runtime).available()}
    configs.update({f"{a.runtime}@1": LatencyConfig(runtime=a.runtime, batch=1, threads=1, rounds=5, seconds=0.1)
                    for a in artifacts if _runs_as_file(a) and f"{a.runtime}@1" not in configs})
    measured = {key: measure_together(run, runs_on(artifacts, cfg.runtime, fp32=key in LATENCIES), cfg, tries=2,
                                      load_model=load_once) for key, cfg in configs.items()}

    def figures(a: Artifact) -> dict:
        found = {key: result[a.name]["median_ms"] for key, result in measured.items() if a.name in result}
        return {**a.latency_ms, **found} if _runs_as_file(a) else found

    return [a if a.runtime == DECODED else a.replace(latency_ms=figures(a)) for a in artifacts]


def _runs_as_file(artifact: Artifact) -> bool:
    """A file that runs as it is on one runtime, not a torch model (which every runtime runs through an export) nor
    a storage file (which decodes to its fp32 model)."""
    return artifact.runtime not in ("torch", DECODED)


def runs_on(artifacts: list[Artifact], runtime: str, fp32: bool = True) -> list[Artifact]:
    """The models to time on `runtime`: the deployed files made for it, and (fp32) the torch models, which every
    runtime runs through an export."""
    return [a for a in artifacts if a.runtime == runtime or (fp32 and a.runtime == "torch")]


def _evaluate(run: Run, artifacts: list[Artifact], chosen: list[str]) -> dict:
    """Test accuracy of the teacher, the student and the models the budgets chose: once each.

    Results are kept in RUN/evaluate/test.json, so a rerun with another budget only evaluates
    the newly chosen model.
    """
    path = run.dir / "evaluate" / "test.json"
    results = read_json_object(path, "delete it to evaluate again") if path.exists() else {}
    results = {k: v for k, v in results.items()  # anything but an accuracy: evaluated again
               if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1}
    wanted = [a for a in artifacts if (a.stage in ("teacher", "student") or a.name in chosen)
              and a.name not in results]
    if wanted:
        if not run.data.split("testing").labeled:
            return {}
        for a in wanted:
            model = load(run.dir / a.file)
            metrics = evaluate(model, run.data_for(model), "testing", device=run.device)
            results[a.name] = round(metrics["accuracy"], 5)
        atomic_write_text(path, json_text(results))
    return results


def run_recipe(recipe: Recipe, run_dir: str | Path, device: torch.device, *, target_bytes: int | None = None,
               target_params: int | None = None, target_latency: LatencyTarget | None = None, cache_dir=None,
               progress: bool = True) -> dict:
    """Run every stage of `recipe` (skipping finished ones); returns the run's summary (also RUN/summary.json).

    target_latency: choose the most accurate model within it (and within target_bytes and target_params, where
    given), measured on its runtime; a recipe without a [[prune]] table for that target gets one (l2 ranking, the
    table's defaults).
    """
    if target_latency is not None and not any(
            p.configs(recipe.seed)[0].latency == target_latency for p in recipe.prune):
        recipe = replace(recipe, prune=(*recipe.prune, PruneSection(
            method="l2", target_latency_ms=target_latency.ms, runtime=target_latency.runtime,
            batch=target_latency.batch, threads=target_latency.threads)))
    check_recipe(recipe, run_dir, target_bytes=target_bytes, target_params=target_params,
                 target_latency=target_latency, cache_dir=cache_dir)
    run = Run(recipe, run_dir, device, cache_dir=cache_dir, progress=progress)
    with RunLock(run.dir):
        return _run_stages(run, recipe, target_bytes, target_params, target_latency)


def _run_stages(run: Run, recipe: Recipe, target_bytes: int | None, target_params: int | None,
                target_latency: LatencyTarget | None) -> dict:
    atomic_write_text(run.dir / "recipe.json", json.dumps(asdict(recipe), indent=2))
    machine = {"at_start": machine_state()}
    never = recipe.student.teach == "never"
    teacher = None if never else _teacher_stage(run)
    plain = {i: _student_stage(run, None, v) for i, v in enumerate(recipe.student_variant) if not v.teacher}
    teaching = ({"used": False, "why": "teach = never: no teacher was trained"} if never
                else _teaching(run, teacher, list(plain.values())))
    taught = teaching["used"]
    teacher_file = None if never else teacher["model_file"]
    # untaught, a student is its plain twin (the same model, arguments and size), which is not trained again
    twins = {} if taught else {_student_key(run, recipe.student_variant[i]): stage for i, stage in plain.items()}
    student = twins.get(_student_key(run, None)) or _student_stage(run, teacher_file if taught else None)
    artifacts = ([] if never else artifacts_of(teacher)) + (
        [] if _student_key(run, None) in twins else artifacts_of(student))
    for i, variant in enumerate(recipe.student_variant):
        if not variant.teacher:
            artifacts += artifacts_of(plain[i])
        elif _student_key(run, variant) not in twins:
            artifacts += artifacts_of(_student_stage(run, teacher_file if taught else None, variant))
    for p in recipe.prune:
        artifacts += artifacts_of(_prune_stage(run, p, student["model_file"], teacher_file, taught))
    for lr in recipe.lowrank:
        artifacts += artifacts_of(_lowrank_stage(run, lr, student["model_file"], teacher_file, taught))
    if recipe.compare_arch.run:
        artifacts += artifacts_of(_compare_arch_stage(run))
    sources = [a for a in artifacts if a.stage not in ("teacher", "compare-arch") and a.candidate]
    for q in recipe.quantize:
        artifacts += artifacts_of(_quantize_stage(run, q, sources))
    if recipe.deploy.run:
        students = [a for a in sources if recipe.deploy.models == "all" or a.stage.startswith("student")]
        artifacts += artifacts_of(_deploy_stage(run, students))
    artifacts = with_latencies_measured_together(run, artifacts)
    candidates = [a for a in artifacts if a.stage != "teacher"]
    budget = None
    if target_bytes is not None or target_params is not None:
        budget = choose(candidates, target_bytes, target_params)
    budgets = [choose(candidates, b) for b in recipe.evaluate.budgets
               if any(a.file_bytes <= b for a in candidates if a.candidate)]
    latency_budget = None
    if target_latency is not None:
        within = [a for a in candidates if a.candidate and (target_bytes is None or a.file_bytes <= target_bytes)
                  and (target_params is None or a.params <= target_params)]  # every budget given holds
        runnable = runs_on(within, target_latency.runtime)
        if not runnable:
            held = " and ".join(f"<= {n:,} {unit}" for n, unit in [(target_bytes, "bytes"), (target_params, "params")]
                                if n is not None) or "any budget"
            raise NetcompressError(f"no candidate within {held} runs on {target_latency.runtime}: add a [deploy] "
                                   f"table with targets that {target_latency.runtime} reads, or allow more bytes")
        latency_budget = choose_by_latency(candidates, target_latency, measure_together(
            run, runnable, target_latency.config))
    chosen = [c["chosen"] for c in ([budget] if budget else []) + budgets + ([latency_budget] if latency_budget
                                                                               else [])]
    test = _evaluate(run, artifacts, chosen) if recipe.evaluate.test else {}
    summary = {"artifacts": [a.replace(test_accuracy=test.get(a.name)).to_dict() for a in artifacts],
               "budget": budget, "budgets": budgets, "latency_budget": latency_budget, "test": test,
               "teaching": teaching,
               "val_images": len(run.data.split("validation")), "splits": run.data.describe(),
               "machine": {**machine, "at_end": machine_state()}}
    atomic_write_text(run.dir / "summary.json", json_text(summary))
    return summary


def codec_file_name(i: int, source: Artifact) -> str:
    """The file a codec makes of the i-th source model, named after where that model lies in the run:
    "02-prune-l2-0.5-3steps-ft5-step1.ncq", not "02-step1.ncq", so the files of two pruning runs differ."""
    parts = Path(source.file).with_suffix("").parts
    return f"{i:02d}-{'-'.join(parts[-2:] if Path(source.file).is_absolute() else parts)}.ncq"


def artifacts_of(stage_result: dict) -> list[Artifact]:
    """A stage's models as records (done.json keeps them as JSON, older runs' included)."""
    return [Artifact.from_dict(a) for a in stage_result["artifacts"]]
