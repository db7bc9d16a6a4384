"""The replica pools in process (``gateway.replicas``, ``gateway.draft_pool``): placement,
stickiness, a replica that fails or stops serving mid-generation, orphans released when it
rejoins, and ``dns:`` discovery. Tiny float64 engines behind the in-process ports, driven by
the orchestrator that serves users; ``tests/test_replicas.py`` does the same with processes
killed for real."""
from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner

from draft_service.local import LocalDraft
from gateway import discovery
from gateway.draft_pool import DraftPool
from gateway.offline import OFFLINE, run_all
from gateway.orchestrator import Orchestrator
from gateway.replicas import TargetPool
from specgrove.cli import main
from specgrove.errors import Unavailable
from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget
from target_service.local import LocalTarget, TargetLimits
from tests.helpers import draft_engine, request, target_engine

LIMITS = TargetLimits(max_num_seqs=64, max_tree_nodes=64)


class Faulty:
    """A port that behaves like ``inner`` until ``after`` calls of ``method``, then fails them
    (Unavailable, as a killed process) or only stops serving (as a draining one)."""

    def __init__(self, inner, method: str, after: int, mode: str = "dies") -> None:
        self.inner, self.method, self.after, self.mode = inner, method, after, mode
        self.calls, self.up = 0, True
        self.address = "faulty"

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name != self.method:
            return attr

        async def call(*args, **kw):
            self.calls += 1
            if self.calls > self.after:
                self.up = False
                if self.mode == "dies":
                    raise Unavailable("connection refused")
            return await attr(*args, **kw)
        return call

    @property
    def free_blocks(self):
        return self.inner.free_blocks

    async def serving(self) -> bool:
        return self.up

    async def close(self) -> None:
        pass


def _specs(n: int = 8) -> list:
    """Greedy and seeded requests, half speculating with the n-gram drafter."""
    specs = []
    for i in range(n):
        sampling = SamplingParams() if i % 2 == 0 else SamplingParams(temperature=0.9, seed=100 + i)
        budget = TreeBudget(branching=(2, 1)) if i % 4 < 2 else TreeBudget.off()
        specs.append(request([1 + i, 5, 9, 5, 9, 5, 9][: 3 + i % 4], 24, sampling, budget,
                             drafter="ngram" if budget.speculates else ""))
    return specs


async def _run(targets: list, drafts: list, specs):
    pool, draft_pool = TargetPool(targets), DraftPool(drafts)
    info = await pool.start()
    orch = Orchestrator(OFFLINE, pool, draft_pool, None, info)
    orch.start()
    try:
        outs = await run_all(orch, specs)
        await orch.wait_idle()
    finally:
        await orch.stop()
    assert [o.error for o in outs] == [None] * len(specs)
    return [o.token_ids for o in outs], pool, draft_pool


@pytest.fixture(scope="module")
def reference(tiny_dirs):
    target = LocalTarget(target_engine(tiny_dirs["llama"]), "m", "float64", LIMITS)
    draft = LocalDraft(draft_engine(), target.engine.vocab_size)
    return asyncio.run(_run([target], [draft], _specs()))[0]


def _targets(tiny_dirs, n: int) -> list[LocalTarget]:
    return [LocalTarget(target_engine(tiny_dirs["llama"]), "m", "float64", LIMITS) for _ in range(n)]


def _draft(targets) -> LocalDraft:
    return LocalDraft(draft_engine(), targets[0].engine.vocab_size)


def test_sequences_spread_over_replicas_with_unchanged_output(tiny_dirs, reference):
    targets = _targets(tiny_dirs, 2)
    tokens, pool, _ = asyncio.run(_run(targets, [_draft(targets)], _specs()))
    assert tokens == reference
    assert all(r.placed >= 2 for r in pool.replicas)  # the most free blocks: both get work
    assert [t.engine.num_sequences for t in targets] == [0, 0] and not pool.home


