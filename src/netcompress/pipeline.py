"""Run a recipe: teacher -> distilled student -> pruning and low-rank runs -> codecs -> evaluation.

Each stage writes RUN/<stage>/done.json when it finishes; a rerun skips finished stages, and a
stage killed midway resumes inside its own training loop (train.fit). Every model a stage makes
is an *artifact* (file, bytes, parameters, MACs, latency, validation accuracy) listed in its
done.json; budgets (--target-bytes, --target-params) choose among them, and `report` shows them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .artifact import load_any, load_model, new_model
from .data import Split, load_split
from .distill import DistillConfig, teacher_loss
from .errors import NetcompressError
from .evaluate import classification_metrics, predict_logits
from .files import atomic_write_text
from .measure import measure_model
from .lowrank import LowRankConfig, lowrank_run
from .prune import PruneConfig, prune_schedule
from .quantize import QuantConfig, save_quantized
from .recipe import Recipe
from .runtime import seed_everything
from .train import TrainConfig, fit


class Run:
    """One run directory: data loaded once, stages skipped when their done.json exists."""

    def __init__(self, recipe: Recipe, run_dir: str | Path, device: torch.device, *, cache_dir=None,
                 progress: bool = True):
        self.recipe, self.dir, self.device = recipe, Path(run_dir), device
        self.cache_dir, self.progress = cache_dir, progress
        self._splits: dict[str, Split] = {}

    def split(self, name: str) -> Split:
        if name not in self._splits:
            d = self.recipe.data
            self._splits[name] = load_split(d.root, name, d.image_size, cache_dir=self.cache_dir,
                                            skip_bad=d.skip_bad, progress=self.progress)
        return self._splits[name]

    def stage(self, name: str, work) -> dict:
        done = self.dir / name / "done.json"
        if done.exists():
            if self.progress:
                print(f"[{name}] done earlier: skipped", flush=True)
            return json.loads(done.read_text())
        if self.progress:
            print(f"[{name}] running", flush=True)
        t0 = time.perf_counter()
        result = work(self.dir / name)
        result["wall_seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_text(done, json.dumps(result, indent=2))
        return result

    def artifact(self, name: str, path: Path, stage: str) -> dict:
        model, spec = load_model(path)
        row = measure_model(model.to(self.device), spec, path, self.split("validation"), self.device)
        path = Path(path).resolve()
        inside = path.is_relative_to(self.dir.resolve())
        return {"name": name, "stage": stage, "file": str(path.relative_to(self.dir.resolve()) if inside else path),
                "format": "safetensors fp32", **row}

    def train_config(self, epochs: int, lr: float, batch_size: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=self.recipe.seed)


def _teacher_stage(run: Run):
    def work(out: Path) -> dict:
        t = run.recipe.teacher
        if t.file:
            path = Path(t.file)
            if not path.exists():
                raise NetcompressError(f"[teacher] file = {t.file!r} does not exist")
            return {"model_file": str(path.resolve()), "trained": False,
                    "artifacts": [run.artifact(f"teacher ({path.name})", path, "teacher")]}
        train = run.split("training")
        seed_everything(run.recipe.seed)
        net, spec = new_model(t.model, train.class_names, run.recipe.data.image_size)
        result = fit(net, spec, train, run.split("validation"), run.train_config(t.epochs, t.lr, t.batch_size), out,
                     device=run.device, progress=run.progress)
        return {"model_file": str(result.model_path), "trained": True,
                "artifacts": [run.artifact(f"teacher ({t.model})", result.model_path, "teacher")]}

    return run.stage("teacher", work)


def _teacher_loss(run: Run, teacher_file: str, cfg: DistillConfig):
    return teacher_loss(teacher_file, run.split("training").class_names, run.device, cfg)


def _student_stage(run: Run, teacher_file: str):
    def work(out: Path) -> dict:
        s = run.recipe.student
        train = run.split("training")
        seed_everything(run.recipe.seed)
        net, spec = new_model(s.model, train.class_names, run.recipe.data.image_size)
        kd = DistillConfig(temperature=s.temperature, alpha=s.alpha, method=s.method)
        make_loss = _teacher_loss(run, teacher_file, kd)
        spec.info["distilled_from"] = teacher_file
        result = fit(net, spec, train, run.split("validation"), run.train_config(s.epochs, s.lr, s.batch_size), out,
                     device=run.device, loss_fn=make_loss(net), settings={"distill": asdict(kd)},
                     progress=run.progress)
        return {"model_file": str(result.model_path),
                "artifacts": [run.artifact(f"student ({s.model}, distilled)", result.model_path, "student")]}

    return run.stage("student", work)


def _prune_stage(run: Run, p, student_file: str, teacher_file: str):
    name = f"prune-{p.method}-{p.rate}"

    def work(out: Path) -> dict:
        model, spec = load_model(student_file)
        s = run.recipe.student
        cfg = PruneConfig(method=p.method, rate=p.rate, steps=p.steps, global_ranking=p.global_ranking)
        make_loss = _teacher_loss(run, teacher_file, DistillConfig(s.temperature, s.alpha)) if p.distill else None
        rows = prune_schedule(model, spec, run.split("training"), run.split("validation"), cfg,
                              run.train_config(p.finetune_epochs, s.lr, s.batch_size), out, device=run.device,
                              make_loss=make_loss, progress=run.progress)
        artifacts = [{"name": f"pruned {p.method} rate {p.rate}, step {r['step']}", "stage": name,
                      "file": f"{name}/{r['model_file']}", "format": "safetensors fp32", **r} for r in rows[1:]]
        return {"rows": rows, "artifacts": artifacts}

    return run.stage(name, work)


def _lowrank_stage(run: Run, lr, student_file: str, teacher_file: str):
    setting = next((k, v) for k, v in (("energy", lr.energy), ("rank_ratio", lr.rank_ratio),
                                       ("target_params", lr.target_params)) if v > 0)
    name = f"lowrank-{setting[0]}-{setting[1]}"

    def work(out: Path) -> dict:
        model, spec = load_model(student_file)
        s = run.recipe.student
        make_loss = _teacher_loss(run, teacher_file, DistillConfig(s.temperature, s.alpha)) if lr.distill else None
        log = lowrank_run(model, spec, run.split("training"), run.split("validation"),
                          LowRankConfig(**{setting[0]: setting[1]}),
                          run.train_config(lr.finetune_epochs, s.lr, s.batch_size), out, device=run.device,
                          make_loss=make_loss, progress=run.progress)
        artifacts = [{**r, "name": f"low-rank {setting[0]} {setting[1]}, {r['stage']}", "stage": name,
                      "file": f"{name}/{r['model_file']}", "format": "safetensors fp32"}
                     for r in log["rows"] if r["stage"] != "original"]
        return {"artifacts": artifacts}

    return run.stage(name, work)


def _quantize_stage(run: Run, q, sources: list[dict]):
    """One storage codec applied to every source model; the decoded model's accuracy is measured."""
    cfg = QuantConfig(q.codec, q.bits, q.entropy).checked()
    label = f"{cfg.codec}" + (f"-{cfg.bits}bit" if cfg.codec in ("kbit", "kmeans") else "") + ("-lzma" if cfg.entropy else "")
    val = run.split("validation")

    def work(out: Path) -> dict:
        artifacts = []
        for i, src in enumerate(sources):
            model, spec = load_model(run.dir / src["file"])
            path = save_quantized(out / f"{i:02d}-{Path(src['file']).stem}.ncq", model, spec, cfg)
            decoded, _ = load_any(path)
            logits = predict_logits(decoded.to(run.device), val, run.device)
            acc = classification_metrics(logits, val.labels, val.num_classes)["accuracy"]
            artifacts.append({**src, "name": f"{src['name']}, {label}", "stage": f"quantize {label}",
                              "file": str(path.relative_to(run.dir)), "format": f"ncq {label}",
                              "file_bytes": path.stat().st_size, "val_accuracy": round(acc, 5)})
        return {"artifacts": artifacts}

    return run.stage(f"quantize-{label}", work)


