"""Files that never lie: atomic writes (a reader, or a crash, never sees half a file) and run-folder locks."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

from .errors import NetcompressError

TMP_MARK = ".tmp"


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call write(tmp_path), then rename the result over `path`; on any failure nothing is left behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # some writers create 0600 files
        os.replace(tmp, path)
    except OSError as exc:
        raise NetcompressError(f"cannot write {path}: {_reason(exc, path)}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _reason(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device; free some space or write elsewhere (nothing was half-written)"
    if exc.errno in (errno.EISDIR, errno.ENOTEMPTY) or path.is_dir():
        return "a folder of that name is in the way; choose a file name"
    if exc.errno == errno.ENOTDIR or any(p.is_file() for p in path.parents):
        return "a file stands where its folder should be; choose another place"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (or a read-only disk); choose a place you can write to"
    return exc.strerror or str(exc)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files that a killed process left in `folder`; returns how many."""
    removed = 0
    for tmp in folder.glob(f".*{TMP_MARK}*"):
        pid = tmp.name.rpartition(TMP_MARK)[2].split(".")[0]
        if tmp.is_file() and not (pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid()):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder (RUN/.lock holds the owner's pid): a second process gets a clear error,
    and a lock left by a process that died is taken over."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ".lock"

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.path.read_text().strip() if self.path.exists() else ""
                if owner.isdigit() and _alive(int(owner)) and int(owner) != os.getpid():
                    raise NetcompressError(f"{self.path.parent} is in use by process {owner}; wait for it to finish, "
                                           "or choose another output folder") from None
                self.path.unlink(missing_ok=True)  # a dead owner's lock (or our own): take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self

    def __exit__(self, *_exc) -> None:
        if self.path.exists() and self.path.read_text().strip() == str(os.getpid()):
            self.path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
