"""``specgrove up --trace-file``: three real processes write one trace file; the trace context
crosses the process boundaries in gRPC metadata; SIGTERM drains and flushes every service."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from specgrove.cli.tracefile import read_spans
from specgrove.service import free_ports

TRACE_ID, PARENT_ID = "5b8aa5a2d2c872e8321cf37308d69df2", "051581bf3cb55c13"


def _wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"specgrove up exited during start-up:\n{proc.stderr.read().decode()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def test_up_writes_one_trace_across_three_processes(tiny_dirs, tmp_path):
    trace = tmp_path / "trace.jsonl"
    model = str(tiny_dirs["llama"])
    http, grpc_port, target_port, draft_port = free_ports(4)
    cmd = [sys.executable, "-m", "specgrove.cli", "up", "--target", model, "--port", str(http),
           "--grpc-port", str(grpc_port), "--target-port", str(target_port), "--draft-port",
           str(draft_port), "--kv-blocks", "256", "--default-tree", "6:3", "--trace-file", str(trace)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{http}/health")
        r = httpx.post(f"http://127.0.0.1:{http}/v1/completions", timeout=60,
                       headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
                       # Explicit speculation: every step drafts (the default one may skip steps).
                       json={"model": model, "prompt": "hello world hello world hello", "max_tokens": 12,
                             "temperature": 0, "speculation": {"drafter": "lookup"}}).json()
    finally:
        proc.send_signal(signal.SIGTERM)  # each service drains, then flushes its spans
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]

    spans, bad = read_spans(str(trace))
    assert bad == 0
    mine = [s for s in spans if s.trace_id == TRACE_ID]
    assert {s.service for s in mine} == {"specgrove-gateway", "specgrove-draft", "specgrove-target"}
    (req,) = [s for s in mine if s.attrs.get("gen_ai.response.id") == r["id"]]
    assert req.parent_id == PARENT_ID and req.attrs["specgrove.steps"] == r["specgrove"]["steps"]
    by_id = {s.span_id: s for s in mine}
    steps = [s for s in mine if s.name == "step"]
    assert len(steps) == r["specgrove"]["steps"] and all(s.parent_id == req.span_id for s in steps)
    for method, service in (("/specgrove.v1.DraftService/Propose", "specgrove-draft"),
                            ("/specgrove.v1.TargetService/Verify", "specgrove-target")):
        servers = [s for s in mine if s.name == method and s.service == service]
        # Every step verifies; a step with room for only its bonus token drafts nothing and
        # skips Propose.
        assert len(servers) == len(steps) if "Verify" in method else len(steps) - 1 <= len(servers) <= len(steps)
        for srv in servers:  # server span (other process) -> gateway client span -> step span
            client = by_id[srv.parent_id]
            assert client.service == "specgrove-gateway" and by_id[client.parent_id].name == "step"

    png = tmp_path / "timeline.png"
    out = subprocess.run([sys.executable, "-m", "specgrove.cli", "trace", str(trace), "--png", str(png)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert r["id"] in out.stdout and png.read_bytes()[:4] == b"\x89PNG"