def _compare_arch_stage(run: Run):
    from .compare_arch import compare

    c, s = run.recipe.compare_arch, run.recipe.student

    def work(out: Path) -> dict:
        rows = compare(run.split("training"), run.split("validation"), run.train_config(c.epochs, s.lr, s.batch_size),
                       out, device=run.device, params=c.budget_params, groups=c.groups, progress=run.progress)
        return {"rows": rows, "artifacts": [
            {**r, "name": f"architecture: {r['architecture']}", "stage": "compare-arch",
             "file": f"compare-arch/{r['architecture']}/best.safetensors", "format": "safetensors fp32"} for r in rows]}

    return run.stage("compare-arch", work)


def choose(artifacts: list[dict], target_bytes: int | None = None, target_params: int | None = None) -> dict:
    """The artifact with the best validation accuracy within the budgets, and what was tried."""
    fits = [a for a in artifacts if (target_bytes is None or a["file_bytes"] <= target_bytes)
            and (target_params is None or a["params"] <= target_params)]
    tried = [{"name": a["name"], "file_bytes": a["file_bytes"], "params": a["params"],
              "val_accuracy": a["val_accuracy"], "fits": a in fits} for a in artifacts]
    if not fits:
        smallest = min(artifacts, key=lambda a: a["file_bytes"])
        raise NetcompressError(f"no model meets the budget (bytes <= {target_bytes}, params <= {target_params}); "
                               f"the smallest is {smallest['name']}: {smallest['file_bytes']:,} bytes, "
                               f"{smallest['params']:,} params; add a pruning run with a lower rate or more steps")
    best = max(fits, key=lambda a: a["val_accuracy"])
    return {"chosen": best["name"], "file": best["file"], "target_bytes": target_bytes,
            "target_params": target_params, "tried": tried}


