"""Worker processes that rank 0 starts itself, one per rank 1 .. N-1 (instead of torchrun).

Each runs ``python -m target_service.tp`` with torchrun's environment, so the worker code
is the same either way. Workers inherit rank 0's stdout/stderr (their errors land in the
service's log), get an equal share of this machine's cores as intra-op threads (more would
make the ranks' thread pools fight over the cores: measured 5-25x slower steps on 2 cores), and
exit by themselves when rank 0 goes away.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from specgrove.cpu_threads import thread_share
from target_service.tp.env import worker_environ
from target_service.tp.errors import TPWorkerDied
from target_service.tp.spec import ShardSpec

PARENT_ENV = "SPECGROVE_TP_PARENT_PID"  # a worker exits when this process is no longer its parent


class WorkerProcesses:
    def __init__(self, procs: dict[int, subprocess.Popen]) -> None:
        self._procs = procs  # rank -> process

    @staticmethod
    def spawn(spec: ShardSpec, world_size: int, port: int) -> "WorkerProcesses":
        threads = str(thread_share(world_size))
        procs = {}
        for rank in range(1, world_size):
            env = {**os.environ, **worker_environ(rank, world_size, port),
                   PARENT_ENV: str(os.getpid()), "OMP_NUM_THREADS": threads}
            procs[rank] = subprocess.Popen(
                [sys.executable, "-m", "target_service.tp", *spec.argv()],
                env=env, stdin=subprocess.DEVNULL,
            )
        return WorkerProcesses(procs)

    @property
    def pids(self) -> dict[int, int]:
        return {rank: p.pid for rank, p in self._procs.items()}

    def first_dead(self) -> TPWorkerDied | None:
        """The lowest rank whose process has exited, if any."""
        for rank, proc in self._procs.items():
            code = proc.poll()
            if code is not None:
                return TPWorkerDied(rank, code)
        return None

    def wait(self, timeout_s: float) -> None:
        """Wait for every worker to exit (after a shutdown message); kill what is left."""
        deadline = time.monotonic() + timeout_s
        for proc in self._procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def terminate(self, grace_s: float = 5.0) -> None:
        """SIGTERM every live worker, SIGKILL those still alive after ``grace_s``."""
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.terminate()
        self.wait(grace_s)
