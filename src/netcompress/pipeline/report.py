"""Plots and tables of compression results."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import NetcompressError
from ..files import atomic_write_text
from ..measure.cost import LATENCY_HEADINGS, latency_texts, ms
from ..plots import pyplot, save_figure
from ..version import __version__
from .artifact import DECODED, Artifact
from .budgets import CODEC_LOSS_POINTS, codec_losses, standard_error


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise NetcompressError(f"{path} does not exist: is {path.parent} a pruning run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _accuracy_axis(ax, accuracies: list[float], images: int) -> None:
    """Y limits wide enough to tell noise from a trend: 3 standard errors beyond the data, at least 0.1 tall."""
    noise = standard_error(sum(accuracies) / len(accuracies), images)
    low, high = min(accuracies) - 3 * noise, max(accuracies) + 3 * noise
    middle, half = (low + high) / 2, max(high - low, 0.1) / 2
    ax.set_ylim(max(0.0, middle - half), min(1.0, middle + half))
    ax.set_ylabel("validation accuracy")
    ax.text(0.01, 0.01, f"bars: ±1 standard error = ±{100 * noise:.1f} points on {images:,} images",
            transform=ax.transAxes, fontsize=8, color="dimgrey")


def plot_pruning(run_dirs: list[Path], out: Path, title: str = "Pruning: parameters vs validation accuracy",
                 val_images: int = 750) -> Path:
    """Parameter count (x) against validation accuracy (y), one line per pruning run (the seed's question 3)."""
    import matplotlib.ticker

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    accuracies = []
    for run in run_dirs:
        rows = read_jsonl(Path(run) / "pruning.jsonl")
        steps = len(rows) - 1
        label = f"rate {rows[0]['rate']} ({rows[0]['method']}, {steps} step{'s' if steps != 1 else ''})"
        acc = [r["val_accuracy"] for r in rows]
        ax.errorbar([r["params"] for r in rows], acc, yerr=[standard_error(a, val_images) for a in acc], marker="o",
                    capsize=3, label=label)
        accuracies += acc
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("parameters")
    _accuracy_axis(ax, accuracies, val_images)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out)


def pareto_front(artifacts: list[dict]) -> list[dict]:
    """The candidates no smaller file beats: each is more accurate than every candidate of fewer bytes."""
    front, best = [], -1.0
    for a in sorted((a for a in artifacts if a.get("candidate", True)), key=lambda a: (a["file_bytes"],
                                                                                       -a["val_accuracy"])):
        if a["val_accuracy"] > best:
            front.append(a)
            best = a["val_accuracy"]
    return front


