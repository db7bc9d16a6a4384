"""``specgrove up``: target, draft and gateway as three processes, supervised together.

Starts the target and draft services, waits until both report SERVING on ``grpc.health.v1``,
starts the gateway, waits for its ``/health``, prints the URLs, and then watches: Ctrl-C /
SIGTERM stops all three (SIGTERM, then SIGKILL after a grace period); if any one exits, the
others are stopped too and ``up`` exits non-zero naming it. ``--trace-file`` / ``--otlp-endpoint``
go to all three services, each with its own service name, so one trace spans all three.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class UpConfig:
    target: str
    drafters: tuple[str, ...]
    host: str
    port: int
    grpc_port: int
    target_port: int
    draft_port: int
    dtype: str
    quantization: str
    kv_blocks: int
    default_tree: str
    trace_file: str | None = None
    otlp_endpoint: str | None = None
    tp: int = 1
    startup_timeout_s: float = 900.0
    grace_s: float = 15.0


def _tracing(cfg: UpConfig, service: str) -> list[str]:
    """Tracing options for one service; its own service name even when OTEL_SERVICE_NAME is set."""
    if not (cfg.trace_file or cfg.otlp_endpoint):
        return []
    args = ["--service-name", f"specgrove-{service}"]
    if cfg.trace_file:
        args += ["--trace-file", os.path.abspath(cfg.trace_file)]
    if cfg.otlp_endpoint:
        args += ["--otlp-endpoint", cfg.otlp_endpoint]
    return args


def default_drafters(target: str) -> tuple[str, ...]:
    """``lookup`` (n-gram) always; first, as the default, the EAGLE head shipped for the target
    when there is one (the embedded model has one)."""
    from draft_service.factory import shipped_head

    return (f"eagle=eagle:{target}", "lookup=ngram") if shipped_head(target) else ("lookup=ngram",)


def _commands(cfg: UpConfig) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "specgrove.cli"]
    drafters = [x for d in (cfg.drafters or default_drafters(cfg.target)) for x in ("--drafter", d)]
    return {
        "target": cli + ["target", "--target", cfg.target, "--port", str(cfg.target_port),
                         "--dtype", cfg.dtype, "--quantization", cfg.quantization,
                         "--kv-blocks", str(cfg.kv_blocks), "--tp", str(cfg.tp),
                         *_tracing(cfg, "target")],
        "draft": cli + ["draft", "--target-vocab-from", cfg.target, "--port", str(cfg.draft_port),
                        "--dtype", cfg.dtype, "--quantization", cfg.quantization, *drafters,
                        *_tracing(cfg, "draft")],
        "gateway": cli + ["gateway", "--target", f"127.0.0.1:{cfg.target_port}",
                          "--draft", f"127.0.0.1:{cfg.draft_port}", "--host", cfg.host,
                          "--port", str(cfg.port), "--grpc-port", str(cfg.grpc_port),
                          "--default-tree", cfg.default_tree, *_tracing(cfg, "gateway")],
    }


async def _grpc_serving(address: str) -> bool:
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.aio.AioRpcError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class Supervisor:
    def __init__(self, cfg: UpConfig) -> None:
        self.cfg = cfg
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str]) -> None:
        self.procs[name] = subprocess.Popen(cmd)

    def dead(self) -> str | None:
        return next((f"{n} exited with code {p.returncode}" for n, p in self.procs.items()
                     if p.poll() is not None), None)

    def wait_until(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while not ready():
            if (why := self.dead()) is not None:
                raise click.ClickException(f"{why} while waiting for {what}")
            if time.monotonic() > deadline:
                raise click.ClickException(f"timed out waiting for {what}")
            time.sleep(0.5)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.grace_s
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_up(cfg: UpConfig) -> None:
    sup = Supervisor(cfg)
    cmds = _commands(cfg)
    stop_requested = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    try:
        sup.start("target", cmds["target"])
        sup.start("draft", cmds["draft"])
        for name, port in (("target", cfg.target_port), ("draft", cfg.draft_port)):
            sup.wait_until(lambda p=port: asyncio.run(_grpc_serving(f"127.0.0.1:{p}")), f"the {name} service")
        sup.start("gateway", cmds["gateway"])
        base = f"http://{cfg.host}:{cfg.port}"
        sup.wait_until(lambda: _http_ok(base + "/health"), "the gateway")
        click.echo(f"specgrove is up: {cfg.target}\n"
                   f"  OpenAI REST  {base}/v1  (health {base}/health)\n"
                   f"  gRPC gateway {cfg.host}:{cfg.grpc_port}\n"
                   f"  target {cfg.target_port}, draft {cfg.draft_port}; Ctrl-C stops all three", err=True)
        while not stop_requested:
            if (why := sup.dead()) is not None:
                raise click.ClickException(f"{why}; stopping the others")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        sup.stop()
