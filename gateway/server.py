"""The gateway process: REST (uvicorn) and gRPC (grpc.aio) front ends over one step loop.

Start-up waits for a target replica to answer ``Info`` (it may still be loading), reads the
tokenizer of the target's model, and starts the step loop. A health watch follows every target
and draft replica (``gateway.replicas``) and, for ``dns:`` addresses, looks the names up again
(``gateway.discovery``). SIGTERM: stop admitting, let running
requests finish within the grace period, then stop both servers. Tracing (``cfg.telemetry``)
instruments the gRPC server and the channels to the draft / target services, whose calls then
carry the W3C trace context in their metadata. With ``cfg.tls`` the gRPC port serves TLS (mutual
with a CA) and the same certificate is the gateway's client certificate towards the services.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from pathlib import Path

import uvicorn

from gateway import discovery
from gateway.draft_pool import DraftPool
from gateway.grpc_api import GatewayServicer
from gateway.http_api import create_app
from gateway.replicas import TargetPool
from gateway.state import GatewayConfig, GatewayState
from gateway.stats_log import StatsLine
from gateway.text import TextCodec
from specgrove.clients import DraftClient, TargetClient
from specgrove.errors import ServiceError
from specgrove.model_paths import model_dir
from specgrove.pb.v1 import gateway_pb2, gateway_pb2_grpc
from specgrove.service import GrpcService, run_until_signal
from specgrove.telemetry import Telemetry, start_telemetry
from specgrove.types import TargetInfo

log = logging.getLogger("specgrove.gateway")
SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


async def wait_for_target(pool: TargetPool, specs, connect, timeout_s: float) -> TargetInfo:
    """The pool's model once a target replica answers (names are looked up again meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while True:
        await discovery.refresh(pool, specs, connect)
        try:
            return await pool.start()
        except ServiceError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no target replica ready at {', '.join(specs)}: {exc}") from exc
            await asyncio.sleep(0.5)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling. On SIGTERM uvicorn would close HTTP at once and,
    once closed, re-raise the signal, killing the process before the gateway drains its running
    requests and flushes its trace spans; ``serve_forever`` handles the signals instead."""

    @contextlib.contextmanager
    def capture_signals(self):  # uvicorn >= 0.29
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass


class GatewayServer:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.state: GatewayState | None = None
        self.http: uvicorn.Server | None = None
        self.grpc: GrpcService | None = None
        self.telemetry = Telemetry.off()
        self.http_port = self.grpc_port = 0
        self._http_task: asyncio.Task | None = None
        self._health_task: asyncio.Task | None = None
        self._stats_task: asyncio.Task | None = None
        self._stopped = False

    async def start(self, wait_s: float = 600.0) -> None:
        cfg = self.cfg
        self.telemetry = tel = start_telemetry(cfg.telemetry, "specgrove-gateway")
        token = cfg.service_token or None
        self._connect_target = lambda address, name: TargetClient(
            address, cfg.rpc_timeout_s, tel.client_interceptors(), token, cfg.tls, name)
        self._connect_draft = lambda address, name: DraftClient(
            address, cfg.rpc_timeout_s, tel.client_interceptors(), token, cfg.tls, name)
        targets = await discovery.resolve_all(cfg.targets)
        drafts = await discovery.resolve_all(cfg.drafts)
        target = TargetPool([self._connect_target(*a) for a in targets.items()], list(targets))
        draft = DraftPool([self._connect_draft(*a) for a in drafts.items()], list(drafts))
        info = await wait_for_target(target, cfg.targets, self._connect_target, wait_s)
        template = Path(cfg.chat_template).read_text() if cfg.chat_template else None
        codec = TextCodec(Path(cfg.model_dir) if cfg.model_dir else model_dir(info.model), template)
        self.state = state = GatewayState(cfg, target, draft, info, codec, tel.tracer)
        await state.refresh_drafters()
        state.orchestrator.start()
        self._health_task = asyncio.create_task(self._watch_health(), name="health-watch")
        if cfg.log_stats_interval_s > 0:
            self._stats_task = asyncio.create_task(self._log_stats(), name="stats-log")
        self.grpc = GrpcService([SERVICE_NAME], tel.server_interceptors(), state.auth,
                                max_receive_bytes=cfg.max_body_bytes)
        gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(state), self.grpc.server)
        self.grpc_port = await self.grpc.start(cfg.host, cfg.grpc_port, cfg.tls)
        await self.grpc.set_serving()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.host, cfg.port))
        self.http_port = sock.getsockname()[1]
        self.http = _Uvicorn(uvicorn.Config(
            create_app(state), log_level="warning", lifespan="off",
            timeout_graceful_shutdown=int(cfg.grace_s)))
        self._http_task = asyncio.create_task(self.http.serve(sockets=[sock]))
        while not self.http.started:
            if self._http_task.done():
                await self._http_task  # raises the start-up error
            await asyncio.sleep(0.02)
        log.info("gateway serving %s: http://%s:%d  grpc %s:%d", info.model, cfg.host,
                 self.http_port, cfg.host, self.grpc_port)

    async def _watch_health(self) -> None:
        """Follow every replica's ``grpc.health.v1`` every ``health_poll_s``: ``/health`` turns
        503 soon after the last target replica dies and 200 soon after one serves again, with no
        request needed; a replica that stops serving gets no new sequences, and one that serves
        again rejoins. The draft's state is reported, never failed on (speculation is optional)."""
        state, cfg = self.state, self.cfg
        polls, resolved = 0, time.monotonic()
        while True:
            try:
                if time.monotonic() - resolved >= cfg.resolve_s:
                    resolved = time.monotonic()
                    await discovery.refresh(state.target, cfg.targets, self._connect_target)
                    await discovery.refresh(state.draft, cfg.drafts, self._connect_draft)
                draft_was_ok = state.draft_ok
                _, rejoined = await asyncio.gather(state.target.poll(), state.draft.poll())
                polls += 1
                if state.draft_ok and (rejoined or not draft_was_ok or polls % 20 == 0):
                    # A restarted draft replica: learn its drafters; else now and then, which
                    # also refreshes what they hold (the drafter_store gauge).
                    await state.refresh_drafters()
            except Exception:  # noqa: BLE001 -- the watch must outlive any one failed probe
                log.exception("health probe failed")
            await asyncio.sleep(cfg.health_poll_s)

    async def _log_stats(self) -> None:
        stats = StatsLine(self.state.metrics)
        while True:
            await asyncio.sleep(self.cfg.log_stats_interval_s)
            stats.log()

    async def stop(self, grace_s: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        grace = self.cfg.grace_s if grace_s is None else grace_s
        if self.state is not None:
            await self.state.drain(grace)
        for task in (self._health_task, self._stats_task):
            if task is not None:
                task.cancel()
        if self.http is not None:
            self.http.should_exit = True
            await asyncio.gather(self._http_task, return_exceptions=True)
        if self.grpc is not None:
            await self.grpc.stop(min(grace, 5.0))
        if self.state is not None:
            await self.state.orchestrator.stop()
            await self.state.target.close()
            await self.state.draft.close()
        self.telemetry.shutdown()

    async def serve_forever(self) -> None:
        """Serve until SIGTERM / SIGINT, then drain: stop admitting, let running requests finish
        within the grace period, stop both servers, flush the trace spans."""
        await self.start()
        try:
            await run_until_signal(self.stop, self._http_task)
        finally:
            await self.stop()  # the HTTP server ended by itself: still close everything
