"""Waiting for a condition in tests that drive real processes (``up``, killed children)."""
from __future__ import annotations

import time


def wait_until(predicate, timeout_s: float, what: str, every_s: float = 0.1):
    """``predicate()``'s first truthy value, polled every ``every_s``; TimeoutError(what) after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(what)
