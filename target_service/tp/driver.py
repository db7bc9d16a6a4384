"""Rank 0's side of the group: one lock around every step, and a failure that sticks.

A step is a message broadcast to the workers plus rank 0's own part of the same work; they run
under one lock (the monitor's heartbeats take it too), so all ranks see the same sequence of
collectives. Any error inside a step leaves the ranks out of step, so it is fatal: the driver
names the cause (a worker found dead within ``DIAGNOSE_S``, else rank 0's own error), ends the
workers, and every later step raises the same :class:`TPFailure` at once.

Why a blocked collective cannot hang the service: on CPU (gloo) a dead peer's sockets close
and the pending collective raises immediately; a peer that is alive but stuck runs into the
group timeout. On GPUs NCCL does not notice a dead peer, so on a failure the driver also
aborts the communicators (``ProcessGroup.abort``), and torch's NCCL watchdog tears the process
down at the group timeout should anything still wait.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist

from specgrove.modeling.parallel import TPGroup
from target_service.tp import protocol
from target_service.tp.errors import TPFailure
from target_service.tp.monitor import Monitor
from target_service.tp.workers import WorkerProcesses

log = logging.getLogger("specgrove.target.tp")

DIAGNOSE_S = 2.0  # how long a failed step waits for a dead worker to show up
SHUTDOWN_S = 10.0  # how long workers get to exit after the shutdown message


class Driver:
    def __init__(
        self, group: TPGroup, device: torch.device, workers: WorkerProcesses | None,
        timeout_s: float,
    ) -> None:
        self.group = group
        self.device = device
        self.workers = workers
        self._lock = threading.Lock()  # one step at a time
        self._state = threading.Lock()  # guards _failure
        self._failure: TPFailure | None = None
        self._last_sent = time.monotonic()
        self._closed = False
        self._ready = False  # heartbeats only once every rank waits for messages
        self._monitor = Monitor(self, workers, heartbeat_s=min(5.0, timeout_s / 4))
        self._monitor.start()

    @property
    def failure(self) -> TPFailure | None:
        return self._failure

    @contextmanager
    def step(self, message: protocol.Message | None = None) -> Iterator[None]:
        """Broadcast ``message`` (if any), then run the caller's part; any error is fatal."""
        with self._lock:
            if self._closed:
                raise TPFailure("the tensor-parallel runner is closed")
            if self._failure is not None:
                raise self._failure.with_traceback(None)
            try:
                if message is not None:
                    protocol.send(message, self.group.group)
                yield
            except BaseException as exc:
                failure = self._diagnose(exc)
                if isinstance(exc, Exception):
                    raise failure from exc
                raise
            finally:
                self._last_sent = time.monotonic()

    def handshake(self) -> None:
        """Wait until every rank has loaded its shard."""
        with self.step():
            protocol.handshake(self.group.group)
        self._ready = True

    def heartbeat_if_idle(self, interval_s: float) -> None:
        """Called by the monitor: a no-op message when no step ran for ``interval_s``."""
        if not self._ready or self._closed or time.monotonic() - self._last_sent < interval_s:
            return
        if not self._lock.acquire(blocking=False):  # a step is running: the workers are busy
            return
        try:
            if self._failure is None:
                protocol.send(protocol.signal(protocol.Kind.HEARTBEAT), self.group.group)
        except Exception as exc:
            self._diagnose(exc)
        finally:
            self._last_sent = time.monotonic()
            self._lock.release()

    def fail(self, failure: TPFailure) -> None:
        """Record the group's failure (the first one wins) and end the workers."""
        with self._state:
            if self._failure is not None:
                return
            self._failure = failure
            if self._closed:
                return
        log.error("%s; the tensor-parallel group is down", failure)
        if self.workers is not None:
            self.workers.terminate()
        if self.device.type == "cuda":
            self._abort_nccl()

    def close(self) -> None:
        """Send the shutdown message, wait for the workers, leave the process group."""
        if self._closed:
            return
        self._monitor.stop()
        with self._lock:
            with self._state:
                self._closed = True
                healthy = self._failure is None
            if healthy:
                try:
                    protocol.send(protocol.signal(protocol.Kind.SHUTDOWN), self.group.group)
                except Exception as exc:
                    log.warning("tensor-parallel shutdown message failed: %s", exc)
            if self.workers is not None:
                self.workers.wait(SHUTDOWN_S)
            dist.destroy_process_group()

    def _diagnose(self, exc: BaseException) -> TPFailure:
        """Name the cause of a failed step: a dead worker if one shows up, else rank 0's error."""
        deadline = time.monotonic() + DIAGNOSE_S
        while self._failure is None and self.workers is not None and time.monotonic() < deadline:
            dead = self.workers.first_dead()
            if dead is not None:
                self.fail(dead)
                break
            time.sleep(0.02)
        if self._failure is None:
            self.fail(TPFailure(
                f"tensor-parallel step failed on rank 0 ({exc!r}); the ranks are out of step"
            ))
        return self._failure

    def _abort_nccl(self) -> None:
        """Unblock a NCCL collective that waits on a dead peer (gloo raises by itself)."""
        try:
            self.group.group.abort()
        except RuntimeError as exc:
            log.warning("aborting the tensor-parallel communicators failed: %s", exc)