def plot_size_vs_accuracy(artifacts: list[dict], out: Path, limit_bytes: int = 300_000, chosen: tuple[str, ...] = (),
                          val_images: int = 750) -> Path:
    """Every artifact's bytes on disk (log x) against validation accuracy: the Pareto frontier, the budgets'
    choices, the course's byte limit; models that are no candidates (before fine-tuning) drawn hollow."""
    import matplotlib.ticker

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    markers = "os^Dv"  # tab10's colours repeat after ten stages: the marker changes with each round of them
    for i, stage in enumerate(sorted({a["stage"] for a in artifacts})):
        group = [a for a in artifacts if a["stage"] == stage and a.get("candidate", True)]
        if group:
            ax.errorbar([a["file_bytes"] for a in group], [a["val_accuracy"] for a in group],
                        yerr=[standard_error(a["val_accuracy"], val_images) for a in group],
                        fmt=markers[i // 10 % len(markers)], color=f"C{i % 10}", ms=5, capsize=2, label=stage)
    others = [a for a in artifacts if not a.get("candidate", True)]
    if others:
        ax.scatter([a["file_bytes"] for a in others], [a["val_accuracy"] for a in others], facecolors="none",
                   edgecolors="grey", s=36, label="not a candidate (before fine-tuning)")
    front = pareto_front(artifacts)
    if len(front) > 1:  # one point makes no line: the legend would name what is not drawn
        ax.step([a["file_bytes"] for a in front], [a["val_accuracy"] for a in front], where="post", color="black",
                linewidth=1, alpha=0.6, label="Pareto frontier")
    picks = [a for a in artifacts if a["name"] in chosen]
    if picks:
        ax.scatter([a["file_bytes"] for a in picks], [a["val_accuracy"] for a in picks], marker="*", s=260,
                   color="gold", edgecolors="black", zorder=5, label="a budget's choice")
    ax.axvline(limit_bytes, color="crimson", linestyle="--", linewidth=1)
    _accuracy_axis(ax, [a["val_accuracy"] for a in artifacts] or [0.5], val_images)  # hollow points too
    ax.text(limit_bytes, ax.get_ylim()[1], f" {limit_bytes:,} bytes", color="crimson", va="top", fontsize=8)
    ax.set_xscale("log")
    sizes = [a["file_bytes"] for a in artifacts] + [limit_bytes]
    ax.set_xticks([t for t in (10**k * m for k in range(3, 9) for m in (1, 3))
                   if min(sizes) / 2 <= t <= max(sizes) * 2])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("bytes on disk (log scale)")
    ax.set_title("Size against accuracy of every model")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, out)


def plot_latency_vs_accuracy(points: list[dict], out: Path, runtime: str, target_ms: float | None = None,
                             chosen: str | None = None, val_images: int = 750) -> Path:
    """Latency per call (x) against validation accuracy (y) for models with a measured latency (`points`: name,
    stage, ms, val_accuracy): the fastest-for-its-accuracy frontier, the latency target and its choice."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    for stage in sorted({p["stage"] for p in points}):
        group = [p for p in points if p["stage"] == stage]
        ax.errorbar([p["ms"] for p in group], [p["val_accuracy"] for p in group],
                    yerr=[standard_error(p["val_accuracy"], val_images) for p in group], fmt="o", ms=5, capsize=2,
                    label=stage)
    front = pareto_front([{"file_bytes": p["ms"], "val_accuracy": p["val_accuracy"]} for p in points])
    if len(front) > 1:
        ax.step([p["file_bytes"] for p in front], [p["val_accuracy"] for p in front], where="post", color="black",
                linewidth=1, alpha=0.6, label="frontier (nothing faster is as accurate)")
    pick = [p for p in points if p["name"] == chosen]
    if pick:
        ax.scatter([pick[0]["ms"]], [pick[0]["val_accuracy"]], marker="*", s=260, color="gold", edgecolors="black",
                   zorder=5, label="the latency budget's choice")
    _accuracy_axis(ax, [p["val_accuracy"] for p in points], val_images)
    if target_ms is not None:
        ax.axvline(target_ms, color="crimson", linestyle="--", linewidth=1)
        ax.text(target_ms, ax.get_ylim()[1], f" {target_ms} ms", color="crimson", va="top", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"milliseconds per call on {runtime} (log scale; median of interleaved rounds)")
    ax.set_title("Latency against accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, out)


def latency_points(summary: dict) -> tuple[list[dict], str]:
    """The models to draw against latency, and on what: the latency budget's measurements where the run had
    one, else every fp32 model's ONNX Runtime time at batch 1 on one thread."""
    stages = {a["name"]: a["stage"] for a in summary["artifacts"]}
    chosen = summary.get("latency_budget")
    if chosen:
        t = chosen["target"]
        return ([{"name": r["name"], "stage": stages[r["name"]], "ms": r["median_ms"], "val_accuracy": r["val_accuracy"]}
                 for r in chosen["tried"] if r["median_ms"] is not None],
                f"{t['runtime']}, batch {t['batch']}, {t['threads']} thread(s)")
    return ([{"name": a["name"], "stage": a["stage"], "ms": a["latency_ms"]["ort@1"], "val_accuracy": a["val_accuracy"]}
             for a in summary["artifacts"] if isinstance(a.get("latency_ms"), dict) and a["latency_ms"].get("ort@1")],
            "ONNX Runtime, batch 1, 1 thread")


def environment() -> dict:
    import platform

    import numpy
    import onnxruntime
    import safetensors
    import torch
    import torchvision

    return {"netcompress": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "onnxruntime": onnxruntime.__version__,
            "safetensors": safetensors.__version__, "numpy": numpy.__version__,
            "machine": platform.machine(),
            "model files": "safetensors with a JSON spec in the header (no pickle)"}


def _machine_rows(machine: dict | None) -> dict:
    """The CPU the run measured on and how busy it was at the run's start and end (older runs recorded none)."""
    if not machine:
        return {}
    start, end = machine["at_start"], machine["at_end"]
    return {"cpu": f"{start['cpu']}, {start['cores']} usable cores",
            "load during the run": f"busy cores {start['busy_cores']} at the start, {end['busy_cores']} at the end "
                                   f"(1-minute load average {start['load_average']} -> {end['load_average']}); "
                                   f"{start['threads']} compute threads"}


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4f}" if v < 10 else f"{v:,.1f}"
    return str(v)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """RUN/report.md and a self-contained RUN/report.html (plots inlined) from a finished run."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise NetcompressError(f"{run_dir} has no summary.json: run `netcompress run RECIPE --out {run_dir}` first")
    summary = json.loads(summary_path.read_text())
    artifacts, test = summary["artifacts"], summary.get("test", {})
    images = summary.get("val_images", 750)
    budget = summary.get("budget")
    blocks: list[tuple] = [("h1", f"netcompress report: {run_dir.name}"), *_data_blocks(summary.get("splits"))]

    header = ["model", "format", "bytes", "params", "MACs", "val acc", "test acc", *LATENCY_HEADINGS.values()]
    records = [Artifact.from_dict(a) for a in artifacts]
    rows = [[a.name, a.label, a.file_bytes, a.params, a.macs, a.val_accuracy, test.get(a.name),
             *(latency_texts({"latency_ms": a.latency_ms if a.runtime != DECODED else DECODED}).values())]
            for a in records]
    blocks += [("h2", "Models"),
               ("p", "Every model the run made. Bytes are the file on disk in the named format; parameters are "
                     "counted like torchsummary. Latency is the median in milliseconds of rounds in which every "
                     "model was timed in turn at the end of the run (the tables below use the same figures): "
                     "ONNX Runtime and eager PyTorch at batch 1 on one thread, PyTorch at batch 64 on every core; "
                     "'busy' where the machine was too busy to measure honestly, 'decoded to fp32' for storage "
                     "codecs (their file decodes to the fp32 model, which runs as fast as its source). Test accuracy "
                     "is measured once, for the teacher, the student and the budgets' choices."),
               ("table", header, rows)]
    teaching = summary.get("teaching") or {}
    if "best_plain" in teaching:  # teach = "if-better": the teacher was weighed against the plain students
        blocks += [("h2", "Teaching"),
                   ("p", f"{teaching['why'][0].upper()}{teaching['why'][1:]} (validation, ±1 standard error = "
                         f"±{100 * standard_error(teaching['best_plain_val'], images):.1f} points on {images:,} "
                         "images).")]
    flagged = codec_losses(artifacts)
    if flagged:
        blocks += [("h2", "Flagged: lost to their codec"),
                   ("p", f"These stored or deployment files lost more than {CODEC_LOSS_POINTS:g} validation points "
                         "against the model they were made from: prefer quantization-aware fine-tuning, more bits or "
                         "another codec for them."),
                   ("table", ["model", "made from", "val acc", "its source's", "lost (points)"],
                    [[f["name"], f["source"], f["val_accuracy"], f["source_val_accuracy"], f["drop_points"]]
                     for f in flagged])]
    timed = {a.file: {"latency_ms": a.latency_ms} for a in records if a.runtime != DECODED}

    def latency_cells(file: str, row: dict) -> list[str]:
        """A table's latencies of one model: the figures the run took of every model together at its end, where
        the model is one of the run's files, else those of the row itself."""
        return list(latency_texts(timed.get(file, row)).values())

    prune_dirs = sorted(p.parent for p in run_dir.glob("prune-*/pruning.jsonl"))
    if prune_dirs:
        curve = plot_pruning(prune_dirs, run_dir / "pruning.png", val_images=images)
        blocks += [("h2", "Pruning"), ("p", "Parameters against validation accuracy after each prune-and-fine-tune "
                                            "step, one line per pruning rate; bars are one standard error, the "
                                            "noise of measuring on this many images."), ("img", curve)]
        for d in prune_dirs:
            prows = read_jsonl(d / "pruning.jsonl")
            blocks += [("h3", d.name), ("table", ["step", "kept", "params", "bytes", "val acc before fine-tune",
                                                  "val acc", *LATENCY_HEADINGS.values()],
                                        [[r["step"], r["kept"], r["params"], r["file_bytes"],
                                          r.get("val_accuracy_before_finetune"), r["val_accuracy"],
                                          *latency_cells(f"{d.name}/{r.get('model_file')}", r)]
                                         for r in prows])]
    compare = run_dir / "compare-arch" / "compare.json"
    if compare.exists():
        crows = json.loads(compare.read_text())
        blocks += [("h2", "Architecture comparison"),
                   ("p", "Each family widened or narrowed to the same parameter budget (within 5%), trained with "
                         "the same recipe."),
                   ("table", ["architecture", "widths", "params", "bytes", "8-bit bytes", "MACs", *LATENCY_HEADINGS.values(),
                              "val acc"],
                    [[r["architecture"], " ".join(map(str, r["widths"])), r["params"], r["file_bytes"], r["int8_bytes"],
                      r["macs"], *latency_cells(f"compare-arch/{r['architecture']}/best.safetensors", r),
                      r["val_accuracy"]] for r in crows]),
                   ("img", compare.parent / "compare.png")]
    choices = ([budget] if budget else []) + summary.get("budgets", [])
    scatter = plot_size_vs_accuracy(artifacts, run_dir / "size_vs_accuracy.png",
                                    chosen=tuple(c["chosen"] for c in choices), val_images=images)
    front = pareto_front(artifacts)
    blocks += [("h2", "Size against accuracy"),
               ("p", "The black steps are the Pareto frontier: each model on it is more accurate than every smaller "
                     "one. The dashed line is the course's 300,000-byte limit; stars are the budgets' choices."),
               ("img", scatter),
               ("table", ["on the frontier", "bytes", "val acc"],
                [[a["name"], a["file_bytes"], a["val_accuracy"]] for a in front])]
    points, runtime = latency_points(summary)
    latency_budget = summary.get("latency_budget")
    if points:
        target = latency_budget["target"] if latency_budget else None
        blocks += [("h2", "Latency against accuracy"),
                   ("p", f"Milliseconds per call on {runtime}, for the models with an honest figure (storage codecs "
                         "decode to the fp32 model and run as fast as it)."),
                   ("img", plot_latency_vs_accuracy(points, run_dir / "latency_vs_accuracy.png", runtime,
                                                    target["ms"] if target else None,
                                                    latency_budget["chosen"] if latency_budget else None, images))]
    blocks += _deploy_blocks([a for a in records if a.stage == "deploy"], run_dir, images)
    if latency_budget:
        blocks += [("h2", "Latency budget"),
                   ("p", f"At most {latency_budget['target']['ms']} ms per call on {runtime}: chose "
                         f"**{latency_budget['chosen']}** ({latency_budget['file']}), the best validation accuracy "
                         f"among the models measured within it (test accuracy {_fmt(test.get(latency_budget['chosen'])) or 'not measured'})."
                         " Every model was measured in the same interleaved rounds; 'busy' marks one the machine "
                         "was too busy to measure."),
                   ("table", ["tried", "median ms", "p90 ms", "val acc", "fits"],
                    [[t["name"], ms(t["median_ms"]), ms(t["p90_ms"]), t["val_accuracy"], t["fits"]]
                     for t in latency_budget["tried"]])]
    if summary.get("budgets"):
        sizes = {a["name"]: a["file_bytes"] for a in artifacts}
        blocks += [("h2", "Budgets"),
                   ("p", "The most accurate model on validation within each file size; the test split is measured "
                         "once, for these choices."),
                   ("table", ["budget (bytes)", "chosen", "bytes", "val acc", "test acc"],
                    [[c["target_bytes"], c["chosen"], sizes[c["chosen"]],
                      next(t["val_accuracy"] for t in c["tried"] if t["name"] == c["chosen"]), test.get(c["chosen"])]
                     for c in summary["budgets"]])]
    if budget:
        limits = ", ".join(f"{k.removeprefix('target_')} <= {v:,}" for k, v in budget.items()
                           if k.startswith("target_") and v is not None)
        blocks += [("h2", "Budget"), ("p", f"Budget {limits}: chose **{budget['chosen']}** ({budget['file']}), the "
                                          "best validation accuracy among the models that fit."),
                   ("table", ["tried", "bytes", "params", "val acc", "candidate", "fits"],
                    [[t["name"], t["file_bytes"], t["params"], t["val_accuracy"], t.get("candidate", True), t["fits"]]
                     for t in budget["tried"]]),
                   ("p", "Models that are not candidates are steps on the way (factorized before fine-tuning).")]
    env = {**environment(), **_machine_rows(summary.get("machine"))}
    blocks += [("h2", "Environment"), ("table", ["setting", "value"], [[k, v] for k, v in env.items()])]
    md = atomic_write_text(run_dir / "report.md", _markdown(blocks))
    html = atomic_write_text(run_dir / "report.html", _html(blocks, run_dir.name))
    return md, html


