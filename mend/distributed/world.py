"""The process group: start it, and the few collectives the training loop needs.

Started through DeepSpeed, which reads the launcher's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``, as set by both the
``deepspeed`` launcher and ``torchrun``) and picks the communication backend of its
accelerator: NCCL on GPUs, gloo (plus its shared-memory ops) on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """Join the process group (idempotent) and select this rank's device."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if not dist.is_initialized():
        deepspeed.init_distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)
    return World(dist.get_rank(), dist.get_world_size(), local_rank,
                 torch.device(accelerator.current_device_name()))


def leave_world() -> None:
    """Leave the process group once every rank is done (idempotent)."""
    if dist.is_initialized():
        dist.barrier()
        _release_shared_memory(dist.get_rank())
        dist.destroy_process_group()


SHM_DIR = Path("/dev/shm")
SHM_SEGMENT = "deepspeed_allreduce_buffer"  # how DeepSpeed's shm.cpp names its segments


def shared_memory_segment(rank: int) -> Path:
    """Where DeepSpeed's CPU allreduce keeps ``rank``'s shared-memory workspace (named
    after the user and the rendezvous, as its ``shm.cpp`` names it)."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHM_DIR / f"{SHM_SEGMENT}_{os.getuid()}_{addr}_{port}_{rank}"


def _release_shared_memory(rank: int) -> None:
    # When every rank is on one machine, DeepSpeed's CPU communication op creates one
    # shared-memory segment per rank and never removes it: each run left its segments in
    # /dev/shm (memory) until the machine restarted. Removed after the last barrier: the
    # peers mapped it when they started, and a mapping outlives its name.
    with contextlib.suppress(FileNotFoundError):
        shared_memory_segment(rank).unlink()


def exit_process(code: int) -> NoReturn:
    """End a launched process with ``code`` once its work is done: leave the process
    group (when there is one), flush output and logs, and skip interpreter teardown.

    Even after leaving the group, a rank that has finished its work intermittently
    aborted while the interpreter tore down communication threads ("terminate called
    without an active exception", exit -6; about one run in four on 2 CPU ranks), and
    the launcher then reported the whole run failed.
    """
    leave_world()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def comm_device() -> torch.device:
    """Where tensors handed to collectives must live (NCCL needs the GPU)."""
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Sum a dict of floats over ranks (every rank must pass the same keys)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return dict(values)
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=comm_device())
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return dict(zip(keys, packed.tolist(), strict=True))


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
