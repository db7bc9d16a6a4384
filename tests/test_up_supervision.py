"""``specgrove up`` supervises for real: kill -9 each child mid-stream, watch /health follow the
target on its own, and SIGTERM drain in order -- three real processes on loopback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest

from benchmarks.common import child_pid
from specgrove.pb.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from specgrove.service import free_ports
from tests.polling import wait_until

KEY = "up-key"
AUTH = {"authorization": f"Bearer {KEY}"}


def _health(base: str) -> int:
    try:
        return httpx.get(base + "/health", timeout=2).status_code
    except httpx.HTTPError:
        return 0


class Stream(threading.Thread):
    """One streamed completion in the background; ``started`` is set at its first token."""

    def __init__(self, base: str, model: str, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.base, self.model, self.max_tokens = base, model, max_tokens
        self.started = threading.Event()
        self.tokens, self.finish, self.error = 0, None, None

    def run(self) -> None:
        body = {"model": self.model, "prompt": "once upon a time", "max_tokens": self.max_tokens,
                "temperature": 0, "stream": True, "ignore_eos": True}
        try:
            with httpx.stream("POST", self.base + "/v1/completions", json=body, headers=AUTH,
                              timeout=120) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        self.error = chunk["error"]
                        break
                    self.tokens += 1
                    self.started.set()
                    self.finish = chunk["choices"][0].get("finish_reason") or self.finish
        except httpx.HTTPError as exc:
            self.error = repr(exc)
        finally:
            self.started.set()


def _complete(base: str, model: str, **extra) -> httpx.Response:
    body = {"model": model, "prompt": "the quick brown fox the quick brown fox", "max_tokens": 16,
            "temperature": 0, **extra}
    return httpx.post(base + "/v1/completions", json=body, headers=AUTH, timeout=60)


def test_up_restarts_children_keeps_serving_and_drains(tiny_dirs):
    model = str(tiny_dirs["llama"])
    http, grpc_port, tport, dport = free_ports(4)
    cmd = [sys.executable, "-m", "specgrove.cli", "up", "--target", model, "--drafter", "lookup=ngram",
           "--port", str(http), "--grpc-port", str(grpc_port), "--target-port", str(tport),
           "--draft-port", str(dport), "--kv-blocks", "256", "--api-key", KEY, "--drain-timeout", "20"]
    up = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{http}"
    try:
        wait_until(lambda: up.poll() is None and _health(base) == 200, 180, "up serving")

        # The gateway's gRPC port refuses a caller without the key.
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            req = gateway_pb2.GenerateRequest(model=model, prompt="x", max_tokens=2,
                                              sampling=common_pb2.SamplingParams(temperature=0, top_p=1))
            with pytest.raises(grpc.RpcError) as err:
                list(gateway_pb2_grpc.GatewayStub(ch).Generate(req, timeout=30))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # 1. kill -9 the draft service mid-stream: the stream finishes, the draft comes back,
        #    and speculation resumes.
        draft_pid = child_pid(up.pid, "draft")
        stream = Stream(base, model, 400)
        stream.start()
        assert stream.started.wait(60)
        os.kill(draft_pid, signal.SIGKILL)
        stream.join(120)
        assert stream.error is None and stream.finish == "length" and stream.tokens >= 1
        new_draft = wait_until(lambda: (p := child_pid(up.pid, "draft")) not in (None, draft_pid) and p,
                          60, "draft restarted")
        assert new_draft != draft_pid

        def speculating():
            r = _complete(base, model, speculation={"drafter": "lookup"})
            return r.status_code == 200 and r.json()["specgrove"]["drafted_tokens"] > 0
        wait_until(speculating, 120, "speculation resumed after the draft restart")

        # 2. kill -9 the target: /health turns 503 on its own, the in-flight request fails
        #    cleanly, the target comes back, /health 200 again with no request, and new
        #    requests are served.
        target_pid = child_pid(up.pid, "target")
        stream = Stream(base, model, 400)
        stream.start()
        assert stream.started.wait(60)
        os.kill(target_pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: _health(base) == 503, 10, "health 503 after the target died")
        assert time.monotonic() - killed < 5
        stream.join(60)
        assert stream.finish != "length" and stream.error is not None
        wait_until(lambda: _health(base) == 200, 180, "health 200 after the target restarted")
        assert child_pid(up.pid, "target") not in (None, target_pid)
        assert _complete(base, model).status_code == 200

        # 3. SIGTERM to up with a request in flight: it finishes, then everything stops.
        stream = Stream(base, model, 400)
        stream.start()
        assert stream.started.wait(60)
        pids = [child_pid(up.pid, r) for r in ("target", "draft", "gateway")]
        up.send_signal(signal.SIGTERM)
        stream.join(60)
        assert stream.error is None and stream.finish == "length"
        up.wait(90)
    finally:
        if up.poll() is None:
            up.kill()
        _, err = up.communicate(timeout=30)
    assert up.returncode == 0, err[-3000:]
    assert "restarting it" in err
    assert all(not Path(f"/proc/{p}").exists() for p in pids if p)
