"""One worker thread that runs every call into an engine, in order.

The engines are not thread-safe, and the event loop that serves RPCs (or runs the gateway's
step loop in process) must stay free while a forward pass runs. Both the gRPC servicers and the
in-process ports run engine work through one of these.
"""
from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Callable


class EngineThread:
    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable, *args):
        # run_in_executor does not carry contextvars; the copy carries the current span and
        # the bound tracer, so engine spans nest under the call that asked for the work.
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._pool, ctx.run, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
