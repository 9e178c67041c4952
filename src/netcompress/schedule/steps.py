"""The step recorder every schedule shares: each model it makes is measured, kept and logged the same way."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from ..compress.prune import PruneConfig
from ..compress.pruners import get_pruner
from ..files import atomic_write_text, json_text
from ..formats import model_file
from ..measure.cost import ms
from ..process import log
from .finetune import Finetune


@dataclass
class StepRun:
    """What a schedule made: every step's model by name (in order) and one row of measurements each."""

    models: dict[str, nn.Module] = field(repr=False)
    rows: list[dict]

    @property
    def final(self) -> nn.Module:
        return list(self.models.values())[-1]


class StepRecorder:
    """Measures every model a schedule makes (on the fine-tuning's validation split and device) and keeps it:
    run_dir/<name>.safetensors, one row each in `rows`, all rows in run_dir/<log_file> (JSON lines, or with
    `header` a JSON object {**header, "rows": [...]}). `sparse` also writes and measures sparse files."""

    def __init__(self, finetune: Finetune, log_file: str, *, header: dict | None = None, sparse: bool = False):
        self.finetune, self.log_file, self.header, self.sparse = finetune, log_file, header, sparse
        self.run = StepRun({}, [])

    @property
    def rows(self) -> list[dict]:
        return self.run.rows

    def record(self, name: str, net: nn.Module, key: dict, extra: dict | None = None, label: str = "") -> dict:
        """Measure `net`, keep it as `name`, and log a row that starts with `key` ({"step": k}, {"stage": s});
        `label` names it in the progress line (default: `name`)."""
        ft = self.finetune
        sparse_bytes = len(model_file.encode(net, sparse=True)) if self.sparse else None
        row = {**key, **ft.measure(net, len(model_file.encode(net)), sparse_bytes), **(extra or {})}
        if ft.run_dir is not None:
            model_file.save_model(net, ft.run_dir / f"{name}.safetensors")
            if self.sparse:
                model_file.save_model(net, ft.run_dir / f"{name}.sparse.safetensors", sparse=True)
            row["model_file"] = f"{name}.safetensors"
        self.run.models[name] = net
        self.run.rows.append(row)
        self.save()
        if ft.progress:
            log(f"{label or name}: {row['params']:,} params, {row['file_bytes']:,} bytes, {row['macs']:,} MACs, "
                f"val acc {row['val_accuracy']:.4f}, {ms(row['latency_ms']['ort@1'])} ms at batch 1 (ONNX Runtime)")
        return row

    def save(self) -> None:
        """Write the log again (after a row was added or changed)."""
        if self.finetune.run_dir is None:
            return
        path = self.finetune.run_dir / self.log_file
        if self.header is None:
            atomic_write_text(path, "".join(json_text(r, indent=None) + "\n" for r in self.rows))
        else:
            atomic_write_text(path, json_text({**self.header, "rows": self.rows}))


class PruningSteps(StepRecorder):
    """The rows of both pruning schedules (run_dir/pruning.jsonl, models step{k}.safetensors): the method, the
    rate and the share of channels kept (of parameters, for latency pruning, which has no fixed rate)."""

    def __init__(self, finetune: Finetune, config: PruneConfig):
        super().__init__(finetune, "pruning.jsonl", sparse=not get_pruner(config.method).structured)
        self.config = config

    def step(self, k: int, net: nn.Module, extra: dict | None = None) -> dict:
        cfg = self.config
        row = self.record(f"step{k}", net, {"step": k, "method": cfg.method, "rate": cfg.rate,
                                             "kept": round(cfg.rate**k, 5)}, extra, label=f"step {k}")
        if cfg.latency is not None:
            row["rate"], row["kept"] = None, round(row["params"] / self.rows[0]["params"], 5)
            self.save()
        return row
