"""One worker thread that runs every call into an engine, in order.

The engines are not thread-safe, and the event loop that serves RPCs (or runs the gateway's
step loop in process) must stay free while a forward pass runs. The gRPC servicers run engine work
through one of these; the in-process ports default to ``CallerThread``.
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


class CallerThread:
    """Runs engine calls on the caller's own thread: for in-process use (``specgrove generate``,
    distillation, tests, benchmarks), where nothing else needs the event loop during a forward.

    Why not a worker thread there: once the main thread has run OpenMP work (loading a model
    does), bfloat16 oneDNN ops issued from another thread run up to 3x slower on this project's
    CPU (verify 31 -> 48 ms per step for SmolLM2-135M). The services load and run their models
    on their engine thread alone, so they do not pay this.
    """

    async def run(self, fn: Callable, *args):
        return fn(*args)

    def shutdown(self) -> None:
        pass