def _deploy_blocks(deployed: list[Artifact], run_dir: Path, images: int) -> list[tuple]:
    """The deployment files: each one's own runtime, bytes, accuracy and latency, and latency against accuracy."""
    if not deployed:
        return []
    second = sorted({int(key.split("@")[1]) for a in deployed for key in a.latency_ms} - {1})  # the larger batch
    rows = [[a.details.get("source"), f"{a.format} {a.precision}", a.runtime, a.file_bytes, a.val_accuracy,
             a.details.get("drop_points"), a.details.get("agreement"), ms(a.latency_ms.get(f"{a.runtime}@1")),
             *(ms(a.latency_ms.get(f"{a.runtime}@{batch}")) for batch in second),
             a.details.get("memory_mb"), a.details.get("deploy", "")] for a in deployed]
    points = [{"name": a.name, "stage": f"{a.runtime} {a.precision}", "ms": a.latency_ms[f"{a.runtime}@1"],
               "val_accuracy": a.val_accuracy} for a in deployed if a.latency_ms.get(f"{a.runtime}@1")]
    blocks = [("h2", "Deployment"),
              ("p", "Each model written as every deployment file and measured as it ships: validation accuracy of "
                    "the file run by its runtime, its drop in points and top-1 agreement against the fp32 model, the "
                    "bytes of every file that ships, the memory a fresh process adds by loading it and running once, "
                    "and milliseconds per call on its own runtime on one thread (batch 1 timed with every model at "
                    "the end of the run; the larger batch timed beside the same model's other files). The last "
                    "column is `deploy`'s verdict: the fastest file within the accuracy drop, or why not. Budgets "
                    "choose among these files as among the other models."),
              ("table", ["model", "file", "runtime", "bytes", "val acc", "drop (points)", "agrees",
                         "ms @1", *(f"ms @{batch}" for batch in second), "memory MB", "deploy"], rows)]
    if points:
        blocks.append(("img", plot_latency_vs_accuracy(points, run_dir / "deploy_latency_vs_accuracy.png",
                                                       "each file's own runtime, batch 1, 1 thread",
                                                       val_images=images)))
    return blocks


