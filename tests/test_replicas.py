"""Several target and draft replicas behind one gateway, for real: replicas are service
processes on loopback (tiny float64 model), one is killed with SIGKILL while 16 streams run, and
every stream must finish with the tokens a single-replica gateway gives; the killed replica,
restarted, rejoins and gets new sequences. The gateway runs in this process, in a background
loop, so the test can see where its sequences live."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from gateway.orchestrator import SchedulerConfig
from gateway.server import GatewayServer
from gateway.state import GatewayConfig
from specgrove.clients import DraftClient, TargetClient
from specgrove.service import free_ports
from specgrove.types import TreeBudget
from tests.grpc_harness import ServerLoop
from tests.polling import wait_until

STREAMS = 16
MAX_TOKENS = 120


class Service:
    """A target or draft service process (``specgrove target`` / ``specgrove draft``)."""

    def __init__(self, kind: str, model: str, port: int, log_dir) -> None:
        self.kind, self.model, self.port, self.log_dir = kind, model, port, log_dir
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Service":
        cli = [sys.executable, "-m", "specgrove.cli"]
        common = ["--port", str(self.port), "--dtype", "float64", "--device", "cpu", "--kernels", "torch",
                  "--block-size", "4", "--log-level", "WARNING"]
        if self.kind == "target":
            cmd = cli + ["target", "--target", self.model, "--kv-blocks", "1024", *common]
        else:
            cmd = cli + ["draft", "--target-vocab-from", self.model, "--drafter", "lookup=ngram", *common]
        log = open(self.log_dir / f"{self.kind}-{self.port}.log", "a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        return self

    def wait_serving(self) -> None:
        async def serving():
            async with (TargetClient if self.kind == "target" else DraftClient)(self.address) as client:
                return await client.serving()

        wait_until(lambda: self.proc.poll() is None and asyncio.run(serving()), 120,
                   f"{self.kind} on {self.port} serving")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _bodies(model: str, count: int, offset: int = 0) -> list[dict]:
    """Greedy and seeded requests, half of them speculating with the n-gram drafter."""
    words = ["the quick brown fox", "hello world hello world", "a b c a b c", "once upon a time"]
    bodies = []
    for i in range(offset, offset + count):
        body = {"model": model, "prompt": f"{words[i % 4]} {i}", "max_tokens": MAX_TOKENS, "ignore_eos": True,
                "temperature": 0 if i % 2 == 0 else 0.9}
        if i % 2:
            body["seed"] = 1000 + i
        body["speculation"] = {"drafter": "lookup", "tree": "4,1"} if i % 4 < 2 else {"drafter": "none"}
        bodies.append(body)
    return bodies


class Stream(threading.Thread):
    """One streamed completion; ``tokens`` counts chunks with text."""

    def __init__(self, base: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.base, self.body = base, {**body, "stream": True}
        self.text, self.tokens, self.finish, self.error = "", 0, None, None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.base + "/v1/completions", json=self.body, timeout=180) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        self.error = chunk["error"]
                        return
                    choice = chunk["choices"][0]
                    self.text += choice["text"]
                    self.tokens += 1
                    self.finish = choice.get("finish_reason") or self.finish
        except httpx.HTTPError as exc:
            self.error = repr(exc)


def _complete_all(base: str, bodies: list[dict]) -> list[dict]:
    out: list[dict | None] = [None] * len(bodies)

    def one(i):
        out[i] = httpx.post(base + "/v1/completions", json=bodies[i], timeout=180).json()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    return out


@pytest.fixture(scope="module")
def cluster(tiny_dirs, tmp_path_factory):
    """Two target and two draft service processes, and a loop for in-process gateways."""
    model = str(tiny_dirs["llama"])
    logs = tmp_path_factory.mktemp("replica-logs")
    ports = free_ports(4)
    services = {name: Service(name.split("-")[0], model, port, logs)
                for name, port in zip(("target-a", "target-b", "draft-a", "draft-b"), ports)}
    loop = ServerLoop()
    try:
        for s in services.values():
            s.start()
        for s in services.values():
            s.wait_serving()
        yield {"model": model, "loop": loop, **services}
    finally:
        for s in services.values():
            s.stop()
        loop.close()


def _gateway(cluster, targets: list[Service], drafts: list[Service]) -> GatewayServer:
    gw = GatewayServer(GatewayConfig(
        tuple(t.address for t in targets), tuple(d.address for d in drafts), port=0, grpc_port=0,
        default_budget=TreeBudget(max_nodes=4, max_depth=2), scheduler=SchedulerConfig(max_batch=32),
        grace_s=1, health_poll_s=0.2, log_requests=False, log_stats_interval_s=0))
    cluster["loop"].run(gw.start())
    return gw


@pytest.fixture(scope="module")
def reference(cluster):
    """What one target and one draft replica give for every request the tests send."""
    gw = _gateway(cluster, [cluster["target-a"]], [cluster["draft-a"]])
    try:
        outs = _complete_all(f"http://127.0.0.1:{gw.http_port}", _bodies(cluster["model"], STREAMS + 4))
    finally:
        cluster["loop"].run(gw.stop(0))
    assert all(o["choices"][0]["finish_reason"] == "length" for o in outs)
    return [o["choices"][0]["text"] for o in outs]


def _stream_and_kill(cluster, gw: GatewayServer, pool, victim: Service) -> list[Stream]:
    """16 streams; once every one has tokens and the victim holds sequences, SIGKILL it."""
    base = f"http://127.0.0.1:{gw.http_port}"
    streams = [Stream(base, b) for b in _bodies(cluster["model"], STREAMS)]
    for s in streams:
        s.start()
    on_victim = next(r for r in pool.replicas if r.address == victim.address)
    wait_until(lambda: all(s.tokens >= 3 for s in streams) and on_victim.sequences, 120,
               "every stream running, some on the victim")
    assert any(s.is_alive() for s in streams)
    victim.kill()
    for s in streams:
        s.join(240)
    return streams


def _no_leaks(cluster, gw: GatewayServer, targets: list[Service], drafts: list[Service]) -> None:
    wait_until(lambda: gw.state.orchestrator.idle, 30, "gateway idle")

    async def held():
        out = []
        for t in targets:
            async with TargetClient(t.address) as c:
                info = await c.info()
                out.append(info.total_blocks - info.free_blocks)
        for d in drafts:
            async with DraftClient(d.address) as c:
                out.append((await c.info()).num_sequences)
        return out

    assert cluster["loop"].run(held()) == [0] * (len(targets) + len(drafts))


def _metric(gw: GatewayServer, name: str, **labels) -> float:
    text = httpx.get(f"http://127.0.0.1:{gw.http_port}/metrics", timeout=10).text
    want = [f'{k}="{v}"' for k, v in labels.items()]
    line = next(ln for ln in text.splitlines() if ln.startswith(f"{name}{{") and all(w in ln for w in want))
    return float(line.rsplit(" ", 1)[1])


def test_a_killed_target_replica_loses_no_request_and_rejoins(cluster, reference):
    a, b = cluster["target-a"], cluster["target-b"]
    gw = _gateway(cluster, [a, b], [cluster["draft-a"]])
    try:
        pool = gw.state.target
        replica_b = next(r for r in pool.replicas if r.address == b.address)
        streams = _stream_and_kill(cluster, gw, pool, b)
        assert [s.error for s in streams] == [None] * STREAMS
        assert [s.finish for s in streams] == ["length"] * STREAMS
        assert [s.text for s in streams] == reference[:STREAMS]  # greedy and seeded: unchanged
        assert not replica_b.serving and _metric(gw, "specgrove:replica_serving", replica=b.address) == 0
        _no_leaks(cluster, gw, [a], [cluster["draft-a"]])

        # Restarted on its port, the replica rejoins and gets new sequences (it has the most
        # free KV blocks), with the same outputs.
        b.start()
        b.wait_serving()
        wait_until(lambda: replica_b.serving, 30, "replica b rejoined")
        placed = replica_b.placed
        outs = _complete_all(f"http://127.0.0.1:{gw.http_port}", _bodies(cluster["model"], 4, STREAMS))
        assert [o["choices"][0]["text"] for o in outs] == reference[STREAMS:]
        assert replica_b.placed > placed
        assert _metric(gw, "specgrove:replica_sequences_placed_total", service="target",
                       replica=b.address) == replica_b.placed
        _no_leaks(cluster, gw, [a, b], [cluster["draft-a"]])
    finally:
        cluster["loop"].run(gw.stop(0))


def test_a_killed_draft_replica_loses_no_request_and_rejoins(cluster, reference):
    a, b = cluster["draft-a"], cluster["draft-b"]
    gw = _gateway(cluster, [cluster["target-a"]], [a, b])
    try:
        pool = gw.state.draft
        replica_b = next(r for r in pool.replicas if r.address == b.address)
        streams = _stream_and_kill(cluster, gw, pool, b)
        assert [s.error for s in streams] == [None] * STREAMS
        assert [s.finish for s in streams] == ["length"] * STREAMS
        assert [s.text for s in streams] == reference[:STREAMS]
        # Speculation went on, on the surviving replica: its sequences re-registered there.
        drafted = _metric(gw, "specgrove:spec_decode_num_draft_tokens_total", drafter="lookup")
        assert drafted > 0 and not replica_b.serving
        _no_leaks(cluster, gw, [cluster["target-a"]], [a])

        b.start()
        b.wait_serving()
        wait_until(lambda: replica_b.serving, 30, "draft replica b rejoined")
        placed = replica_b.placed
        outs = _complete_all(f"http://127.0.0.1:{gw.http_port}", _bodies(cluster["model"], 4, STREAMS))
        assert [o["choices"][0]["text"] for o in outs] == reference[STREAMS:]
        assert replica_b.placed > placed  # the fewest sequences: it gets the new ones
        _no_leaks(cluster, gw, [cluster["target-a"]], [a, b])
    finally:
        cluster["loop"].run(gw.stop(0))
