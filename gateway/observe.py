"""What the gateway reports about its work: trace spans and Prometheus metrics.

The step loop and each job call an :class:`Observer`; metrics are always kept, spans only when
tracing is on (``tracer`` is None otherwise, and every span method returns at once).

Spans:

* a request span per generation, ``"{gen_ai.operation.name} {model}"``, with the GenAI
  semantic-convention attributes (``gen_ai.request.*``, ``gen_ai.response.*``,
  ``gen_ai.usage.*``) and the request's ``specgrove.*`` stats. Its parent is the caller's
  context: the W3C ``traceparent`` of the HTTP request, or the gateway's gRPC server span. It
  records an event ``specgrove.first_token`` and one event ``specgrove.step`` per step with the
  tokens that step accepted for it;
* a ``prefill`` span per admission batch and a ``step`` span per step. A step serves many
  requests: its parent is the request span of the batch's oldest job (the oldest sampled one
  under ratio sampling), so a request served alone has one trace holding everything, and it
  links to the request span of every job it served. The gRPC client spans of its calls are
  its children, and under them the draft's and target's server spans, in their own processes.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator, Sequence

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from gateway.job import Failed, Finished, Job
from gateway.metrics import GatewayMetrics
from specgrove.tree import TokenTree
from specgrove.types import VerifyResult

_NULL = contextlib.nullcontext()
log = logging.getLogger("specgrove.gateway.requests")


def finish_reason(event: Finished | Failed) -> str:
    if isinstance(event, Finished):
        return event.reason
    return "abort" if event.status == 499 else "error"


class Observer:
    def __init__(self, tracer: trace.Tracer | None, metrics: GatewayMetrics, model: str,
                 log_requests: bool = False) -> None:
        self.tracer, self.metrics, self.model = tracer, metrics, model
        self.log_requests = log_requests  # one INFO line per finished request
        self.steps = 0  # steps run by this gateway: the step span's specgrove.step

    # --- one request -------------------------------------------------------------------------
    def request_started(self, job: Job, parent=None) -> None:
        """Attach to a new job; with tracing on, open its request span.

        ``parent``: the context extracted from an HTTP request's headers (the span is then the
        server side of that request); None: the current context (the gRPC server span).
        """
        job.hooks = self
        self.metrics.prompt_tokens.inc(len(job.spec.prompt_ids))
        if self.tracer is None:
            return
        spec, sp = job.spec, job.spec.sampling
        attrs = {"gen_ai.operation.name": spec.operation, "gen_ai.request.model": self.model,
                 "gen_ai.request.max_tokens": spec.max_tokens,
                 "gen_ai.request.temperature": sp.temperature, "gen_ai.request.top_p": sp.top_p,
                 "specgrove.seq_id": job.seq_id, "specgrove.drafter.requested": spec.drafter,
                 "specgrove.tree.budget_depth": spec.budget.depth}
        if sp.top_k:
            attrs["gen_ai.request.top_k"] = sp.top_k
        if sp.seed is not None:
            attrs["gen_ai.request.seed"] = sp.seed
        if spec.stop:
            attrs["gen_ai.request.stop_sequences"] = list(spec.stop)
        if spec.request_id:
            attrs["gen_ai.response.id"] = spec.request_id
        kind = SpanKind.INTERNAL if parent is None else SpanKind.SERVER
        job.span = self.tracer.start_span(f"{spec.operation} {self.model}", context=parent,
                                          kind=kind, attributes=attrs)

    def tokens_added(self, job: Job, count: int, gap_s: float) -> None:
        first = len(job.tokens) == count  # every token the job has just arrived
        self.metrics.tokens_added(count, gap_s, first)
        if first and job.span is not None:
            job.span.add_event("specgrove.first_token", {"specgrove.ttft_s": gap_s})

    def finished(self, job: Job, event: Finished | Failed) -> None:
        reason = finish_reason(event)
        self.metrics.finished.labels(reason).inc()
        if isinstance(event, Finished):
            self.metrics.e2e.observe(time.monotonic() - job.created)
        if self.log_requests:
            self._log_line(job, reason, event)
        if job.span is None:
            return
        st, n_out = job.stats, len(job.tokens)
        attrs = {"gen_ai.response.model": self.model, "gen_ai.response.finish_reasons": [reason],
                 "gen_ai.usage.input_tokens": len(job.spec.prompt_ids),
                 "gen_ai.usage.output_tokens": n_out,
                 "specgrove.steps": st.steps, "specgrove.drafted_tokens": st.drafted_tokens,
                 "specgrove.accepted_tokens": st.accepted_tokens,
                 "specgrove.mean_acceptance_length": st.mean_acceptance_length,
                 "specgrove.max_batch_size": st.max_batch_size,
                 "specgrove.drafter": st.drafter or "none"}
        if job.first_token_at is not None:
            attrs["specgrove.ttft_s"] = job.first_token_at - job.created
            if n_out > 1:  # per token, not per chunk: decode time over the tokens after the first
                attrs["specgrove.tpot_s"] = (job.last_token_at - job.first_token_at) / (n_out - 1)
        job.span.set_attributes(attrs)
        if isinstance(event, Failed):
            job.span.set_attribute("error.type", str(event.status))
            job.span.set_status(Status(StatusCode.ERROR, event.message))
        job.span.end()

    @staticmethod
    def _log_line(job: Job, reason: str, event: Finished | Failed) -> None:
        st = job.stats
        ttft = f"{job.first_token_at - job.created:.3f}s" if job.first_token_at is not None else "-"
        error = f" ({event.status}: {event.message})" if isinstance(event, Failed) else ""
        log.info("request %s %s%s: prompt %d tokens, output %d tokens, %d steps, tau %.2f, drafter %s, "
                 "ttft %s, %.2fs", job.spec.request_id or job.seq_id, reason, error, len(job.spec.prompt_ids),
                 len(job.tokens), st.steps, st.mean_acceptance_length, st.drafter or "none", ttft,
                 time.monotonic() - job.created)

    # --- batches: prefill and step -----------------------------------------------------------
    def _batch_span(self, name: str, jobs: Sequence[Job], attrs: dict):
        if self.tracer is None:
            return _NULL
        spans = [j.span for j in jobs if j.span is not None]
        # The oldest request whose span records: under ratio sampling a step is then kept
        # whenever any request it served was sampled.
        chosen = [s for s in spans if s.is_recording()] or spans
        parent = trace.set_span_in_context(chosen[0]) if chosen else None
        links = [Link(s.get_span_context()) for s in spans]
        return self.tracer.start_as_current_span(name, context=parent, links=links, attributes=attrs)

    def prefill_span(self, jobs: Sequence[Job]):
        """The current span for an admission batch's Prefill calls (a no-op when off)."""
        if self.tracer is None:
            return _NULL
        return self._batch_span("prefill", jobs, {
            "specgrove.batch_size": len(jobs),
            "specgrove.prompt_tokens": sum(len(j.history) for j in jobs)})

    @contextlib.contextmanager
    def step(self, jobs: Sequence[Job]) -> Iterator[trace.Span | None]:
        """Time one step; with tracing on, the ``step`` span is current inside."""
        self.steps += 1
        start = time.perf_counter()
        attrs = {"specgrove.step": self.steps, "specgrove.batch_size": len(jobs)}
        with self._batch_span("step", jobs, attrs) as span:
            yield span
        self.metrics.step_time.observe(time.perf_counter() - start)

    def step_item(self, span: trace.Span | None, job: Job, tree: TokenTree, drafter: str,
                  result: VerifyResult, target_replica: str = "", draft_replica: str = "") -> None:
        """One job's share of a step: counters, and an event on its request span (with the
        target and draft replicas that served it)."""
        accepted = len(result.accepted_tokens)
        self.metrics.step_item(drafter, len(tree) - 1, accepted)
        if span is None or job.span is None:
            return
        job.span.add_event("specgrove.step", {
            "specgrove.step": job.stats.steps, "specgrove.accepted_tokens": accepted,
            "specgrove.new_tokens": accepted + 1, "specgrove.tree.nodes": len(tree),
            "specgrove.tree.depth": tree.depth, "specgrove.drafter": drafter,
            "specgrove.target.replica": target_replica, "specgrove.draft.replica": draft_replica,
            "specgrove.step.span_id": format(span.get_span_context().span_id, "016x")})

    def step_done(self, span: trace.Span | None, trees: Sequence[TokenTree], drafters: Sequence[str],
                  results: Sequence[VerifyResult], free_blocks: int | None, total_blocks: int) -> None:
        """The step span's totals over the batch."""
        if span is None:
            return
        attrs = {"specgrove.tree.nodes": sum(len(t) for t in trees),
                 "specgrove.tree.depth": max((t.depth for t in trees), default=0),
                 "specgrove.draft_tokens": sum(len(t) - 1 for t in trees),
                 "specgrove.accepted_tokens": sum(len(r.accepted_tokens) for r in results),
                 "specgrove.drafter": ",".join(sorted(set(drafters)))}
        if free_blocks is not None:
            attrs["specgrove.kv.blocks_used"] = total_blocks - free_blocks
            attrs["specgrove.kv.blocks_total"] = total_blocks
        span.set_attributes(attrs)
