"""Process-level settings: device choice, seeding, logging and the allocator tuning (measured: see tune_allocator)."""

from __future__ import annotations

import ctypes
import math
import os
import platform
import random
import sys
import time

import numpy as np
import torch

from .errors import NetcompressError

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> None:
    """Keep large activation buffers in the heap instead of returning them to the OS.

    glibc otherwise unmaps and faults back every large buffer on each forward pass; keeping them
    made StudentNet inference 2.2x and training 1.4x faster on a 2-core CPU. Same effect as
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296, set from inside.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        pass  # not glibc (musl, ...): nothing to tune


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else must be a device torch knows."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise NetcompressError(f"--device {name!r} is not a device name: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NetcompressError(f"--device {name}: CUDA is not available on this machine; use --device auto or cpu")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a module's parameters live (the CPU for a module without any, such as an ONNX Runtime wrapper)."""
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def log(message: str) -> None:
    """One line of progress on stderr (stdout stays clean for --json), without breaking progress bars."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def bars_off(progress: bool) -> bool | None:
    """tqdm's `disable`: no bars when progress is off, nor when stderr is a file (logs keep the summary lines)."""
    return None if progress else True


def available_memory() -> int | None:
    """Bytes of memory this process could still get (Linux MemAvailable, capped by a cgroup limit), or None where
    it cannot tell: lets a job that would not fit be refused with the number instead of being killed."""
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit.isdigit():
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(free, 0)


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, a batch scheduler), capped by a cgroup CPU quota
    (a container's --cpus)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def fair_threads(cores: int | None = None, busy: float | None = None) -> int:
    """Compute threads that fit beside the work already running: the usable cores less those other work keeps
    busy (`busy_cores`), at least one. More threads than free cores make every job wait on the others: on 2
    cores, two jobs of 2 threads trained 2.9x slower than two jobs of 1 thread (benchmarks/threads.py)."""
    cores = usable_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores, cores - math.floor(busy + 0.5)))


def busy_cores(seconds: float = 0.25) -> float:
    """How many of this process's cores other work keeps busy now: their non-idle share over `seconds`, from
    /proc/stat (the 1-minute load average, which lags by a minute, where that is not readable)."""
    try:
        allowed = os.sched_getaffinity(0)
        first = _cpu_times(allowed)
        time.sleep(seconds)
        second = _cpu_times(allowed)
    except (OSError, AttributeError, ValueError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    total = sum(b[0] - a[0] for a, b in zip(first, second))
    idle = sum(b[1] - a[1] for a, b in zip(first, second))
    return len(first) * (total - idle) / total if total > 0 else 0.0


def _cpu_times(allowed: set[int]) -> list[tuple[int, int]]:
    """(total, idle + iowait) jiffies of each allowed CPU."""
    found = []
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in allowed:
                values = [int(v) for v in fields[:8]]
                found.append((sum(values), values[3] + values[4]))
    if not found:
        raise ValueError("no per-CPU lines in /proc/stat")
    return found


def machine_state() -> dict:
    """The CPU and how busy it is now, for a run's record: latencies and times mean little without the load
    they were measured under."""
    name, flags = platform.processor() or platform.machine(), None
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
        flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), None)
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    # VNNI: x86 int8 dot products without 16-bit overflow (see export_onnx's reduce_range); None where unknown
    vnni = None if flags is None else bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return {"cpu": name, "cores": usable_cores(), "busy_cores": round(busy_cores(), 2), "load_average": load,
            "threads": torch.get_num_threads(), "vnni": vnni}
