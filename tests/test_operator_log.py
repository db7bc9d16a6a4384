"""What an operator sees: one log line per finished request and a periodic stats line."""
from __future__ import annotations

import logging

import httpx

from gateway.metrics import GatewayMetrics
from gateway.stats_log import StatsLine
from tests.gateway_stack import running_stack


def test_stats_line_reports_rates_and_stays_quiet_when_idle():
    m = GatewayMetrics()
    m.bind_gauges(lambda: 3, lambda: 1, lambda: 0.25)
    stats = StatsLine(m)
    m.prompt_tokens.inc(100)
    m.generation_tokens.inc(40)
    m.step_item("lookup", 8, 6)
    line = stats.line()
    assert "running 3, waiting 1, KV 25.0%" in line and "draft acceptance 75.0%" in line
    assert "generation" in line and "tok/s" in line
    idle = GatewayMetrics()
    idle.bind_gauges(lambda: 0, lambda: 0, lambda: 0.0)
    assert StatsLine(idle).line() is None


def test_one_line_per_finished_request(tiny_dirs, caplog):
    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"]) as s:
        s["gw"].state.observer.log_requests = True
        with caplog.at_level(logging.INFO, logger="specgrove.gateway.requests"):
            r = httpx.post(s["http"] + "/v1/completions", timeout=60,
                           json={"model": s["model"], "prompt": "the fox", "max_tokens": 3, "ignore_eos": True})
            rid = r.json()["id"]
        lines = [rec.getMessage() for rec in caplog.records if rid in rec.getMessage()]
        assert len(lines) == 1 and "length" in lines[0] and "output 3 tokens" in lines[0]
