"""The record of one model a run made: what the stages produce and the budgets, the report and --json consume."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

DECODED = "decoded to fp32"  # the runtime of a storage file: it runs as the fp32 module it decodes to


@dataclass(frozen=True)
class Artifact:
    """One model file of a run, with what it costs and how accurate it is.

    format/precision: "safetensors"/"fp32", or "ncq"/the codec ("kbit-4bit-lzma"). runtime: what runs the
    file as it is ("torch": it also exports to every runtime), or DECODED. latency_ms: milliseconds per
    measured runtime and batch ("ort@1"; None: the machine was too busy), empty where the file does not run
    as it is. candidate False: listed but never chosen by a budget, `why_not` says why. `details`: the stage's
    own columns (a pruning step, its rate and cut, sparse bytes, widths...).
    """

    name: str
    stage: str
    file: str  # relative to the run folder (absolute for a file outside it)
    format: str
    precision: str
    runtime: str
    file_bytes: int
    params: int
    macs: int
    val_accuracy: float
    latency_ms: dict = field(default_factory=dict)
    test_accuracy: float | None = None
    candidate: bool = True
    why_not: str = ""
    details: dict = field(default_factory=dict)

    @classmethod
    def measured(cls, row: dict, **fields) -> Artifact:
        """From a measurement row (`measure_model`, a schedule's step): the known columns, the rest as details."""
        known = {f.name for f in dataclasses.fields(cls)}
        row = {k: v for k, v in row.items() if k != "model_file"}
        values = {k: v for k, v in row.items() if k in known}
        details = {k: v for k, v in row.items() if k not in known}
        return cls(**{"format": "safetensors", "precision": "fp32", "runtime": "torch", **values, **fields,
                      "details": {**details, **fields.get("details", {})}})

    @classmethod
    def from_dict(cls, d: dict) -> Artifact:
        """From the JSON of a run's done.json or summary.json (those of older runs included)."""
        if "precision" in d:
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in d.items() if k in known})
        fmt, _, precision = d["format"].partition(" ")  # older runs: "safetensors fp32", "ncq kbit-4bit"
        latency = d.get("latency_ms")
        return cls.measured({k: v for k, v in d.items() if k not in ("format", "latency_ms")}, format=fmt,
                            precision=precision, runtime=DECODED if isinstance(latency, str) else "torch",
                            latency_ms=latency if isinstance(latency, dict) else {})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> Artifact:
        return dataclasses.replace(self, **changes)

    @property
    def label(self) -> str:
        """The format as a table shows it: "safetensors fp32", "ncq kbit-4bit-lzma"."""
        return f"{self.format} {self.precision}"
