"""The step loop: continuous batching over a target port and a draft port.

This is the only implementation of the DESIGN "One step" loop. The gateway runs it over the
gRPC clients; ``specgrove generate``, the tests and the benchmarks run it over the in-process
ports (``gateway.offline``). Each iteration *schedules* (releases cancelled jobs, admits waiting
jobs that fit the batch limit and the KV estimate, prefills them in one batch), then steps the
running batch: *propose* (``gateway.speculation``: one tree per job), *verify* (one batched
forward in the target), *postprocess* (append, stream, stop, release). Jobs join and leave only
between steps (Orca-style iteration-level scheduling, Yu et al. 2022).

Replicas: the target and draft ports are pools (``gateway.replicas``, ``gateway.draft_pool``);
a sequence is placed on one target replica at prefill (the one with the most free KV blocks) and
stays there; a step verifies on every replica concurrently. With one replica of each, the loop
is the single-service loop.

Failures: a draft replica failing -> its sequences register again on another one; every draft
replica failing -> root-only trees for a while (``gateway.speculation``). A target replica
failing (unavailable, or no longer serving) -> its sequences are recomputed on the other
replicas: queued again and re-prefilled with their prompt and output so far, so greedy and
seeded requests produce the same tokens; with no other replica serving they end with 503. KV
exhausted in a step -> the newest job of that replica is preempted (released, then re-prefilled
later with its history: recomputation, never corruption).

Observability: every job reports to the ``Observer`` (metrics; request spans when tracing is
on); admission batches and steps run inside its ``prefill`` / ``step`` spans, so the calls they
make (and over gRPC the services' server spans) are their children.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Sequence

from gateway.draft_pool import DraftPool
from gateway.job import Failed, Job, JobSpec
from gateway.metrics import GatewayMetrics
from gateway.observe import Observer
from gateway.replicas import Replica, TargetPool
from gateway.shadow import ShadowTrack
from gateway.speculation import Proposer, StepDraft
from gateway.text import TextCodec
from specgrove.errors import InvalidRequest, ResourceExhausted, ServiceError, Unavailable
from specgrove.ports import DraftPort, TargetPort
from specgrove.types import PrefillRequest, TargetInfo, VerifyItem, VerifyResult

log = logging.getLogger("specgrove.gateway")


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 32  # sequences per step
    max_waiting: int = 256  # queued requests beyond which new ones get 429
    draft_retry_s: float = 5.0  # how long to decode without the draft service after a failure
    adaptive_speculation: bool = True  # skip default speculation in steps where it would lose
    shadow_drafters: tuple[str, ...] = ()  # scored on every request besides its own ``shadow`` list


class Overloaded(RuntimeError):
    """The waiting queue is full (HTTP 429 / RESOURCE_EXHAUSTED)."""


def http_status(exc: ServiceError) -> int:
    """The HTTP status a service error gives the request it ends."""
    return {"INVALID_ARGUMENT": 400, "RESOURCE_EXHAUSTED": 429}.get(exc.code, 503)


def target_pool(target: TargetPort | TargetPool, info: TargetInfo) -> TargetPool:
    """A pool of one around a single target port (in-process callers), or the pool itself."""
    if isinstance(target, TargetPool):
        return target
    pool = TargetPool([target])
    pool.info, pool.totals[pool.replicas[0]] = info, info.total_blocks
    return pool


class Orchestrator:
    def __init__(self, cfg: SchedulerConfig, target: TargetPort | TargetPool, draft: DraftPort | DraftPool,
                 codec: TextCodec | None, info: TargetInfo, observer: Observer | None = None) -> None:
        self.cfg, self.codec, self.info = cfg, codec, info
        self.targets = target_pool(target, info)
        self.draft = draft if isinstance(draft, DraftPool) else DraftPool([draft])
        self.obs = observer or Observer(None, GatewayMetrics(), info.model)
        self.proposer = Proposer(self.draft, info, cfg.adaptive_speculation, cfg.draft_retry_s)
        self.proposer.on_shadow_step = self.obs.metrics.shadow_step
        eos = {codec.eos_token_id} if codec is not None and codec.eos_token_id is not None else set()
        self.stop_ids = frozenset(info.eos_token_ids) | eos
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._parked = asyncio.Event()  # set while the loop waits for work, nothing in flight
        self._task: asyncio.Task | None = None

    # --- API side ------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, trace_parent=None) -> Job:
        """Queue a request; ``trace_parent``: the caller's trace context (HTTP headers)."""
        if len(self.waiting) >= self.cfg.max_waiting:
            raise Overloaded(f"{len(self.waiting)} requests are already waiting")
        if spec.stop and self.codec is None:
            raise InvalidRequest("stop", "stop strings need a tokenizer")
        # Every request samples under a seed (its own or a fresh one, returned to the caller),
        # so that any request can be replayed exactly.
        spec = replace(spec, sampling=spec.sampling.seeded())
        job = Job(next(self._ids), spec, self.codec, self.stop_ids)
        if spec.shadow_budget.speculates:  # each shadow is a draft sequence of its own
            job.shadows = [ShadowTrack(name, next(self._ids), len(spec.prompt_ids))
                           for name in dict.fromkeys(spec.shadow + self.cfg.shadow_drafters)]
        self.obs.request_started(job, trace_parent)
        self.waiting.append(job)
        self._wake.set()
        return job

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="step-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # Whatever is left past the drain ends now: clients get an answer, spans are closed.
        for job in [*self.waiting, *self.running]:
            job.finish(Failed(503, "the gateway is shutting down"))
        self.waiting.clear()
        self.running = []

    @property
    def target_ok(self) -> bool:
        """Whether some target replica serves (``/health``)."""
        return self.targets.any_serving

    @property
    def idle(self) -> bool:
        """No request queued or running, and no call to a service in flight."""
        return self._parked.is_set() and not self.waiting

    async def wait_idle(self) -> None:
        while not self.idle:
            await asyncio.sleep(0.005)

    # --- the loop ------------------------------------------------------------------------------
    async def refresh_drafters(self) -> None:
        """Learn the draft service's drafters (which need target features, which is default)."""
        try:
            self.proposer.use_drafters(await self.draft.list_drafters())
        except ServiceError:
            return  # keep what is known; the draft service may be starting or down
        layers = self.proposer.drafter_layers
        for name in self.cfg.shadow_drafters:  # say why a --shadow-drafter stays silent
            if name not in layers:
                log.warning("shadow drafter %r is not loaded on the draft service: not scored", name)
            elif layers[name]:
                log.warning("shadow drafter %r needs target features (EAGLE): not shadowed", name)

    async def _loop(self) -> None:
        await self.refresh_drafters()
        while True:
            if not self.waiting and not self.running:
                self._wake.clear()
                self._parked.set()
                await self._wake.wait()
                self._parked.clear()
            try:
                await self._schedule()
                if self.running:
                    await self._step()
            except ServiceError as exc:  # a service failed where no replica logic applies
                log.error("service call failed: %s", exc)
                await self._fail_all(503, f"the target service is unavailable ({exc.code}: {exc})")
            except Exception:  # noqa: BLE001 -- a bug must not kill the loop for everyone
                log.exception("step failed")
                await self._fail_all(500, "internal error in the gateway step loop")

    async def _step(self) -> None:
        """One step of the running batch: propose -> verify -> postprocess."""
        jobs = list(self.running)
        with self.obs.step(jobs) as span:
            drafts = await self.proposer.propose(jobs)
            verified = await self._verify(jobs, drafts)
            if verified:
                done, done_drafts, results = (list(x) for x in zip(*verified))
                await self._postprocess(span, done, done_drafts, results)

    async def _verify(self, jobs: list[Job], drafts: list[StepDraft]
                      ) -> list[tuple[Job, StepDraft, VerifyResult]]:
        """One batched verify per target replica, concurrently: the jobs whose replica answered,
        with their results (in batch order). A replica's failure is handled here."""
        started = time.monotonic()
        pairs = {j.seq_id: (j, d) for j, d in zip(jobs, drafts)}
        calls = await self.targets.verify([VerifyItem(j.seq_id, d.tree) for j, d in zip(jobs, drafts)])
        verified = sorted(((*pairs[s], r) for c in calls if c.error is None for s, r in zip(c.seq_ids, c.results)),
                          key=lambda t: jobs.index(t[0]))
        if verified:
            self.proposer.observe(*zip(*verified), time.monotonic() - started)
        for call in calls:
            if call.error is not None:
                failed = [pairs[s][0] for s in call.seq_ids]  # in batch order
                if isinstance(call.error, ResourceExhausted):
                    await self._requeue([failed[-1]])  # that replica's newest job
                else:
                    await self._replica_failed(call.replica, call.error)
        return verified

    async def _postprocess(self, span, jobs: list[Job], drafts: list[StepDraft],
                           results: list[VerifyResult]) -> None:
        finished = []
        for job, draft, res in zip(jobs, drafts, results):
            # The request's own stats count what it emits: a stop inside the accepted path cuts
            # the step short (the gateway's counters keep the target's whole acceptance).
            kept = min(len(res.accepted_tokens), job.tokens_taken(res.new_tokens))
            job.stats.record(len(draft.tree) - 1, kept, len(jobs), draft.drafter)
            self.obs.step_item(span, job, draft.tree, draft.label, res,  # before the job may end
                               self._where(self.targets, job), self._where(self.draft, job))
            job.new_tokens += res.new_tokens
            job.add_features(res.features)
            if not job.add_tokens(res.new_tokens, len(res.accepted_tokens), res.logprobs) or job.cancelled:
                finished.append(job)
        self.obs.step_done(span, [d.tree for d in drafts], [d.label for d in drafts], results,
                           self.targets.free_blocks, self.targets.total_blocks)
        self.proposer.score_shadows(jobs)
        await self.proposer.flush_shadows([j for j in finished if j.done])  # not the cancelled
        await self._release(finished)

    @staticmethod
    def _where(pool: TargetPool | DraftPool, job: Job) -> str:
        replica = pool.replica_of(job.seq_id)
        return replica.address if replica is not None else ""

    # --- joining the batch ---------------------------------------------------------------------
    async def _schedule(self) -> None:
        await self._release([j for j in self.running if j.cancelled])
        await self._leave_unusable_replicas()
        placed = self._admissible()
        if placed:
            await self._prefill(placed)

    def _blocks_for(self, job: Job) -> int:
        # Prompt plus one step's worst-case tree: what a prefill and first verify need.
        need = len(job.history) + self.info.max_tree_nodes
        return -(-need // self.info.block_size)

    def _admissible(self) -> list[tuple[Job, Replica]]:
        """Take waiting jobs while the batch limit and the KV estimate allow, each placed on the
        target replica with the most free blocks left (``budgets`` counts this batch's too)."""
        batch: list[tuple[Job, Replica]] = []
        budgets = self.targets.budgets()
        while budgets and self.waiting and len(self.running) + len(batch) < self.cfg.max_batch:
            job = self.waiting[0]
            if job.cancelled:
                self.waiting.popleft()
                job.finish(Failed(499, "cancelled by the client"))
                continue
            # The most free blocks; on a tie the fewest sequences, then the least recently placed.
            replica = max(budgets, key=lambda r: (budgets[r], -len(r.sequences), -r.last_placed))
            if self._blocks_for(job) > budgets[replica] and (self.running or batch):
                break  # wait for running sequences to finish and free blocks
            self.waiting.popleft()
            budgets[replica] -= self._blocks_for(job)
            batch.append((job, replica))
        return batch

    async def _prefill(self, placed: list[tuple[Job, Replica]]) -> None:
        jobs = [j for j, _ in placed]
        groups: dict[Replica, list[PrefillRequest]] = {}
        for job, replica in placed:
            job.feature_layers = self.proposer.feature_layers(job)
            # A preempted job comes back with its output so far: the target counts it as output.
            groups.setdefault(replica, []).append(PrefillRequest(
                job.seq_id, tuple(job.history), job.spec.sampling, job.feature_layers, len(job.tokens)))
        with self.obs.prefill_span(jobs):
            calls = await self.targets.prefill(groups)
        by_id = {j.seq_id: j for j in jobs}
        for call in calls:
            group = [by_id[s] for s in call.seq_ids]
            if call.error is None:
                await self._started(group, call.results)
            else:
                await self._prefill_failed(call.replica, call.error, group)

    async def _prefill_failed(self, replica: Replica, exc: ServiceError, jobs: list[Job]) -> None:
        if isinstance(exc, ResourceExhausted) and self.running:
            self.waiting.extendleft(reversed(jobs))  # retry once sequences finish
        elif isinstance(exc, InvalidRequest) and len(jobs) > 1:
            # The target refused the batch as a whole (nothing changed there): one request it
            # alone can judge, e.g. a grammar that does not compile, must fail alone.
            for job in jobs:
                await self._prefill([(job, replica)])
        elif isinstance(exc, Unavailable) and self.targets.others_usable(replica):
            self.waiting.extendleft(reversed(jobs))  # placed again, on another replica
            await self._replica_failed(replica, exc)
        else:
            for job in jobs:
                job.finish(Failed(http_status(exc), str(exc)))
            if http_status(exc) == 503:
                await self._replica_failed(replica, exc)

    async def _started(self, jobs: list[Job], firsts) -> None:
        """Prefilled jobs: their first token, then the running batch (or the end already)."""
        for job, res in zip(jobs, firsts):
            job.draft_synced = False
            job.new_tokens = ()
            job.drop_features()
            job.add_features(res.features)
            if job.add_tokens((res.first_token,), 0, (res.first_logprob,) if res.first_logprob else ()):
                self.running.append(job)
            else:
                await self._release([job])

    # --- leaving the batch ---------------------------------------------------------------------
    async def _release(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        self.running = [j for j in self.running if j not in jobs]
        for j in jobs:
            if j.cancelled:
                j.finish(Failed(499, "cancelled by the client"))
            j.shadows_scored.set()
        await self.targets.release([j.seq_id for j in jobs])
        await self._release_drafts(jobs)

    async def _release_drafts(self, jobs: Sequence[Job], shadows: bool = True) -> None:
        """The jobs' draft sequences, and their shadows' unless ``shadows`` is False (a
        preempted job keeps its shadows: they do not depend on the target)."""
        ids = [j.seq_id for j in jobs if j.draft_synced]
        ids += [t.draft_id for j in jobs for t in j.shadows if t.synced] if shadows else []
        if not ids:
            return
        try:
            await self.draft.release(ids)
        except ServiceError:
            pass  # the draft service forgets everything when it restarts anyway

    async def _requeue(self, jobs: Sequence[Job], release: bool = True) -> None:
        """Queue running jobs for recomputation: a prefill of their history, wherever there is
        room then. ``release``: free their KV first (preemption); False: their replica failed
        (``TargetPool.forget`` keeps them as orphans there, freed if it rejoins)."""
        if release:
            log.info("KV cache full: preempting sequence(s) %s", [j.seq_id for j in jobs])
            await self.targets.release([j.seq_id for j in jobs])
        else:
            self.targets.forget([j.seq_id for j in jobs])
        self.running = [j for j in self.running if j not in jobs]
        await self._release_drafts(jobs, shadows=False)
        for job in jobs:
            job.seq_id = next(self._ids)  # a fresh id: the old one may still be cached elsewhere
        self.waiting.extendleft(reversed(jobs))

    async def _replica_failed(self, replica: Replica, exc: ServiceError) -> None:
        """A target replica failed: its running jobs move to the others, or end with 503 when
        none serves (or the failure is not one another replica can fix)."""
        self.targets.mark_down(replica)
        stranded = [j for j in self.running if self.targets.replica_of(j.seq_id) is replica]
        if isinstance(exc, Unavailable) and self.targets.others_usable(replica):
            await self._requeue(stranded, release=False)
            return
        log.error("target service failed: %s", exc)
        await self._fail(stranded, 503, f"the target service is unavailable ({exc.code}: {exc})")

    async def _leave_unusable_replicas(self) -> None:
        """Jobs on a replica the health watch saw stop serving (draining, dead, gone from DNS)
        move to the serving ones before they fail there."""
        def stranded_on(replica: Replica | None) -> bool:
            return replica is not None and not replica.usable and self.targets.others_usable(replica)

        stranded = [j for j in self.running if stranded_on(self.targets.replica_of(j.seq_id))]
        if stranded:
            await self._requeue(stranded, release=False)

    async def _fail_all(self, status: int, message: str) -> None:
        await self._fail(list(self.running), status, message)

    async def _fail(self, jobs: list[Job], status: int, message: str) -> None:
        self.running = [j for j in self.running if j not in jobs]
        for job in jobs:
            job.finish(Failed(status, message))
            job.shadows_scored.set()
        # A target that died forgot them; one that answers frees their blocks.
        await self.targets.release([j.seq_id for j in jobs])
        # The draft service outlives a target failure: without this its sequences would leak.
        await self._release_drafts(jobs)
        await asyncio.sleep(0.05)
