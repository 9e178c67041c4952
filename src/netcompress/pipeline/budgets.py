"""Budgets: the most accurate candidate within a size, a parameter count or a measured latency, and what was
tried; whether a teacher is worth learning from; and which stored models lost too much to their codec."""

from __future__ import annotations

from dataclasses import asdict

from ..errors import NetcompressError
from ..measure.latency import LatencyTarget
from .artifact import Artifact


def choose(artifacts: list[Artifact], target_bytes: int | None = None, target_params: int | None = None) -> dict:
    """The candidate with the best validation accuracy within the budgets, and what was tried.

    Models that are steps on the way (a factorized model before its fine-tuning) are listed but
    never chosen.
    """
    candidates = [a for a in artifacts if a.candidate]
    fits = [a for a in candidates if (target_bytes is None or a.file_bytes <= target_bytes)
            and (target_params is None or a.params <= target_params)]
    tried = [{"name": a.name, "file_bytes": a.file_bytes, "params": a.params, "val_accuracy": a.val_accuracy,
              "candidate": a.candidate, "fits": a in fits} for a in artifacts]
    if not fits:
        smallest = min(candidates, key=lambda a: a.file_bytes)
        limits = " and ".join(f"{what} <= {value:,}" for what, value in (("bytes", target_bytes),
                                                                         ("params", target_params))
                              if value is not None)
        raise NetcompressError(f"no model meets the budget ({limits}); the smallest is {smallest.name}: "
                               f"{smallest.file_bytes:,} bytes, {smallest.params:,} params; add a pruning run with a "
                               "lower rate or more steps")
    best = max(fits, key=lambda a: a.val_accuracy)
    return {"chosen": best.name, "file": best.file, "target_bytes": target_bytes, "target_params": target_params,
            "tried": tried}


def choose_by_latency(artifacts: list[Artifact], target: LatencyTarget, measured: dict[str, dict]) -> dict:
    """The measured candidate with the best validation accuracy that runs within the target, and what was tried."""
    tried = [{"name": a.name, **measured[a.name], "val_accuracy": a.val_accuracy,
              "fits": measured[a.name]["median_ms"] is not None and measured[a.name]["median_ms"] <= target.ms}
             for a in artifacts if a.name in measured]
    fits = [t for t in tried if t["fits"]]
    if not fits:
        timed = [t for t in tried if t["median_ms"] is not None]
        fastest = (f"the fastest is {min(timed, key=lambda t: t['median_ms'])['name']} at "
                   f"{min(t['median_ms'] for t in timed):.3f} ms" if timed else "the machine was too busy to measure")
        raise NetcompressError(f"no model runs within {target}: {fastest}; add a [[prune]] table with "
                               f"target_latency_ms = {target.ms}, or rerun on an idle machine")
    best = max(fits, key=lambda t: t["val_accuracy"])
    file = next(a.file for a in artifacts if a.name == best["name"])
    return {"chosen": best["name"], "file": file, "target": asdict(target), "tried": tried}


def standard_error(accuracy: float, images: int) -> float:
    """One standard error of an accuracy measured on `images` images (binomial): the noise a difference must beat."""
    return (accuracy * (1 - accuracy) / max(images, 1)) ** 0.5


def weigh_teacher(teach: str, teacher: Artifact, plains: list[Artifact], val_images: int = 0) -> dict:
    """Whether the students learn from the teacher: always (teach = "always"), or only when it is more accurate on
    validation than every student trained without it (teach = "if-better") by more than one standard error of
    validation on `val_images` images: a weaker teacher teaches its mistakes (distilling from one cost 8 test points
    on a dataset the recipes were not tuned on), and one within the noise taught a student less than the labels."""
    if teach == "always" or not plains:
        return {"used": True, "why": "teach = always" if teach == "always" else "no student trained without it"}
    best = max(plains, key=lambda a: a.val_accuracy)
    noise = standard_error(best.val_accuracy, val_images) if val_images else 0.0
    used = teacher.val_accuracy > best.val_accuracy + noise
    why = (f"the teacher's validation accuracy {teacher.val_accuracy:.3f} {'beats' if used else 'does not beat'} "
           f"{best.val_accuracy:.3f} of {best.name}, the best student trained without it"
           + (f", by more than the noise of validation (±{100 * noise:.1f} points)" if noise else "")
           + ("" if used else ": every student learns from the labels alone"))
    return {"used": used, "why": why, "teacher_val": teacher.val_accuracy, "best_plain": best.name,
            "best_plain_val": best.val_accuracy}


CODEC_LOSS_POINTS = 3.0  # a stored or deployed model this many validation points below its source is flagged


def codec_losses(artifacts: list[dict], points: float = CODEC_LOSS_POINTS) -> list[dict]:
    """The stored and deployed models that lost more than `points` validation points against the model they were
    made from: flagged, never a silent row (the course's 8-bit codec cost a pretrained student 16 points)."""
    by_name = {a["name"]: a for a in artifacts}
    flagged = []
    for a in artifacts:
        source = by_name.get((a.get("details") or {}).get("source"))
        if source is None or a.get("val_accuracy") is None or source.get("val_accuracy") is None:
            continue
        drop = 100 * (source["val_accuracy"] - a["val_accuracy"])
        if drop > points:
            flagged.append({"name": a["name"], "source": source["name"], "val_accuracy": a["val_accuracy"],
                            "source_val_accuracy": source["val_accuracy"], "drop_points": round(drop, 1)})
    return flagged
