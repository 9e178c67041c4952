"""Pre-flight checks: what a run will need, checked before its first epoch and reported all at once.

A stage that fails after an hour of training costs the user that hour, and a refusal that names one
problem at a time costs them a rerun per problem. These checks read file listings, file headers and
the file system only, so together they take seconds; `Preflight.raise_if_any` then reports every
problem found in one message.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .data.folder import ImageFolderData
from .errors import NetcompressError
from .formats.load import read_spec
from .spec import ModelSpec

MB = 1 << 20


class Preflight:
    """Problems found so far; `attempt` runs one check and keeps its error instead of stopping at it."""

    def __init__(self, what: str):
        self.what, self.problems = what, []

    def add(self, *problems: str) -> None:
        self.problems.extend(p for p in problems if p and p not in self.problems)

    def attempt(self, check, *args, **kwargs):
        """check(*args, **kwargs), or None with its NetcompressError kept as a problem."""
        try:
            return check(*args, **kwargs)
        except NetcompressError as exc:
            self.add(str(exc))
            return None

    def data(self, splits: tuple[str, ...], root, image_size: int, **options) -> ImageFolderData | None:
        """The dataset folder, with every problem of the splits a run will read (nothing is decoded)."""
        data = self.attempt(ImageFolderData, root, image_size, **options)
        if data is not None:
            self.add(*data.problems(splits))
        return data

    def model_file(self, path, role: str = "model") -> ModelSpec | None:
        """The spec of a model file the run will load (its header alone where the format allows)."""
        if not Path(path).exists():
            self.add(f"{role} file {path} does not exist")
            return None
        return self.attempt(read_spec, path)

    def matches(self, spec: ModelSpec | None, data: ImageFolderData | None, path, role: str = "model") -> None:
        """A model file that predicts the folder's classes and reads its channels."""
        if spec is None or data is None:
            return
        if spec.num_classes != len(data.class_names):
            self.add(f"{role} {path} predicts {spec.num_classes} classes but {data.root} has "
                     f"{len(data.class_names)}: give a {role} trained on this dataset")
        if spec.channels != data.channels:
            self.add(f"{role} {path} reads {spec.channels}-channel images but the data is read with "
                     f"{data.channels}: set --channels {spec.channels}")

    def output(self, folder, need_bytes: int = 0) -> None:
        """A folder the run can create or write into, with about `need_bytes` free."""
        self.add(output_problem(Path(folder), need_bytes))

    def raise_if_any(self) -> None:
        if len(self.problems) == 1:
            raise NetcompressError(f"{self.what}: {self.problems[0]} (nothing was run)")
        if self.problems:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            raise NetcompressError(f"{self.what}: {len(self.problems)} problem(s) found before any work started "
                                   f"(nothing was run):\n{listed}")


def output_problem(folder: Path, need_bytes: int = 0) -> str:
    """Why a run could not write its files into `folder` (created where missing), or "" when it can."""
    if folder.exists() and not folder.is_dir():
        return f"--out {folder} is a file; a run needs a folder there: choose another --out"
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        return f"--out {folder}: {existing} is a file where a folder should be; choose another --out"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--out {folder}: cannot write in {existing} (permission denied or a read-only disk); choose another --out"
    free = shutil.disk_usage(existing).free
    if need_bytes > free:
        return (f"--out {folder}: the run's files need about {need_bytes / MB:,.0f} MB but {existing} has "
                f"{free / MB:,.0f} MB free; free some space or choose another --out")
    return ""


def training_bytes(params: int) -> int:
    """Disk a training run of a `params`-parameter model writes: best and last model files, and the resumable
    state (weights plus the optimizer's two moments)."""
    return params * 4 * 5 + MB
