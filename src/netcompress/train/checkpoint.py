"""What a run folder holds between epochs, and how a rerun resumes from it.

  run.json         the settings (a rerun with other settings is refused, not mixed in)
  metrics.jsonl    one JSON line per finished epoch
  state.pt         model + optimizer + schedule + history after the last finished epoch (tensors only)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import NetcompressError
from ..files import atomic_write, atomic_write_text, json_text, remove_stale_temporaries
from .config import TrainConfig


def save_checkpoint(run_dir: Path, model, opt, sched, epoch, best_acc, best_epoch, history, average=None) -> None:
    """Commit a finished epoch: state.pt holds the weights (and their moving average), the optimizer and the whole
    history, so a kill at any instant loses no finished epoch; metrics.jsonl is rewritten from it (and again on
    resume if a kill came first)."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": epoch, "best_accuracy": best_acc, "best_epoch": best_epoch, "history": history,
             **({"average": average.state_dict()} if average is not None else {})}
    atomic_write(run_dir / "state.pt", lambda tmp: torch.save(state, tmp))
    write_metrics(run_dir, history)


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json_text(r, indent=None) + "\n" for r in history))


def resume(run_dir: Path, run_info: dict, model, opt, sched, device, average=None) -> tuple[int, float, int, list[dict]]:
    """Load state.pt if the run directory holds an interrupted run with the same settings."""
    state_path = run_dir / "state.pt"
    remove_stale_temporaries(run_dir)
    if not state_path.exists():
        return 1, -1.0, 0, []
    try:
        old = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise NetcompressError(f"{run_dir} holds state.pt but no readable run.json ({type(exc).__name__}): it was not "
                               "made by netcompress or is damaged; choose another output folder") from None
    if not isinstance(old, dict) or not isinstance(old.get("config", {}), dict):
        what = f"its config is a {type(old['config']).__name__}" if isinstance(old, dict) else \
            f"a JSON {type(old).__name__}"
        raise NetcompressError(f"{run_dir / 'run.json'} is not the settings object netcompress writes ({what}); "
                               f"delete {run_dir} to start the run over, or choose another output folder")
    defaults = json.loads(json.dumps(asdict(TrainConfig())))  # a field added since the run began: at its default
    old_cfg, new_cfg = {**defaults, **old.get("config", {})}, json.loads(json.dumps(run_info["config"]))
    differ = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
    new = json.loads(json.dumps(run_info))
    differ += sorted(k for k in set(old) | set(new) if k != "config" and old.get(k) != new.get(k))
    if differ:
        raise NetcompressError(f"{run_dir} holds a run with other settings ({', '.join(differ)} differ); "
                               "rerun with the same settings to resume, or choose another output folder")
    try:
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if average is not None:
            average.load_state_dict(state["average"])
        epoch, best_acc, best_epoch = int(state["epoch"]), float(state["best_accuracy"]), int(state["best_epoch"])
    except Exception as exc:  # torch raises many types for damaged files
        raise NetcompressError(f"{state_path} is damaged ({type(exc).__name__}); delete it to start the run over, "
                               "or choose another output folder") from None
    history = state.get("history")
    if not isinstance(history, list) or not all(isinstance(r, dict) and isinstance(r.get("epoch"), int)
                                                for r in history):
        raise NetcompressError(f"{state_path} holds no readable history of its epochs; delete it to start the run "
                               "over, or choose another output folder")
    history = [r for r in history if r["epoch"] <= epoch]
    write_metrics(run_dir, history)  # a kill between state.pt and metrics.jsonl lost no row: write it again
    return epoch + 1, best_acc, best_epoch, history
