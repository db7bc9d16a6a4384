"""The target service with ``tp=2``: same tokens as tp=1, and a dead rank takes it down, named."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import torch

from draft_service.server import DraftServer, DraftServerConfig
from gateway.offline import complete
from specgrove.clients import DraftClient, TargetClient
from specgrove.config import ModelRunConfig
from specgrove.errors import Unavailable
from specgrove.kv import KVCacheConfig
from specgrove.types import PrefillRequest, TreeBudget, VerifyItem
from specgrove.tree import TokenTree
from target_service.server import TargetServer, TargetServerConfig
from tests.grpc_harness import ServerLoop
from tests.helpers import draft_engine, generate, request, target_engine

PROMPTS = {1: (5, 6, 7, 8, 5, 6, 7, 8, 5), 2: (9, 10, 11), 3: (20, 21, 22, 23, 24, 20, 21)}


@pytest.fixture(scope="module")
def tp_stack(tiny_dirs):
    threads = torch.get_num_threads()  # tp=2 gives this process cores // 2 threads
    loop = ServerLoop()
    model = str(tiny_dirs["llama"])
    run = ModelRunConfig(model, "float64", "cpu", "torch", KVCacheConfig(4, 512))
    draft_run = ModelRunConfig("", "float64", "cpu", "torch", KVCacheConfig(4, 512))

    async def start():
        target = TargetServer(TargetServerConfig(run, port=0, grace_s=0, tp=2, tp_timeout_s=30))
        draft = DraftServer(DraftServerConfig(model, (("lookup", "ngram"), ("small", f"model:{tiny_dirs['draft']}")),
                                              "lookup", draft_run, port=0, grace_s=0))
        await target.start(), await draft.start()
        await target.wait_ready()
        await draft.wait_ready()
        return target, draft

    target, draft = loop.run(start())
    yield {"target": target, "draft": draft, "loop": loop}
    loop.run(draft.stop(0))
    if target.fatal is None:
        loop.run(target.stop(0))
    loop.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def plain(tiny_dirs):
    engine = target_engine(tiny_dirs["llama"])
    outs = generate(engine, draft_engine(), [request(p, 16) for p in PROMPTS.values()])
    return {s: o.token_ids for s, o in zip(PROMPTS, outs)}


def _addr(server) -> str:
    return f"127.0.0.1:{server.port}"


def test_tp2_service_matches_tp1_with_speculation(tp_stack, plain):
    async def body():
        async with TargetClient(_addr(tp_stack["target"]), 30) as t, DraftClient(_addr(tp_stack["draft"]), 30) as d:
            assert (await t.info()).tp_size == 2
            free = (await t.info()).free_blocks
            out = {}
            for drafter, budget in (("small", TreeBudget(branching=(2, 2))),
                                    ("lookup", TreeBudget(max_nodes=6, max_depth=4))):
                got = await complete(t, d, [request(p, 16, budget=budget, drafter=drafter)
                                            for p in PROMPTS.values()])
                out[drafter] = {s: o.token_ids for s, o in zip(PROMPTS, got)}
            assert (await t.info()).free_blocks == free
            return out

    out = asyncio.run(body())
    assert out["small"] == plain and out["lookup"] == plain


def test_killed_rank_takes_the_service_down_promptly(tp_stack):
    target = tp_stack["target"]
    runner = target.servicer.target.engine.runner
    (rank, pid), = runner.executor.worker_pids.items()

    async def body():
        async with TargetClient(_addr(target), 10) as t:
            first = (await t.prefill([PrefillRequest(900, (1, 2, 3))]))[0].first_token
            os.kill(pid, signal.SIGKILL)
            start = time.monotonic()
            with pytest.raises(Unavailable) as info:
                await t.verify([VerifyItem(900, TokenTree.root_only(first))])
            return info.value, time.monotonic() - start

    err, elapsed = asyncio.run(body())
    assert f"rank {rank}" in str(err) and elapsed < 5
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and target.fatal is None:
        time.sleep(0.05)
    assert target.fatal is not None  # the server is stopping: it never hangs on a dead rank
