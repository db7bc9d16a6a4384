"""Every failure path releases the sequence in both services: KV blocks in the target and
sequences in the draft service are counted back to where they started.

Faults are injected by wrapping the real in-process ports (the services' own code runs); the
orchestrator under test is the one that serves users.
"""
from __future__ import annotations

import asyncio

from draft_service.local import LocalDraft
from gateway.offline import complete
from gateway.orchestrator import SchedulerConfig
from specgrove.errors import Unavailable
from specgrove.types import TreeBudget
from target_service.local import LocalTarget, TargetLimits
from tests.helpers import draft_engine, generate, request, target_engine

PROMPTS = [[5, 6, 7, 5, 6, 7, 5, 6], [9, 10, 11, 9, 10, 11], [20, 21, 22, 23], [3, 4, 3, 4, 3, 4],
           [30, 31, 30, 31], [40, 41, 42, 40, 41, 42]]
CHAIN = TreeBudget(branching=(1, 1, 1))


class FailingOnCall:
    """A port whose ``method`` raises ``Unavailable`` on its ``nth`` call (1-based); else the
    real port answers."""

    def __init__(self, port, method: str, nth: int) -> None:
        self.port, self.method, self.nth, self.calls = port, method, nth, 0

    def __getattr__(self, name):
        real = getattr(self.port, name)
        if name != self.method:
            return real

        async def call(*args, **kw):
            self.calls += 1
            if self.calls == self.nth:
                raise Unavailable(f"injected: {name} call {self.calls} timed out")
            return await real(*args, **kw)
        return call


def _ports(tiny_dirs):
    target = LocalTarget(target_engine(tiny_dirs["llama"]), "test", "float64", TargetLimits(64, 64))
    draft = LocalDraft(draft_engine(), target.engine.vocab_size)
    return target, draft


def test_a_target_failure_mid_flight_releases_every_draft_sequence(tiny_dirs):
    target, draft = _ports(tiny_dirs)
    base = target.engine.capacity().free_blocks
    specs = [request(p, 24, budget=CHAIN) for p in PROMPTS]
    outs = asyncio.run(complete(FailingOnCall(target, "verify", 3), draft, specs))
    assert {o.error.status for o in outs} == {503}
    assert draft.engine.num_sequences == 0  # the gateway told the draft service
    assert target.engine.num_sequences == 0 and target.engine.capacity().free_blocks == base


def test_a_draft_timeout_leaves_nothing_behind_and_speculation_resumes(tiny_dirs):
    target, draft = _ports(tiny_dirs)
    plain = generate(target_engine(tiny_dirs["llama"]), draft_engine(),
                     [request(p, 40) for p in PROMPTS])
    flaky = FailingOnCall(draft, "propose", 2)  # the draft answers late once, then is fine
    specs = [request(p, 40, budget=CHAIN) for p in PROMPTS]
    cfg = SchedulerConfig(max_waiting=1 << 20, draft_retry_s=0.0, adaptive_speculation=False)
    outs = asyncio.run(complete(target, flaky, specs, cfg=cfg))
    assert [o.token_ids for o in outs] == [p.token_ids for p in plain]
    assert flaky.calls > 3  # drafting resumed after the failure (before: "already exists")
    assert sum(o.stats.drafted_tokens for o in outs) > 0
    assert draft.engine.num_sequences == 0 and target.engine.num_sequences == 0
