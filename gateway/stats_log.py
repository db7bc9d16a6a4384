"""What an operator sees in the gateway's log, as vLLM users expect: one line per finished
request (``Observer``), and a periodic stats line while there is work.

The stats line reads the gateway's own Prometheus metrics (``gateway.metrics``) and reports the
rates since the previous line: prompt and generation throughput, running and waiting requests,
KV usage and draft acceptance (accepted / drafted tokens).
"""
from __future__ import annotations

import logging
import time

from gateway.metrics import GatewayMetrics

log = logging.getLogger("specgrove.gateway")


def _total(metric) -> float:
    """A counter's value summed over its labels."""
    return sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total"))


def _gauge(metric) -> float:
    return sum(s.value for m in metric.collect() for s in m.samples)


class StatsLine:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self.last = self._read()
        self.at = time.monotonic()

    def _read(self) -> dict[str, float]:
        m = self.metrics
        return {"prompt": _total(m.prompt_tokens), "generated": _total(m.generation_tokens),
                "drafts": _total(m.spec.drafts), "drafted": _total(m.spec.draft_tokens),
                "accepted": _total(m.spec.accepted_tokens)}

    def line(self) -> str | None:
        """The line for the time since the last call; None when nothing happened."""
        now, cur = time.monotonic(), self._read()
        d = {k: cur[k] - self.last[k] for k in cur}
        dt = max(now - self.at, 1e-9)
        self.last, self.at = cur, now
        m = self.metrics
        running, waiting = _gauge(m.running), _gauge(m.waiting)
        if not (d["prompt"] or d["generated"] or running or waiting):
            return None
        accept = f"{100 * d['accepted'] / d['drafted']:.1f}%" if d["drafted"] else "n/a"
        return (f"prompt {d['prompt'] / dt:.1f} tok/s, generation {d['generated'] / dt:.1f} tok/s, "
                f"running {running:.0f}, waiting {waiting:.0f}, KV {100 * _gauge(m.kv_usage):.1f}%, "
                f"draft acceptance {accept}")

    def log(self) -> None:
        text = self.line()
        if text is not None:
            log.info("stats: %s", text)
