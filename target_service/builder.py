"""Build the target's model runner: one process, or tensor-parallel over N ranks."""
from __future__ import annotations

import torch

from specgrove.config import ModelRunConfig
from specgrove.cpu_threads import thread_share
from specgrove.runner import ModelRunner


def build_runner(run: ModelRunConfig, tp: int = 1, timeout_s: float = 120.0) -> ModelRunner | None:
    """The rank-0 runner (None on a worker rank started by torchrun, after it has served).

    With ``tp > 1`` on CPU each rank gets ``cores // tp`` intra-op threads, this one included:
    oversubscribed OpenMP threads made steps 5-25x slower on a 2-core machine.
    """
    from target_service.tp import start_tp_runner

    if tp > 1 and run.torch_device.type == "cpu":
        torch.set_num_threads(thread_share(tp))
    return start_tp_runner(run, tp_size=tp, timeout_s=timeout_s)
