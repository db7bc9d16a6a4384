"""Where this process sits in the tensor-parallel group, read the way torchrun writes it.

torchrun (and the workers rank 0 spawns itself) set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT; the group is then joined with ``init_method="env://"``. A rank 0 that spawns
its own workers has none of these variables and rendezvouses at ``tcp://`` on a free port.
Backends: gloo on CPU; on GPUs NCCL for the model's tensors plus gloo for the CPU headers of
:mod:`target_service.tp.protocol`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch
import torch.distributed as dist

from specgrove.modeling.parallel import TPGroup
from specgrove.service import free_ports

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RankEnv:
    rank: int
    world_size: int
    local_rank: int
    init_method: str  # "env://" or "tcp://host:port"

    @staticmethod
    def from_environ(environ: Mapping[str, str] = os.environ) -> "RankEnv | None":
        """The torchrun variables, or None when this process was not launched as a rank."""
        if "RANK" not in environ or "WORLD_SIZE" not in environ:
            return None
        rank = int(environ["RANK"])
        return RankEnv(rank, int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", rank)),
                       "env://")

    @staticmethod
    def spawning_rank0(world_size: int, port: int) -> "RankEnv":
        return RankEnv(0, world_size, 0, f"tcp://{LOOPBACK}:{port}")


def worker_environ(rank: int, world_size: int, port: int) -> dict[str, str]:
    """torchrun's variables for a worker that rank 0 starts on this machine."""
    return {
        "MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(port), "RANK": str(rank),
        "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size),
    }


def free_port() -> int:
    """A port the OS considers free now (rank 0's rendezvous store binds it moments later)."""
    return free_ports(1, LOOPBACK)[0]


def rank_device(device_type: str, local_rank: int) -> torch.device:
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(device_type)


def init_group(env: RankEnv, device: torch.device, timeout_s: float) -> TPGroup:
    """Join the default process group; ``timeout_s`` bounds the rendezvous and every collective."""
    backend = "gloo" if device.type == "cpu" else "cpu:gloo,cuda:nccl"
    dist.init_process_group(
        backend, init_method=env.init_method, rank=env.rank, world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    return TPGroup(env.rank, env.world_size, dist.group.WORLD)