def _data_blocks(splits: dict | None) -> list[tuple]:
    """Where each split came from and its size: a carved split, and test figures measured on the validation
    images, are said plainly; so is the noise of a validation accuracy on this many images."""
    if not splits:
        return []
    val = splits.get("validation", {}).get("images", 0)
    rows = [[name, s["from"], s["images"], f"{min(s['per_class'].values())}-{max(s['per_class'].values())}"
             if s["per_class"] else "", "yes" if s["labeled"] else "no"] for name, s in splits.items()]
    text = (f"Models are chosen on the validation split ({val:,} images: one standard error of an accuracy near "
            f"0.5 is ±{standard_error(0.5, val):.3f}). Splits without a folder of their own were carved from "
            "training, stratified by class and seeded, the same on every rerun.") if val else ""
    if "test = validation" in splits.get("testing", {}).get("from", ""):
        text += (" Test figures are measured on the validation split, the images the models were chosen on: "
                 "they are optimistic.")
    return [("h2", "Data"), ("p", text), ("table", ["split", "from", "images", "per class", "labeled"], rows)]


def _markdown(blocks) -> str:
    out = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + args[0])
        elif kind == "p":
            out.append(args[0])
        elif kind == "img":
            out.append(f"![{args[0].stem}]({args[0].name})")
        elif kind == "table":
            header, rows = args
            out.append("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
            out[-1] += "".join("\n| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows)
    return "\n\n".join(out) + "\n"


def _html(blocks, title: str) -> str:
    import base64
    import html as h

    body = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{h.escape(args[0])}</{kind}>")
        elif kind == "p":
            text = h.escape(args[0])
            while "**" in text:
                text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
            body.append(f"<p>{text}</p>")
        elif kind == "img":
            data = base64.b64encode(Path(args[0]).read_bytes()).decode()
            body.append(f'<img alt="{h.escape(args[0].stem)}" src="data:image/png;base64,{data}">')
        elif kind == "table":
            header, rows = args
            head = "".join(f"<th>{h.escape(c)}</th>" for c in header)
            cells = "".join("<tr>" + "".join(f"<td>{h.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}"
             "td{text-align:right}td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}"
             "h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.6em}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{h.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
