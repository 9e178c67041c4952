"""Checks every program-with-spec-beside-it format passes (ExecuTorch .pte, LiteRT .tflite)."""

import json
import shutil
import time

import pytest
import torch

import netcompress as nc


def assert_damage_is_refused(program, tmp_path, num_classes: int, input_size: int) -> None:
    """A flipped byte in the program or an edited spec beside it fails the checksum; a program without its spec
    loads with one guessed from its shapes."""
    damaged = tmp_path / f"d{program.suffix}"
    shutil.copy(program.with_suffix(".json"), tmp_path / "d.json")
    raw = bytearray(program.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    damaged.write_bytes(bytes(raw))
    with pytest.raises(nc.NetcompressError, match="checksum mismatch"):
        nc.load(damaged)
    shutil.copy(program, damaged)
    sidecar = json.loads((tmp_path / "d.json").read_text())
    sidecar["netcompress"]["class_names"] = sidecar["netcompress"]["class_names"][::-1]
    (tmp_path / "d.json").write_text(json.dumps(sidecar))
    with pytest.raises(nc.NetcompressError, match="checksum mismatch"):
        nc.load(damaged)
    (tmp_path / "d.json").unlink()  # a program from elsewhere: its spec guessed from its shapes
    guessed = nc.load(damaged)
    assert nc.spec_of(guessed).num_classes == num_classes and nc.spec_of(guessed).input_size == input_size


def assert_runs_on_the_calling_thread(runtime: str, model, tmp_path) -> None:
    """At one thread the work is this thread's CPU time (the busy-machine clock relies on it), and a batch other
    than the program's is refused."""
    from netcompress.measure.latency import get_runtime, runtimes_for

    assert runtimes_for(model) == [runtime]
    run = get_runtime(runtime).prepare(model, torch.rand(nc.spec_of(model).input_shape(1)), 1, tmp_path)
    run()
    walls, cpus = [], []
    for _ in range(30):
        wall, cpu = time.perf_counter(), time.thread_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.thread_time() - cpu)
    # a call's least disturbed wall time is its work; work on another thread would leave this one's CPU clock
    # near zero
    assert sorted(cpus)[15] > 0.5 * min(walls)
    with pytest.raises(nc.NetcompressError, match="runs batches of 1 images, not 8"):
        get_runtime(runtime).prepare(model, torch.rand(nc.spec_of(model).input_shape(8)), 1, tmp_path)
