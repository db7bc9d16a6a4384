"""Run a list of requests to completion through the step loop, outside any server.

``specgrove generate``, the tests and the benchmarks use this over the in-process ports
(``target_service.local.LocalTarget``, ``draft_service.local.LocalDraft``) -- or over the gRPC
clients -- so that what they exercise is the orchestrator that serves users.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Sequence

from gateway.job import Delta, Failed, Finished, Job, JobSpec, JobStats
from gateway.metrics import GatewayMetrics
from gateway.observe import Observer
from gateway.orchestrator import Orchestrator, SchedulerConfig
from gateway.text import TextCodec
from specgrove.ports import DraftPort, TargetPort
from specgrove.types import TokenLogprob

# Offline callers submit everything at once: no queue limit.
OFFLINE = SchedulerConfig(max_waiting=1 << 30)


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    stats: JobStats = field(default_factory=JobStats)
    error: Failed | None = None
    job: Job | None = field(default=None, repr=False)
    logprobs: list[TokenLogprob] = field(default_factory=list, repr=False)  # when asked for


async def collect(job: Job) -> Completion:
    """Drain a job's events until it ends."""
    text: list[str] = []
    logprobs: list[TokenLogprob] = []
    while True:
        ev = await job.events.get()
        if isinstance(ev, Delta):
            text.append(ev.text)
            logprobs += ev.logprobs
        elif isinstance(ev, Finished):
            return Completion(list(job.tokens), "".join(text), ev.reason, job.stats, job=job, logprobs=logprobs)
        else:
            return Completion(list(job.tokens), "".join(text), "error", job.stats, ev, job, logprobs)


async def run_all(orch: Orchestrator, specs: Sequence[JobSpec]) -> list[Completion]:
    jobs = [orch.submit(s) for s in specs]
    return list(await asyncio.gather(*(collect(j) for j in jobs)))


async def complete(target: TargetPort, draft: DraftPort, specs: Sequence[JobSpec],
                   codec: TextCodec | None = None, cfg: SchedulerConfig = OFFLINE,
                   metrics: GatewayMetrics | None = None) -> list[Completion]:
    """Start an orchestrator over the two ports, run ``specs``, stop it. ``metrics``: where
    the loop's metrics go (benchmarks read step times there)."""
    info = await target.info()
    observer = Observer(None, metrics or GatewayMetrics(), info.model)
    orch = Orchestrator(cfg, target, draft, codec, info, observer)
    orch.start()
    try:
        outs = await run_all(orch, specs)
        await orch.wait_idle()  # the last releases reach the services before the loop stops
        return outs
    finally:
        await orch.stop()


def generate(target: TargetPort, draft: DraftPort, specs: Sequence[JobSpec],
             codec: TextCodec | None = None, cfg: SchedulerConfig = OFFLINE) -> list[Completion]:
    """``complete`` for synchronous callers (a fresh event loop)."""
    return asyncio.run(complete(target, draft, specs, codec, cfg))
