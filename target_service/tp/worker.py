"""A worker rank (1 .. N-1) of a tensor-parallel target: its shard, its KV shard, its loop.

Rank 0 is the service (it owns the block tables and decides acceptance); a worker holds no
block manager, only a :class:`~specgrove.runner.ModelExecutor` over its shard of the weights
(Megatron-LM, Shoeybi et al. 2019) and of the KV cache (its KV heads), and executes whatever
rank 0 broadcasts until told to shut down. Run it

* spawned by rank 0 (:func:`target_service.tp.runner.start_tp_runner` does this), or
* under torchrun, where every rank runs the service command and ``start_tp_runner`` sends the
  ranks other than 0 here, or for worker-only nodes::

      torchrun --nnodes 2 --node-rank 1 --nproc-per-node 8 --master-addr HOST0 \\
          -m target_service.tp --model /ckpt --dtype bfloat16 --device cuda

A worker exits when rank 0 dies: its next collective fails on the closed connection, an idle
wait ends at the group timeout (rank 0 heartbeats while it is alive), and a spawned worker also
watches its parent process.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Sequence

import torch
import torch.distributed as dist

from specgrove.runner import ModelExecutor, load_executor
from target_service.tp import protocol
from target_service.tp.env import RankEnv, init_group, rank_device
from target_service.tp.spec import ShardSpec
from target_service.tp.workers import PARENT_ENV

log = logging.getLogger("specgrove.target.tp")

PARENT_POLL_S = 0.5


def run_worker(spec: ShardSpec, env: RankEnv) -> None:
    """Join the group, load this rank's shards, serve until rank 0 sends SHUTDOWN."""
    device = rank_device(spec.run.torch_device.type, env.local_rank)
    group = init_group(env, device, spec.timeout_s)
    try:
        shard = load_executor(spec.run, group, device)
        protocol.handshake(group.group)
        _serve(shard, group.group, device)
    finally:
        dist.destroy_process_group()


@torch.inference_mode()
def _serve(shard: ModelExecutor, group, device: torch.device) -> None:
    while True:
        message = protocol.receive(group, device)
        if message.kind is protocol.Kind.SHUTDOWN:
            return
        if message.kind is protocol.Kind.FORWARD:
            shard.execute(message.batch)  # the LM head's all-gather needs every rank
        elif message.kind is protocol.Kind.COPIES:
            shard.apply_copies(*message.copies)


def _exit_with_parent(parent_pid: int) -> None:
    """A spawned worker must not outlive rank 0, even while blocked inside a collective."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        print(f"tensor-parallel worker {os.getpid()}: rank 0 (pid {parent_pid}) is gone",
              file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="tp-parent-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    env = RankEnv.from_environ()
    if env is None or env.rank == 0:
        print("run a worker with RANK >= 1 and WORLD_SIZE set (torchrun sets both); "
              "rank 0 is the target service", file=sys.stderr)
        return 2
    spec = ShardSpec.parse(argv)
    if PARENT_ENV in os.environ:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when a spawned worker ends
        _exit_with_parent(int(os.environ[PARENT_ENV]))
    try:
        run_worker(spec, env)
    except Exception as exc:
        log.error("tensor-parallel rank %d stops: %s", env.rank, exc)
        return 1
    return 0

