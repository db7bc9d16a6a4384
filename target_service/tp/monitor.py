"""Rank 0's watchdog thread: notices a dead worker at once and keeps idle workers listening.

Every ``poll_s`` it polls the spawned worker processes; the first one found dead is recorded
as the group's failure (the driver then ends the other workers, so no collective waits on them)
and the thread stops. While the service is idle it sends a heartbeat every ``heartbeat_s``, so
a worker waiting for its next message never reaches the group timeout, and a worker whose
rank 0 hangs or dies stops waiting after that timeout at the latest.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from target_service.tp.workers import WorkerProcesses

if TYPE_CHECKING:
    from target_service.tp.driver import Driver


class Monitor(threading.Thread):
    def __init__(
        self, driver: "Driver", workers: WorkerProcesses | None, heartbeat_s: float,
        poll_s: float = 0.05,
    ) -> None:
        super().__init__(name="tp-monitor", daemon=True)
        self._driver = driver
        self._workers = workers
        self._heartbeat_s = heartbeat_s
        self._poll_s = poll_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._poll_s):
            dead = self._workers.first_dead() if self._workers is not None else None
            if dead is not None:
                self._driver.fail(dead)
                return
            if self._driver.failure is not None:
                return
            self._driver.heartbeat_if_idle(self._heartbeat_s)

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
