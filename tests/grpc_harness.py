"""Real gRPC servers on loopback, run in a background event loop for the duration of a module."""
from __future__ import annotations

import asyncio
import threading


class ServerLoop:
    """An asyncio loop in a daemon thread that hosts servers for the duration of a test module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
