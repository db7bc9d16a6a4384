"""Rank 0's executor for a tensor-parallel target, and the one call that starts it all.

:class:`TPExecutor` drives rank 0's shard in lock-step with the workers: a
:class:`~specgrove.runner.ModelRunner` over it alone owns the block manager, prepares each batch
once, and the executor broadcasts it, then runs its own shard while the model's all-reduces and
all-gathers (Megatron-LM, Shoeybi et al. 2019) make the ranks cooperate. Commit copies travel
the same way. ``TargetEngine`` runs over it unchanged and decides acceptance on rank 0 only.
"""
from __future__ import annotations

import threading
from dataclasses import replace

import torch

from specgrove.config import ModelRunConfig
from specgrove.modeling.loader import load_config, resolve_model
from specgrove.modeling.parallel import TPGroup
from specgrove.runner import ModelExecutor, ModelRunner, PreparedBatch, load_executor
from target_service.tp import protocol
from target_service.tp.driver import Driver
from target_service.tp.env import RankEnv, free_port, init_group, rank_device
from target_service.tp.errors import TPFailure
from target_service.tp.shapes import check_tp_shapes
from target_service.tp.spec import ShardSpec
from target_service.tp.worker import run_worker
from target_service.tp.workers import WorkerProcesses


class TPExecutor:
    """The :class:`ModelExecutor` interface for rank 0: every call is broadcast first."""

    def __init__(self, local: ModelExecutor, driver: Driver) -> None:
        self.local = local  # rank 0's shard; KV: [layers, 2, blocks, block_size, Hkv/N, D]
        self.driver = driver
        self.model, self.device = local.model, local.device

    @property
    def config(self):
        return self.local.config

    def execute(self, batch: PreparedBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Captured hidden states are replicated on every rank (after each layer's all-reduce):
        # rank 0 keeps its own and the workers need not know.
        with self.driver.step(protocol.forward_message(batch)):
            return self.local.execute(batch)

    def apply_copies(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        with self.driver.step(protocol.copies_message(src, dst)):
            self.local.apply_copies(src, dst)

    @property
    def tp_size(self) -> int:
        return self.driver.group.size

    @property
    def worker_pids(self) -> dict[int, int]:
        """rank -> pid of the workers this process started (empty under torchrun)."""
        return self.driver.workers.pids if self.driver.workers is not None else {}

    @property
    def failure(self) -> TPFailure | None:
        """Why the group is down, or None while it is healthy."""
        return self.driver.failure

    def close(self) -> None:
        self.driver.close()


def start_tp_runner(run: ModelRunConfig, tp_size: int = 1, timeout_s: float = 120.0) -> ModelRunner | None:
    """Start a target runner over ``tp_size`` ranks; the entry point of ``specgrove target --tp``.

    Without torchrun's variables this process is rank 0 and starts ranks 1..N-1 itself. Under
    torchrun every rank calls this with the same arguments: rank 0 gets the runner, every other
    rank serves as a worker inside this call and gets None once rank 0 shuts down. The model's
    shape is checked before any rank starts. ``tp_size == 1`` returns a plain ModelRunner.
    On CPU, spawned workers take ``cores // tp_size`` intra-op threads each; give rank 0 the
    same share (``torch.set_num_threads``) before calling this.
    """
    path = resolve_model(run.model)
    check_tp_shapes(load_config(path), tp_size, run.model)
    env = RankEnv.from_environ()
    if env is not None and env.world_size != tp_size:
        raise ValueError(f"launched with WORLD_SIZE={env.world_size} but asked for --tp {tp_size}")
    spec = ShardSpec(replace(run, model=str(path)), timeout_s)
    if tp_size == 1:
        return ModelRunner(load_executor(spec.run), spec.run.kv)
    if env is not None and env.rank != 0:
        run_worker(spec, env)
        return None
    return _start_rank0(spec, env, tp_size)


def _start_rank0(spec: ShardSpec, env: RankEnv | None, tp_size: int) -> ModelRunner:
    """Rank 0: spawn the workers unless torchrun started them, join, load, handshake."""
    device = rank_device(spec.run.torch_device.type, 0 if env is None else env.local_rank)
    workers = None
    if env is None:
        port = free_port()
        env = RankEnv.spawning_rank0(tp_size, port)
        workers = WorkerProcesses.spawn(spec, tp_size, port)
    group = _join_watching(env, device, spec.timeout_s, workers)
    driver = Driver(group, device, workers, spec.timeout_s)
    try:
        executor = TPExecutor(load_executor(spec.run, group, device), driver)
        driver.handshake()
    except BaseException as exc:
        # The workers may sit in the handshake: end them rather than send them a message.
        driver.fail(TPFailure(f"tensor-parallel start-up failed on rank 0: {exc!r}"))
        driver.close()
        raise
    return ModelRunner(executor, spec.run.kv)


def _join_watching(
    env: RankEnv, device: torch.device, timeout_s: float, workers: WorkerProcesses | None
) -> TPGroup:
    """Join the group; a spawned worker that dies meanwhile fails the start at once, by rank.

    The rendezvous runs in a helper thread because it blocks until every rank arrives (or the
    timeout passes); polling the workers beside it turns a crashed worker into an error now.
    """
    if workers is None:
        return init_group(env, device, timeout_s)
    outcome: dict[str, object] = {}

    def join() -> None:
        try:
            outcome["group"] = init_group(env, device, timeout_s)
        except BaseException as exc:  # reported by the waiting thread below
            outcome["error"] = exc

    thread = threading.Thread(target=join, name="tp-rendezvous", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.05)
        dead = workers.first_dead()
        if dead is not None and thread.is_alive():
            workers.terminate()
            raise dead
    if "error" in outcome:
        workers.terminate()
        raise outcome["error"]  # type: ignore[misc]
    return outcome["group"]  # type: ignore[return-value]
