"""Errors of a tensor-parallel target: a refused model shape, a broken group, a dead rank."""
from __future__ import annotations

import signal

from specgrove.service import ServiceDown


class TPShapeError(ValueError):
    """The model cannot be split over the requested number of ranks."""


class TPFailure(ServiceDown):
    """The tensor-parallel group is unusable (ranks out of step); the service must restart."""


class TPWorkerDied(TPFailure):
    """A worker rank's process exited."""

    def __init__(self, rank: int, exit_code: int) -> None:
        how = f"exited with code {exit_code}"
        if exit_code < 0:
            try:
                how += f" ({signal.Signals(-exit_code).name})"
            except ValueError:
                pass
        super().__init__(f"tensor-parallel rank {rank} {how}")
        self.rank = rank
        self.exit_code = exit_code
