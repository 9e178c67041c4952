"""Reading what a run folder keeps between runs (done.json, test.json, latency tables): a damaged or foreign file
is refused in one line that names it and what to delete, and a record naming a model file that is gone is not
trusted (the stages after it would build on nothing)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import NetcompressError
from .artifact import Artifact


def read_json_object(path: Path, remedy: str) -> dict:
    """The JSON object in `path`; anything else (not JSON, a list, unreadable) is refused with `remedy`."""
    try:
        value = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise NetcompressError(f"{path} is damaged ({type(exc).__name__}, not JSON); {remedy}") from None
    if not isinstance(value, dict):
        raise NetcompressError(f"{path} holds a JSON {type(value).__name__}, not the object netcompress writes; "
                               f"{remedy}") from None
    return value


def stage_wall_seconds(run_dir: Path) -> dict[str, float]:
    """Each finished stage's own wall time (seconds, as it ran), by stage name: a run resumed over several calls
    still has the time its work took."""
    return {done.parent.name: read_json_object(done, f"delete {done.parent} to make that stage again")
            .get("wall_seconds", 0.0) for done in sorted(Path(run_dir).glob("*/done.json"))}


def read_done(done: Path, run_dir: Path) -> dict:
    """A finished stage's record, checked: its artifacts parse and every model file it names still exists."""
    remedy = f"delete {done.parent} to make that stage (and what follows) again"
    record = read_json_object(done, remedy)
    artifacts = record.get("artifacts")
    if not isinstance(artifacts, list):
        raise NetcompressError(f"{done} lists no artifacts: it was not written by netcompress or is damaged; "
                               f"{remedy}")
    files = [(record["model_file"], Path("."))] if "model_file" in record else []  # as written: from here
    for i, a in enumerate(artifacts):
        try:
            files.append((Artifact.from_dict(a).file, Path(run_dir)))  # relative to the run folder
        except (TypeError, KeyError, AttributeError, ValueError):
            raise NetcompressError(f"{done}: artifact {i + 1} is not a model record (damaged or foreign); "
                                   f"{remedy}") from None
    for file, base in files:
        if not isinstance(file, str) or not (base / file).is_file():
            raise NetcompressError(f"{done} names the model file {file!r}, which is missing; {remedy}")
    return record
