"""Real target/draft gRPC servers on loopback, run in a background event loop, and a small
test-side step loop (Prefill -> Propose -> Verify -> Release) that drives them."""
from __future__ import annotations

import asyncio
import threading
from typing import Sequence

from specgrove.clients import DraftClient, TargetClient
from specgrove.types import PrefillRequest, ProposeRequest, SamplingParams, TreeBudget, VerifyItem


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


async def step_loop(
    target: TargetClient, draft: DraftClient, prompts: dict[int, Sequence[int]], max_tokens: int,
    budget: TreeBudget, drafter: str = "", sampling: SamplingParams = SamplingParams(),
    on_step=None,
) -> dict[int, list[int]]:
    """Greedy/sampled generation of a fixed batch over gRPC; returns tokens per sequence."""
    firsts = await target.prefill([PrefillRequest(s, tuple(p), sampling) for s, p in prompts.items()])
    out = {r.seq_id: [r.first_token] for r in firsts}
    await draft.prefill([(s, list(prompts[s]) + out[s]) for s in prompts])
    new = {s: () for s in prompts}
    running = [s for s in prompts if len(out[s]) < max_tokens]
    step = 0
    while running:
        if on_step is not None:
            await on_step(step, running)
        props = await draft.propose([ProposeRequest(s, new[s], budget, drafter) for s in running])
        results = await target.verify([VerifyItem(p.seq_id, p.tree) for p in props])
        for res in results:
            out[res.seq_id].extend(res.new_tokens)
            new[res.seq_id] = res.new_tokens
        done = [s for s in running if len(out[s]) >= max_tokens]
        if done:
            await target.release(done)
            await draft.release(done)
        running = [s for s in running if s not in done]
        step += 1
    return {s: toks[:max_tokens] for s, toks in out.items()}
