"""Files that never lie: atomic writes (a reader, or a crash, never sees half a file) and run-folder locks."""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

import numpy as np

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
        raise NetcompressError(f"cannot write {path}: {why_not_written(exc, path)}") from None
    except RuntimeError as exc:  # torch.save reports a failed write (a full disk) as "unexpected pos 704 vs 598"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NetcompressError(f"cannot write {path}: the writer failed ({first}) with {_free_mb(path)} MB free "
                               "there; free some space or write elsewhere (nothing was half-written)") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_text(value, indent: int | None = 2) -> str:
    """JSON of `value` with every float that came from a float32 (an accuracy, a loss) written as the float32 it
    is, 0.436 rather than 0.4359999895095825; other floats keep every digit."""
    return json.dumps(_tidy(value), indent=indent)


def _tidy(value):
    if isinstance(value, float) and math.isfinite(value):
        short = float(str(np.float32(value)))
        return short if np.float32(short) == np.float32(value) and float(np.float32(value)) == value else value
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tidy(v) for v in value]
    return value


def _free_mb(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(next(p for p in (path.parent, *path.parents) if p.exists())).free / 2**20:,.0f}"
    except (OSError, StopIteration):
        return "?"


def why_not_written(exc: OSError, path: Path) -> str:
    """What an OSError met while writing `path` means to the user, and what to do."""
    if exc.errno == errno.ENOSPC:
        return "no space left on the device; free some space or write elsewhere (nothing was half-written)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (or a read-only disk); choose a place you can write to"
    if exc.errno in (errno.EISDIR, errno.ENOTEMPTY) or path.is_dir():
        return "a folder of that name is in the way; choose a file name"
    if exc.errno == errno.ENOTDIR or any(p.is_file() for p in path.parents):
        return "a file stands where its folder should be; choose another place"
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
    """An exclusive lock on a run folder: flock on RUN/.lock, held through an open descriptor.

    The kernel drops the lock when its holder exits, however it dies, so a dead process's lock is
    simply taken; the file names the holder's pid for the error a second process gets. The holder
    removes the file while still holding the lock, and a taker checks that the file it locked is still
    the one at RUN/.lock, so two processes never hold it at once. Re-entering in the holder nests.
    """

    _held: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, depth), this process's locks
    _guard = threading.Lock()

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ".lock"

    def __enter__(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            key = self.path.resolve()
        except OSError as exc:
            raise NetcompressError(f"cannot lock {self.path.parent}: {why_not_written(exc, self.path)}") from None
        self._key = key  # the folder may be renamed or removed while held: release what was taken
        with self._guard:
            if key in self._held:
                fd, depth = self._held[key]
                self._held[key] = (fd, depth + 1)
                return self
            self._held[key] = (self._take(), 1)
        return self

    def _take(self) -> int:
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as exc:
                raise NetcompressError(f"cannot lock {self.path.parent}: {why_not_written(exc, self.path)}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise NetcompressError(f"{self.path.parent} is in use by process {owner or '(unknown)'}; wait for "
                                       "it to finish, or choose another output folder") from None
            except OSError as exc:
                os.close(fd)
                raise NetcompressError(f"cannot lock {self.path.parent}: {why_not_written(exc, self.path)}") from None
            if _same_file(fd, self.path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
                return fd
            os.close(fd)  # its holder removed it between our open and our lock: lock the new one

    def __exit__(self, *_exc) -> None:
        key = self._key
        with self._guard:
            fd, depth = self._held.pop(key)
            if depth > 1:
                self._held[key] = (fd, depth - 1)
                return
        try:
            if _same_file(fd, self.path):
                self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: the file stays, and the next taker finds it unlocked
        finally:
            os.close(fd)


def _read_owner(fd: int) -> str:
    try:
        owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return owner if owner.isdigit() else ""


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
