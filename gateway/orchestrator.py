"""The gateway's step loop: continuous batching over the draft / target services.

Each iteration: admit waiting jobs that fit (batch limit, KV blocks) and prefill them in both
services; one batched ``Propose`` for every running sequence; one batched ``Verify``; stream the
new tokens; release finished and cancelled sequences in both services. Jobs join and leave only
between steps (Orca-style iteration-level scheduling, Yu et al. 2022).

Failures: the draft service down or slow -> root-only trees (plain decoding) until it answers
again, then running sequences are re-registered with their full history. The target down ->
every running job ends with 503 and the loop waits for new work. KV exhausted in a step -> the
newest job is preempted (released, then re-prefilled later with its history).

Observability: every job reports to the ``Observer`` (metrics; request spans when tracing is
on); admission batches and steps run inside its ``prefill`` / ``step`` spans, so the gRPC calls
they make, and the draft / target server spans behind them, are their children.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, replace

import grpc

from gateway.controller import SpeculationController
from gateway.job import Failed, Job, JobSpec
from gateway.metrics import GatewayMetrics
from gateway.observe import Observer
from gateway.text import TextCodec
from specgrove.clients import DraftClient, TargetClient
from specgrove.speculate import clamp_budget
from specgrove.tree import TokenTree, static_tree_size
from specgrove.types import PrefillRequest, ProposeRequest, TargetInfo, TreeBudget, VerifyItem

log = logging.getLogger("specgrove.gateway")


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 32  # sequences per step
    max_waiting: int = 256  # queued requests beyond which new ones get 429
    draft_retry_s: float = 5.0  # how long to decode without the draft service after a failure
    adaptive_speculation: bool = True  # skip default speculation in steps where it would lose


class Overloaded(RuntimeError):
    """The waiting queue is full (HTTP 429 / RESOURCE_EXHAUSTED)."""


class Orchestrator:
    def __init__(self, cfg: SchedulerConfig, target: TargetClient, draft: DraftClient,
                 codec: TextCodec, info: TargetInfo, observer: Observer | None = None) -> None:
        self.cfg, self.target, self.draft, self.codec, self.info = cfg, target, draft, codec, info
        self.obs = observer or Observer(None, GatewayMetrics(), info.model, info.total_blocks)
        self.stop_ids = frozenset(info.eos_token_ids) | (
            {codec.eos_token_id} if codec.eos_token_id is not None else set())
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.free_blocks = info.free_blocks
        self.controller = SpeculationController()
        self.draft_down_until = 0.0
        self.target_ok = True
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # --- API side ------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, trace_parent=None) -> Job:
        """Queue a request; ``trace_parent``: the caller's trace context (HTTP headers)."""
        if len(self.waiting) >= self.cfg.max_waiting:
            raise Overloaded(f"{len(self.waiting)} requests are already waiting")
        job = Job(next(self._ids), spec, self.codec, self.stop_ids)
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
    def idle(self) -> bool:
        return not self.waiting and not self.running

    # --- the loop ------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            if self.idle:
                self._wake.clear()
                await self._wake.wait()
            try:
                await self._release_cancelled()
                await self._admit()
                if self.running:
                    await self._step()
            except grpc.aio.AioRpcError as exc:
                await self._target_failed(exc)
            except Exception:  # noqa: BLE001 -- a bug must not kill the loop for everyone
                log.exception("step failed")
                await self._fail_all(500, "internal error in the gateway step loop")

    def _blocks_for(self, job: Job) -> int:
        # Prompt plus one step's worst-case tree: what a prefill and first verify need.
        need = len(job.history) + self.info.max_tree_nodes
        return -(-need // self.info.block_size)

    async def _admit(self) -> None:
        batch: list[Job] = []
        budget = self.free_blocks
        while self.waiting and len(self.running) + len(batch) < self.cfg.max_batch:
            job = self.waiting[0]
            if job.cancelled:
                self.waiting.popleft()
                job.finish(Failed(499, "cancelled by the client"))
                continue
            if self._blocks_for(job) > budget and (self.running or batch):
                break  # wait for running sequences to finish and free blocks
            self.waiting.popleft()
            budget -= self._blocks_for(job)
            batch.append(job)
        if batch:
            await self._prefill(batch)

    async def _prefill(self, jobs: list[Job]) -> None:
        reqs = [PrefillRequest(j.seq_id, tuple(j.history), j.spec.sampling) for j in jobs]
        try:
            with self.obs.prefill_span(jobs):
                firsts = await self.target.prefill(reqs)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and self.running:
                self.waiting.extendleft(reversed(jobs))  # retry once sequences finish
                return
            status = {grpc.StatusCode.INVALID_ARGUMENT: 400,
                      grpc.StatusCode.RESOURCE_EXHAUSTED: 429}.get(exc.code(), 503)
            for j in jobs:
                j.finish(Failed(status, exc.details() or exc.code().name))
            if status == 503:
                raise
            return
        self.target_ok = True
        for job, res in zip(jobs, firsts):
            job.draft_synced = False
            job.new_tokens = ()
            if job.add_tokens((res.first_token,), 0):
                self.running.append(job)
            else:
                await self._release([job])
        self.free_blocks = (await self.target.info()).free_blocks

    async def _step(self) -> None:
        jobs = list(self.running)
        with self.obs.step(jobs) as span:
            trees, names = await self._propose(jobs)
            started = time.monotonic()
            try:
                results = await self.target.verify([VerifyItem(j.seq_id, t) for j, t in zip(jobs, trees)])
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                await self._preempt(jobs[-1])
                return
            self.target_ok = True
            self._observe(time.monotonic() - started, jobs, trees, names, results)
            finished = []
            for job, tree, name, res in zip(jobs, trees, names, results):
                st = job.stats
                st.steps += 1
                st.drafted_tokens += len(tree) - 1
                st.accepted_tokens += len(res.accepted_tokens)
                st.max_batch_size = max(st.max_batch_size, len(jobs))
                if len(tree) > 1 or not st.effective_drafter:
                    st.effective_drafter = name  # the drafter of its last speculative step
                self.obs.step_item(span, job, tree, name, res)  # before add_tokens may end the job
                job.new_tokens = res.new_tokens
                if not job.add_tokens(res.new_tokens, len(res.accepted_tokens)) or job.cancelled:
                    finished.append(job)
            self.obs.step_done(span, trees, names, results, self.target.free_blocks)
            await self._release(finished)

    async def _propose(self, jobs: list[Job]) -> tuple[list[TokenTree], list[str]]:
        """Trees from the draft service, or root-only trees while it is unavailable."""
        root_only = [TokenTree.root_only(j.tokens[-1]) for j in jobs]
        budgets = {j.seq_id: self._budget(j) for j in jobs if j.spec.budget.depth > 0}
        spec = self._speculating(jobs, budgets)
        if not spec or time.monotonic() < self.draft_down_until:
            down = time.monotonic() < self.draft_down_until
            return root_only, ["none" if j.spec.budget.depth == 0 else
                               "none (draft unavailable)" if down else "none (adaptive)" for j in jobs]
        started = time.monotonic()
        try:
            unsynced = [j for j in spec if not j.draft_synced]
            if unsynced:
                await self.draft.prefill([(j.seq_id, j.history) for j in unsynced])
                for j in unsynced:
                    j.draft_synced, j.new_tokens = True, ()
            props = await self.draft.propose(
                [ProposeRequest(j.seq_id, j.new_tokens, budgets[j.seq_id], j.spec.drafter) for j in spec])
        except grpc.aio.AioRpcError as exc:
            log.warning("draft service failed (%s): decoding without speculation for %.0fs",
                        exc.code().name, self.cfg.draft_retry_s)
            self.draft_down_until = time.monotonic() + self.cfg.draft_retry_s
            for j in jobs:
                j.draft_synced = False
            return root_only, ["none (draft unavailable)"] * len(jobs)
        self.controller.observe_draft(time.monotonic() - started)
        by_seq = {p.seq_id: p for p in props}
        trees = [by_seq[j.seq_id].tree if j.seq_id in by_seq else t for j, t in zip(jobs, root_only)]
        names = [by_seq[j.seq_id].drafter if j.seq_id in by_seq else
                 "none" if j.spec.budget.depth == 0 else "none (adaptive)" for j in jobs]
        return trees, names

    def _speculating(self, jobs: list[Job], budgets: dict[int, TreeBudget]) -> list[Job]:
        """The jobs that draft this step: explicit settings always, defaults if it pays."""
        spec = [j for j in jobs if j.seq_id in budgets]
        auto = [j for j in spec if j.spec.adaptive]
        if not auto or not self.cfg.adaptive_speculation:
            return spec
        nodes = len(jobs) - len(spec) + sum(self._max_nodes(budgets[j.seq_id]) for j in spec)
        drafters = sorted({j.spec.drafter for j in auto})
        if self.controller.should_speculate(len(jobs), nodes, drafters):
            return spec
        return [j for j in spec if not j.spec.adaptive]

    @staticmethod
    def _max_nodes(budget: TreeBudget) -> int:
        return static_tree_size(budget.branching) if budget.is_static else budget.max_nodes

    def _observe(self, seconds: float, jobs: list[Job], trees: list[TokenTree], names: list[str],
                 results) -> None:
        """Feed the controller: verify time by total nodes; accepted tokens per drafted job
        (a drafter that found nothing counts as 0, so gains are not overestimated)."""
        self.controller.observe_verify(sum(len(t) for t in trees), seconds)
        for job, name, res in zip(jobs, names, results):
            if job.spec.adaptive and not name.startswith("none"):
                self.controller.observe_accepted(job.spec.drafter, len(res.accepted_tokens))

    def _budget(self, job: Job) -> TreeBudget:
        """The job's budget clamped to its remaining tokens, the context and the node limit."""
        committed = len(job.history) - 1  # the last token is pending, not yet in the target's KV
        budget = clamp_budget(job.spec.budget, job.spec.max_tokens - len(job.tokens),
                              self.info.max_model_len - committed)
        if not budget.is_static and budget.max_nodes > self.info.max_tree_nodes:
            budget = replace(budget, max_nodes=self.info.max_tree_nodes)
        return budget

    # --- leaving the batch ---------------------------------------------------------------------
    async def _release_cancelled(self) -> None:
        gone = [j for j in self.running if j.cancelled]
        if gone:
            await self._release(gone)

    async def _release(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        ids = [j.seq_id for j in jobs]
        self.running = [j for j in self.running if j not in jobs]
        for j in jobs:
            if j.cancelled:
                j.finish(Failed(499, "cancelled by the client"))
        self.free_blocks = await self.target.release(ids)
        try:
            await self.draft.release([j.seq_id for j in jobs if j.draft_synced])
        except grpc.aio.AioRpcError:
            pass  # the draft service forgets everything when it restarts anyway

    async def _preempt(self, job: Job) -> None:
        """Free the newest job's KV and queue it for recomputation (prefill of its history)."""
        log.info("KV cache full: preempting sequence %d", job.seq_id)
        self.running.remove(job)
        self.free_blocks = await self.target.release([job.seq_id])
        if job.draft_synced:
            await self.draft.release([job.seq_id])
        job.seq_id = next(self._ids)  # a fresh id: the old one may still be cached elsewhere
        self.waiting.appendleft(job)

    async def _target_failed(self, exc: grpc.aio.AioRpcError) -> None:
        log.error("target service failed: %s %s", exc.code().name, exc.details())
        self.target_ok = False
        await self._fail_all(503, f"the target service is unavailable ({exc.code().name})")

    async def _fail_all(self, status: int, message: str) -> None:
        jobs, self.running = self.running, []
        for job in jobs:
            job.finish(Failed(status, message))
        try:
            self.free_blocks = await self.target.release([j.seq_id for j in jobs])
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.05)
