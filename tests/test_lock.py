"""The run-folder lock: exclusive under any interleaving of takers, released when its holder dies."""

import multiprocessing as mp
import os
import time

import pytest

from netcompress.errors import NetcompressError
from netcompress.files import RunLock


def _hammer(folder: str, seconds: float, out) -> None:
    """Take and release the lock until time is up; count double holders, refusals and escaped errors."""
    taken = doubles = refused = escaped = 0
    end = time.monotonic() + seconds
    marker = os.path.join(folder, "holder")
    while time.monotonic() < end:
        try:
            with RunLock(folder):
                taken += 1
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    doubles += 1
                    continue
                os.close(fd)
                os.unlink(marker)
        except NetcompressError as exc:
            refused += 1
            assert "is in use by process" in str(exc)
        except Exception:  # noqa: BLE001 - counted: the test fails on any
            escaped += 1
    out.put((taken, doubles, refused, escaped))


def test_four_processes_hammering_one_lock_never_hold_it_together(tmp_path):
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), 1.5, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    taken = sum(r[0] for r in results)
    assert sum(r[1] for r in results) == 0, results
    assert sum(r[3] for r in results) == 0, results
    assert taken > 100 and sum(r[2] for r in results) > 0, results  # it was contended and still served
    assert not (tmp_path / ".lock").exists()


def _hold(folder: str, ready) -> None:
    with RunLock(folder):
        ready.set()
        time.sleep(60)


def test_a_held_lock_names_its_holder_and_a_killed_holders_lock_is_taken(tmp_path):
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready))
    holder.start()
    try:
        assert ready.wait(timeout=30)
        with pytest.raises(NetcompressError, match=f"{tmp_path} is in use by process {holder.pid}; wait"):
            with RunLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.join()
    assert (tmp_path / ".lock").exists()  # killed: the file stays, its lock does not
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_a_leftover_lock_file_without_a_holder_is_taken(tmp_path):
    (tmp_path / ".lock").write_text("999999999")
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())


def test_the_holder_may_nest_and_keeps_the_lock_until_the_outer_exit(tmp_path):
    with RunLock(tmp_path):
        with RunLock(tmp_path):
            pass
        assert (tmp_path / ".lock").exists()
    assert not (tmp_path / ".lock").exists()


def test_a_folder_that_cannot_be_made_is_one_clear_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NetcompressError, match="cannot lock .*a file stands where its folder should be"):
        with RunLock(tmp_path / "f" / "run"):
            pass


def test_a_folder_removed_while_held_is_released_cleanly(tmp_path):
    import shutil

    with RunLock(tmp_path / "run"):
        shutil.rmtree(tmp_path / "run")
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").exists()
