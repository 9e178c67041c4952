"""Memory a deployed file costs: a fresh process opens it in its runtime alone (as a deployed program does) and
runs one call, and reports how far its peak resident memory rose above what the process held before.

A fresh process, because the measuring process already holds torch, the data and every other model; the rise
over the imports, because the interpreter and torch (about 300 MB) are not the model's cost. Linux only (it
reads /proc/self/status); elsewhere there is no figure.

Run as a module: python -m netcompress.measure.memory RUNTIME FILE N,C,H,W -> one JSON line.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import NetcompressError


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_memory_mb(path: str | Path, runtime: str, input_shape: tuple[int, ...], timeout: float = 300) -> float | None:
    """MB of peak resident memory that opening `path` on `runtime` and running one call on an input of
    `input_shape` added in a fresh process; None where the system does not say."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "netcompress.measure.memory", runtime, str(path),
                               ",".join(map(str, input_shape))], capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        raise NetcompressError(f"{path}: loading and running it once on {runtime} took over {timeout:g} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise NetcompressError(f"{path}: loading and running it on {runtime} in a fresh process failed ({last})")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def _main(runtime: str, path: str, shape: tuple[int, ...]) -> None:
    import torch

    from .latency import get_runtime

    runner = get_runtime(runtime)
    if runner.package:
        importlib.import_module(runner.package)
    x = torch.rand(shape)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # the peak so far (the imports') is not the model's
    except OSError:
        pass
    before = _status_mb("VmRSS")
    runner.prepare_file(Path(path), x, 1)()
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_mb": None if before is None or peak is None else round(peak - before, 1)}))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2], tuple(int(n) for n in sys.argv[3].split(",")))