def test_one_at_a_time_requests_alternate_between_replicas(tiny_dirs):
    """Each request ends before the next arrives, so every placement is a tie on load: the least
    recently placed replica takes it, for targets and drafts alike."""
    targets = _targets(tiny_dirs, 2)
    drafts = [_draft(targets), _draft(targets)]
    specs = [s for s in _specs() if s.budget.speculates]  # these register with a drafter

    async def go():
        pool, draft_pool = TargetPool(targets), DraftPool(drafts)
        info = await pool.start()
        orch = Orchestrator(OFFLINE, pool, draft_pool, None, info)
        orch.start()
        try:
            for spec in specs:
                (out,) = await run_all(orch, [spec])
                assert out.error is None
                await orch.wait_idle()
        finally:
            await orch.stop()
        return pool, draft_pool

    pool, draft_pool = asyncio.run(go())
    assert [r.placed for r in pool.replicas] == [len(specs) // 2] * 2
    assert [r.placed for r in draft_pool.replicas] == [len(specs) // 2] * 2


@pytest.mark.parametrize("mode", ["dies", "stops serving"])
def test_a_failing_target_replica_hands_its_sequences_over(tiny_dirs, reference, mode):
    a, b = _targets(tiny_dirs, 2)
    faulty = Faulty(b, "verify", after=5, mode=mode)
    drafts = [_draft([a])]

    async def go():
        pool, draft_pool = TargetPool([a, faulty]), DraftPool(drafts)
        info = await pool.start()
        orch = Orchestrator(OFFLINE, pool, draft_pool, None, info)
        orch.start()

        async def health_watch():  # what the gateway's watch does over gRPC
            while True:
                await pool.poll()
                await asyncio.sleep(0.001)
        watch = asyncio.create_task(health_watch())
        try:
            outs = await run_all(orch, _specs())
            await orch.wait_idle()
        finally:
            watch.cancel()
            await orch.stop()
        faulty.up = True
        await pool.poll()  # it rejoins: what it still holds (a live replica) is released
        return outs, pool

    outs, pool = asyncio.run(go())
    assert [o.error for o in outs] == [None] * 8
    assert [o.token_ids for o in outs] == reference  # greedy and seeded: unchanged
    assert faulty.calls > 5 and pool.replicas[1].serving
    assert a.engine.num_sequences == 0 and b.engine.num_sequences == 0
    assert a.engine.capacity().free_blocks == a.engine.capacity().total_blocks
    assert b.engine.capacity().free_blocks == b.engine.capacity().total_blocks


def test_a_failing_draft_replica_hands_its_sequences_over(tiny_dirs, reference):
    targets = _targets(tiny_dirs, 1)
    good, bad = _draft(targets), _draft(targets)
    faulty = Faulty(bad, "propose", after=3)
    tokens, _, draft_pool = asyncio.run(_run(targets, [good, faulty], _specs()))
    assert tokens == reference
    assert faulty.calls > 3 and not draft_pool.replicas[1].serving
    assert draft_pool.replicas[0].placed > 0  # the lost sequences registered on the good one
    assert good.engine.num_sequences == 0


def test_every_draft_replica_failing_is_a_draft_failure(tiny_dirs, reference):
    """With no draft replica left, a call raises as a single draft service's would: the batch
    decodes without speculation, with the same tokens."""
    targets = _targets(tiny_dirs, 1)
    faulty = Faulty(_draft(targets), "propose", after=2)
    tokens, _, _ = asyncio.run(_run(targets, [faulty], _specs()))
    assert tokens == reference


def test_dns_names_resolve_to_replicas_and_are_followed():
    async def go():
        found = await discovery.resolve_all(["dns:localhost:5000", "127.0.0.9:7"])
        pool = DraftPool([])
        await discovery.refresh(pool, ["dns:localhost:5000"], lambda address, name: Faulty(None, "x", 0))
        added = [r.address for r in pool.replicas]
        pool.replicas[0].address = "10.9.9.9:5000"  # as if its pod had moved away
        await discovery.refresh(pool, ["dns:localhost:5000"], lambda address, name: Faulty(None, "x", 0))
        return found, added, pool

    found, added, pool = asyncio.run(go())
    assert found["127.0.0.1:5000"] == "localhost" and found["127.0.0.9:7"] is None
    assert "127.0.0.1:5000" in added
    assert pool.replicas[0].gone and not pool.replicas[-1].gone  # the vanished one drains
    assert asyncio.run(discovery.resolve("dns:no-such-host.invalid:1")) == []


@pytest.mark.parametrize("bad", ["nohostport", "dns:name", "host:port"])
def test_the_gateway_refuses_a_malformed_replica_address(bad):
    result = CliRunner().invoke(main, ["gateway", "--target", bad])
    assert result.exit_code == 2 and "HOST:PORT" in result.output
