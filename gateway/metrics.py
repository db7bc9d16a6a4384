"""The gateway's Prometheus metrics, served at ``/metrics``.

Speculative decoding counters follow vLLM's names under the ``specgrove:`` prefix and are
labelled by the drafter that drafted each step. One *draft* is one sequence in one step: every
verified step counts, a root-only tree (drafter ``none``, or the draft service unavailable) as a
draft of zero tokens. So, summed over drafters, the counters equal the sums of the per-request
stats in the responses (``steps``, ``drafted_tokens``, ``accepted_tokens``), and
``1 + accepted / drafts`` is their mean acceptance length.

Latencies: TTFT from submission to the first token; time per output token observed once per
token (a step that yields three tokens after 30 ms observes 10 ms three times, so a streamed
chunk of several tokens does not count as one slow token); end-to-end for requests that finish.
Each gateway has its own registry, so several gateways can live in one process (tests).
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# The ``*_created`` timestamp series double the scrape and nothing here reads them (vLLM drops
# them the same way). The switch is process-wide; the gateway owns its process.
disable_created_metrics()

PREFIX = "specgrove:"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
                  0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class DraftCounters:
    """Drafts, draft tokens, accepted tokens and accepted tokens by position, per drafter:
    ``PREFIX + name + "_num_drafts"`` and so on (vLLM's ``spec_decode`` counters)."""

    def __init__(self, registry: CollectorRegistry, name: str, drafts_help: str, tokens_help: str,
                 accepted_help: str) -> None:
        base = PREFIX + name + "_num_"
        self.drafts = Counter(base + "drafts", drafts_help, ["drafter"], registry=registry)
        self.draft_tokens = Counter(base + "draft_tokens", tokens_help, ["drafter"], registry=registry)
        self.accepted_tokens = Counter(base + "accepted_tokens", accepted_help, ["drafter"], registry=registry)
        self.accepted_per_pos = Counter(base + "accepted_tokens_per_pos",
                                        "Accepted draft tokens by position in the accepted path (0 = first).",
                                        ["drafter", "position"], registry=registry)
        self._children: dict[str, tuple] = {}

    def record(self, drafter: str, drafted: int, accepted: int) -> None:
        drafts, draft_tokens, accepted_tokens, per_pos = self._by_drafter(drafter)
        drafts.inc()
        draft_tokens.inc(drafted)
        accepted_tokens.inc(accepted)
        while len(per_pos) < accepted:
            per_pos.append(self.accepted_per_pos.labels(drafter, str(len(per_pos))))
        for pos in range(accepted):
            per_pos[pos].inc()

    def _by_drafter(self, drafter: str) -> tuple:
        # ``labels()`` validates and locks on every call: the step loop calls this per sequence
        # per step, so the labelled children are looked up once per drafter.
        children = self._children.get(drafter)
        if children is None:
            children = self._children[drafter] = (
                self.drafts.labels(drafter), self.draft_tokens.labels(drafter),
                self.accepted_tokens.labels(drafter), [])
        return children


class ReplicaCollector:
    """Per-replica health and load, read from the replica pools (``gateway.replicas``) at scrape
    time: replicas come and go (``dns:`` discovery), so no labelled child outlives its replica."""

    def __init__(self) -> None:
        self.pools: dict = {}  # service name ("target", "draft") -> TargetPool / DraftPool

    def collect(self):
        serving = GaugeMetricFamily(PREFIX + "replica_serving", "1 while the replica serves new "
                                    "sequences (health polls and calls), else 0.", labels=["service", "replica"])
        sequences = GaugeMetricFamily(PREFIX + "replica_sequences", "Sequences the gateway has "
                                      "placed on the replica.", labels=["service", "replica"])
        placed = CounterMetricFamily(PREFIX + "replica_sequences_placed", "Sequences the gateway "
                                     "has placed on the replica since it was first seen.",
                                     labels=["service", "replica"])
        kv = GaugeMetricFamily(PREFIX + "replica_kv_cache_usage_perc", "Fraction of the target "
                               "replica's KV cache blocks in use (0-1), as of its last reply.", labels=["replica"])
        for service, pool in self.pools.items():
            for replica in pool.replicas:
                serving.add_metric([service, replica.address], float(replica.usable))
                sequences.add_metric([service, replica.address], len(replica.sequences))
                placed.add_metric([service, replica.address], replica.placed)
                total = getattr(pool, "totals", {}).get(replica)
                free = getattr(replica.port, "free_blocks", None)
                if total and free is not None:
                    kv.add_metric([replica.address], 1.0 - free / total)
        yield from (serving, sequences, placed, kv)


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.spec = DraftCounters(r, "spec_decode", "Sequences verified, one per sequence per step (a root-only tree too).",
                                  "Draft tokens proposed (tree nodes below the root).",
                                  "Draft tokens accepted by the target (bonus tokens excluded).")
        # Shadow drafters (gateway.shadow): the same counts for what they would have done.
        self.shadow = DraftCounters(r, "shadow", "Steps a shadow drafter would have taken (one per tree scored).",
                                    "Draft tokens a shadow drafter proposed.",
                                    "Shadow draft tokens the emitted tokens accept.")
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds",
                              "Time from submission to the first generated token.",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram(PREFIX + "time_per_output_token_seconds",
                              "Time per generated token after the first, observed once per token.",
                              buckets=_TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds",
                             "Time from submission to the end of requests that finished.",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.step_time = Histogram(PREFIX + "step_duration_seconds",
                                   "Duration of one batched step (propose + verify + bookkeeping).",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.finished = Counter(PREFIX + "request_success",
                                "Requests that ended, by finish reason (stop, length, abort, error).",
                                ["finished_reason"], registry=r)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of the requests queued.",
                                     registry=r)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Generated tokens.", registry=r)
        self.running = Gauge(PREFIX + "num_requests_running", "Requests in the running batch.", registry=r)
        self.waiting = Gauge(PREFIX + "num_requests_waiting", "Requests waiting for admission.", registry=r)
        self.drafter_store = Gauge(PREFIX + "drafter_store", "What a drafter holds across requests "
                                   "(suffix: tokens, nodes, bytes ...), refreshed every few seconds.",
                                   ["drafter", "quantity"], registry=r)
        self.kv_usage = Gauge(PREFIX + "kv_cache_usage_perc",
                              "Fraction of the target's KV cache blocks in use (0-1).", registry=r)
        self.serving = Gauge(PREFIX + "service_serving",
                             "1 while the service (target, draft) reports SERVING to the gateway's "
                             "health polls, else 0.", ["service"], registry=r)
        self.replicas = ReplicaCollector()
        r.register(self.replicas)

    def drafter_stats(self, infos) -> None:
        """What each drafter holds (``DrafterInfo.stats``, e.g. the suffix drafter's global
        structure), as of the gateway's last look at the draft service."""
        self.drafter_store.clear()
        for info in infos:
            for quantity, value in info.stats.items():
                self.drafter_store.labels(info.name, quantity).set(value)

    def bind_gauges(self, running: Callable[[], int], waiting: Callable[[], int],
                    kv_usage: Callable[[], float]) -> None:
        """Read the scheduler's state at scrape time rather than track every change."""
        self.running.set_function(running)
        self.waiting.set_function(waiting)
        self.kv_usage.set_function(kv_usage)

    def bind_health(self, target_ok: Callable[[], bool], draft_ok: Callable[[], bool]) -> None:
        """The services' health as the gateway last saw it (``/health`` shows the same)."""
        self.serving.labels("target").set_function(lambda: float(target_ok()))
        self.serving.labels("draft").set_function(lambda: float(draft_ok()))

    def bind_replicas(self, pools: dict) -> None:
        """The replica pools (``gateway.replicas``) the ``replica_*`` series read at scrape time."""
        self.replicas.pools = pools

    def step_item(self, drafter: str, drafted: int, accepted: int) -> None:
        """One sequence's share of a step."""
        self.spec.record(drafter, drafted, accepted)

    def shadow_step(self, drafter: str, drafted: int, accepted: int) -> None:
        """One step a shadow drafter would have taken (``gateway.shadow``)."""
        self.shadow.record(drafter, drafted, accepted)

    def tokens_added(self, count: int, gap_s: float, first: bool) -> None:
        self.generation_tokens.inc(count)
        if first:
            self.ttft.observe(gap_s)
            count, gap_s = count - 1, 0.0  # any others arrived with the first token
        per_token = gap_s / count if count else 0.0
        for _ in range(count):
            self.tpot.observe(per_token)

    def render(self) -> bytes:
        return generate_latest(self.registry)
