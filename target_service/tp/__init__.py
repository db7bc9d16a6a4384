"""Tensor-parallel target: rank 0 serves, ranks 1..N-1 execute their shards in lock-step.

Megatron-LM (Shoeybi et al. 2019) tensor parallelism across processes (gloo on CPU, NCCL on
GPUs). Rank 0 owns the block manager, prepares every batch once and broadcasts it
(:mod:`.protocol`); every rank runs the same forward on its own shard of the weights and of the
KV cache (KV heads / N per rank). Acceptance is decided on rank 0 only. A dead rank makes the
next call fail fast with :class:`TPWorkerDied` naming it (:mod:`.driver`, :mod:`.monitor`), and
workers exit when rank 0 goes away (:mod:`.worker`).

    run = ModelRunConfig("/ckpt", "bfloat16", "cuda", kv=KVCacheConfig(16, 4096))
    runner = start_tp_runner(run, tp_size=2)
    engine = TargetEngine(runner)
    ...
    runner.close()
"""
from target_service.tp.errors import TPFailure, TPShapeError, TPWorkerDied
from target_service.tp.runner import TPExecutor, start_tp_runner
from target_service.tp.shapes import check_tp_shapes
from target_service.tp.worker import run_worker

__all__ = [
    "TPExecutor", "TPFailure", "TPShapeError", "TPWorkerDied", "check_tp_shapes",
    "run_worker", "start_tp_runner",
]
