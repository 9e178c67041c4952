"""Data-parallel training across processes started by torchrun: gloo on CPU, NCCL on GPU.

Every rank holds the whole (decoded) dataset and takes its shard of each epoch's shared random
order; DistributedDataParallel averages gradients, so N ranks with batch B/N each train like
one process with batch B. Rank 0 alone writes checkpoints, logs and progress bars.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import NetcompressError
from ..process import fair_threads


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """All-reduce (sum) tensors across ranks; a no-op in a single process."""
        if self.size == 1:
            return list(values)
        packed = torch.stack([v.detach().double().cpu() for v in values])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        return list(packed.unbind())


def init_from_env(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE, RANK, ...)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank), device


def launch(nproc: int, argv: list[str]) -> int:
    """Run this command again under torchrun with `nproc` processes on this machine; returns its exit code."""
    if nproc < 1:
        raise NetcompressError(f"--nproc {nproc} must be >= 1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "netcompress.cli", *argv]
    # never more compute threads than free cores across the workers (torchrun alone gives each one thread)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, fair_threads() // nproc))
    return subprocess.call(cmd, env=dict(os.environ, OMP_NUM_THREADS=threads))


def strip_nproc(argv: list[str]) -> list[str]:
    """argv without its --nproc option (the launched processes must not launch again)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
