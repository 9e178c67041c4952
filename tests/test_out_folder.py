"""--out where nothing can be written (under a file, on a read-only disk, a disk that fills up): one clear line and
exit 2 from `train` and `run`, never a traceback."""

import contextlib
import errno
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netcompress.errors import NetcompressError
from netcompress.files import atomic_write


def cli(*args, cache: Path) -> tuple[int, str]:
    """`netcompress ARGS` in this process: (exit code, stderr)."""
    from netcompress.cli import main

    err = io.StringIO()
    old_argv, old_cache = sys.argv, os.environ.get("NETCOMPRESS_CACHE")
    sys.argv, os.environ["NETCOMPRESS_CACHE"] = ["netcompress", *map(str, args)], str(cache)
    code = 0
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old_argv
        os.environ.pop("NETCOMPRESS_CACHE", None) if old_cache is None else os.environ.update(
            NETCOMPRESS_CACHE=old_cache)
    return code, err.getvalue()


@pytest.fixture()
def data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("training", "validation", "testing"):
        (tmp_path / "d" / split).mkdir(parents=True)
        for label in range(3):
            for k in range(3):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                    tmp_path / "d" / split / f"{label}_{k}.png")
    return tmp_path / "d"


def _verbs(data: Path, tmp_path: Path) -> dict[str, list]:
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\nroot = "{data}"\nimage_size = 16\n[teacher]\nmodel = "studentnet"\nepochs = 1\n'
                      '[student]\nmodel = "studentnet"\nepochs = 1\n')
    return {"train": ["train", "--model", "studentnet", "--data", data, "--image-size", 16, "--epochs", 1,
                      "--no-progress"],
            "run": ["run", recipe, "--no-progress"]}


def read_only_below(monkeypatch, root: Path) -> None:
    """Make every write below `root` fail as on a read-only disk (the tests may run as root, where chmod does not)."""
    real_open, real_mkdir, real_access = os.open, os.mkdir, os.access

    def below(path) -> bool:
        return Path(os.fsdecode(path)).absolute().is_relative_to(root)

    def fake_open(path, flags, *args, **kwargs):
        if below(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if below(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if below(path) and mode & os.W_OK
                        else real_access(path, mode, **kw))


@pytest.mark.parametrize("verb", ["train", "run"])
@pytest.mark.parametrize("where, expected", [
    ("file/run", "is a file where a folder should be|a file stands where its folder should be"),
    ("file", "is a file; a run needs a folder there"),
    ("ro/run", "permission denied or a read-only disk|permission denied \\(or a read-only disk\\)"),
])
def test_an_out_folder_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, data, monkeypatch, verb, where,
                                                                     expected):
    import re

    (tmp_path / "file").write_text("x")
    (tmp_path / "ro").mkdir()
    read_only_below(monkeypatch, tmp_path / "ro")
    code, err = cli(*_verbs(data, tmp_path)[verb], "--out", tmp_path / where, cache=tmp_path / "cache")
    assert code == 2, err
    assert "Traceback" not in err and re.search(expected, err), err
    assert str(tmp_path / where.split("/")[0]) in err
    assert not (tmp_path / "ro" / "run").exists()


def test_an_os_error_midway_is_one_line_naming_the_file(monkeypatch):
    import netcompress.cli as cli_module

    def fail():
        raise OSError(errno.EROFS, "Read-only file system", "/runs/x/state.pt")

    monkeypatch.setattr(cli_module, "app", fail)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        cli_module.main()
    assert exit_.value.code == 2
    assert err.getvalue() == ("error: cannot use /runs/x/state.pt: permission denied (or a read-only disk); choose "
                              "a place you can write to\n")


def test_a_writer_that_fails_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    def torch_like(tmp):  # what torch.save raises when the disk fills up
        tmp.write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    with pytest.raises(NetcompressError, match=r"cannot write .*state.pt: the writer failed \(\[enforce fail.*\) "
                                               r"with [\d,]+ MB free there; free some space"):
        atomic_write(tmp_path / "state.pt", torch_like)
    assert list(tmp_path.iterdir()) == []