def _evaluate(run: Run, artifacts: list[dict], chosen: list[str]) -> dict:
    """Test accuracy of the teacher, the student and the models the budgets chose: once each.

    Results are kept in RUN/evaluate/test.json, so a rerun with another budget only evaluates
    the newly chosen model.
    """
    path = run.dir / "evaluate" / "test.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    wanted = [a for a in artifacts if (a["stage"] in ("teacher", "student") or a["name"] in chosen)
              and a["name"] not in results]
    if wanted:
        test = run.split("testing")
        if not test.labeled:
            return {}
        for a in wanted:
            model, _ = load_any(run.dir / a["file"])
            logits = predict_logits(model.to(run.device), test, run.device)
            results[a["name"]] = round(classification_metrics(logits, test.labels, test.num_classes)["accuracy"], 5)
        atomic_write_text(path, json.dumps(results, indent=2))
    return results


def run_recipe(recipe: Recipe, run_dir: str | Path, device: torch.device, *, target_bytes: int | None = None,
               target_params: int | None = None, cache_dir=None, progress: bool = True) -> dict:
    """Run every stage of `recipe` (skipping finished ones); returns the run's summary (also RUN/summary.json)."""
    run = Run(recipe, run_dir, device, cache_dir=cache_dir, progress=progress)
    run.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.dir / "recipe.json", json.dumps(asdict(recipe), indent=2))
    teacher = _teacher_stage(run)
    student = _student_stage(run, teacher["model_file"])
    artifacts = teacher["artifacts"] + student["artifacts"]
    for p in recipe.prune:
        artifacts += _prune_stage(run, p, student["model_file"], teacher["model_file"])["artifacts"]
    for lr in recipe.lowrank:
        artifacts += _lowrank_stage(run, lr, student["model_file"], teacher["model_file"])["artifacts"]
    if recipe.compare_arch.run:
        artifacts += _compare_arch_stage(run)["artifacts"]
    sources = [a for a in artifacts if a["stage"] not in ("teacher", "compare-arch")]
    for q in recipe.quantize:
        artifacts += _quantize_stage(run, q, sources)["artifacts"]
    budget = None
    if target_bytes is not None or target_params is not None:
        budget = choose([a for a in artifacts if a["stage"] != "teacher"], target_bytes, target_params)
    test = _evaluate(run, artifacts, [budget["chosen"]] if budget else []) if recipe.evaluate.test else {}
    summary = {"artifacts": artifacts, "budget": budget, "test": test}
    atomic_write_text(run.dir / "summary.json", json.dumps(summary, indent=2))
    return summary
