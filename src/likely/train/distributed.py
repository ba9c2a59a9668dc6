"""Distributed data-parallel training through PyTorch's own engine.

`likely train --nproc N` prepares the window once, then starts N copies of
itself with `torchrun` (`torch.distributed.run`). Each copy reads the rank and
world size torchrun sets, joins the process group (gloo on CPU, NCCL on CUDA),
trains on its own share of every epoch's batches, and lets
DistributedDataParallel average the gradients. Rank 0 alone writes the run
folder.

Known costs: every rank evaluates the full validation split (the weights are
identical, so every rank takes the same early-stopping decision without
talking); sparse embedding gradients are averaged by gloo only, so on CUDA the
embedding optimizer must be dense `adam`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    """The rank and world size torchrun set, or a world of one."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def join(world: World, device: torch.device) -> None:
    """Join the process group of a distributed run (once per process)."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend=backend)


def barrier(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.barrier()


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


WORKER_ARGUMENTS = "LIKELY_WORKER_ARGUMENTS"


def launch(nproc: int, arguments: list[str]) -> int:
    """Run `likely <arguments>` in `nproc` processes under torchrun; its exit code.

    The arguments travel in an environment variable: torchrun's own option
    parser would otherwise take `--run` for an abbreviation of `--run-path`.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "likely.train.distributed",
    ]
    env = {**os.environ, WORKER_ARGUMENTS: json.dumps(arguments)}
    return subprocess.run(command, check=False, env=env).returncode


if __name__ == "__main__":
    from likely.cli import app

    app(args=json.loads(os.environ[WORKER_ARGUMENTS]))
