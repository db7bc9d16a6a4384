"""``specgrove up`` for real: three processes, health-gated, served, and all stopped by SIGTERM."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from specgrove.service import free_ports


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_serves_and_stops_cleanly(tiny_dirs):
    http, grpc_port, tport, dport = free_ports(4)
    exe = os.path.join(os.path.dirname(sys.executable), "specgrove")
    proc = subprocess.Popen(
        [exe, "up", "--target", str(tiny_dirs["llama"]), "--drafter", "lookup=ngram",
         "--drafter", f"small=model:{tiny_dirs['draft']}", "--port", str(http),
         "--grpc-port", str(grpc_port), "--target-port", str(tport), "--draft-port", str(dport),
         "--kv-blocks", "256", "--served-model-name", "tiny", "--max-batch", "8", "--max-tree-nodes", "32",
         "--no-adaptive-speculation", "--log-stats-interval", "0",
         "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{http}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{http}/v1", api_key="x", max_retries=0)
        r = client.completions.create(model="tiny", prompt="the quick brown fox",
                                      max_tokens=12, temperature=0,
                                      extra_body={"speculation": {"drafter": "small", "tree": "2,2"}})
        assert r.usage.completion_tokens >= 1 and r.model_extra["specgrove"]["drafter"] == "small"
        # vLLM's --speculative-config: an n-gram drafter by default, a chain of 3 as the default tree
        d = client.completions.create(model="tiny", prompt="a b a b a b", max_tokens=8, temperature=0)
        assert d.model_extra["specgrove"]["tree"] == {"branching": [1, 1, 1]}
        assert d.model_extra["specgrove"]["drafter"] == "spec-ngram"
        with pytest.raises(openai.BadRequestError, match="exceed"):  # --max-tree-nodes reached the target
            client.completions.create(model="tiny", prompt="x", max_tokens=2,
                                      extra_body={"speculation": {"tree": "8,4"}})
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "specgrove is up" in out
    assert not any(_listening(p) for p in (http, grpc_port, tport, dport))


def _spaced_ports() -> tuple[int, int]:
    """Two free ports p whose p + 10 (a second replica's, ``up``'s step) is free too."""
    while True:
        a, b = free_ports(2)
        if len({a, b, a + 10, b + 10}) == 4 and not _listening(a + 10) and not _listening(b + 10):
            return a, b


def test_up_runs_several_target_and_draft_replicas(tiny_dirs):
    """``--target-replicas`` / ``--draft-replicas``: one process each, all behind the gateway
    (replica i on the first port + 10 i), requests spread over them, all stopped by SIGTERM."""
    http, grpc_port = free_ports(2)
    tport, dport = _spaced_ports()
    ports = [tport, tport + 10, dport, dport + 10]
    exe = os.path.join(os.path.dirname(sys.executable), "specgrove")
    proc = subprocess.Popen(
        [exe, "up", "--target", str(tiny_dirs["llama"]), "--drafter", "lookup=ngram",
         "--target-replicas", "2", "--draft-replicas", "2", "--port", str(http),
         "--grpc-port", str(grpc_port), "--target-port", str(tport), "--draft-port", str(dport),
         "--kv-blocks", "256", "--log-stats-interval", "0", "--disable-log-requests"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        for i in range(4):
            r = client.completions.create(model=str(tiny_dirs["llama"]), prompt=f"a b a b {i}", max_tokens=6,
                                          temperature=0, extra_body={"speculation": {"drafter": "lookup"}})
            assert r.usage.completion_tokens == 6
        metrics = httpx.get(base + "/metrics", timeout=10).text
        placed = {(line.split('service="')[1].split('"')[0], line.split('replica="')[1].split('"')[0]):
                  float(line.rsplit(" ", 1)[1])
                  for line in metrics.splitlines() if line.startswith("specgrove:replica_sequences_placed_total{")}
        assert {r for _, r in placed} == {f"127.0.0.1:{p}" for p in ports}
        assert all(n >= 1 for (service, _), n in placed.items() if service == "target")  # spread
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert not any(_listening(p) for p in [http, grpc_port, *ports])


def test_replicas_on_one_machine_split_its_cores(monkeypatch):
    """Two replicas with all cores each thrash (OpenMP threads outnumber the cores): each gets
    its share of the budget, the user's OMP_NUM_THREADS when set; a single one keeps the env."""
    from specgrove.cli.up_cmd import UpConfig, child_environments

    cfg = UpConfig("m", (), "127.0.0.1", 1, 2, 3, 4, "auto", "none", 64, "8:4",
                   target_replicas=2, draft_replicas=1)
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    env = child_environments(cfg)
    assert env["target"]["OMP_NUM_THREADS"] == env["target-1"]["OMP_NUM_THREADS"] == "3"
    assert env["draft"]["OMP_NUM_THREADS"] == env["gateway"]["OMP_NUM_THREADS"] == "6"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = child_environments(cfg)
    assert env["target"]["OMP_NUM_THREADS"] == "1"  # never below one thread
    monkeypatch.delenv("OMP_NUM_THREADS")
    env = child_environments(cfg)
    assert env["target"]["OMP_NUM_THREADS"] == str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert "OMP_NUM_THREADS" not in env["draft"]
