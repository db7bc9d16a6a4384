"""The gateway process: REST (uvicorn) and gRPC (grpc.aio) front ends over one step loop.

Start-up waits for the target service to answer ``Info`` (it may still be loading), reads the
tokenizer of the target's model, and starts the step loop. SIGTERM: stop admitting, let running
requests finish within the grace period, then stop both servers.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import grpc
import uvicorn

from gateway.grpc_api import GatewayServicer
from gateway.http_api import create_app
from gateway.state import GatewayConfig, GatewayState
from gateway.text import TextCodec
from specgrove.clients import DraftClient, TargetClient
from specgrove.model_paths import model_dir
from specgrove.pb.v1 import gateway_pb2, gateway_pb2_grpc
from specgrove.service import GrpcService
from specgrove.types import TargetInfo

log = logging.getLogger("specgrove.gateway")
SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


async def wait_for_target(client: TargetClient, timeout_s: float) -> TargetInfo:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await client.info()
        except grpc.aio.AioRpcError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"target service at {client.address} not ready: {exc.details()}") from exc
            await asyncio.sleep(0.5)


class GatewayServer:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.state: GatewayState | None = None
        self.http: uvicorn.Server | None = None
        self.grpc: GrpcService | None = None
        self.http_port = self.grpc_port = 0
        self._http_task: asyncio.Task | None = None

    async def start(self, wait_s: float = 600.0) -> None:
        cfg = self.cfg
        target = TargetClient(cfg.target, cfg.rpc_timeout_s)
        draft = DraftClient(cfg.draft, cfg.rpc_timeout_s)
        info = await wait_for_target(target, wait_s)
        codec = TextCodec(Path(cfg.model_dir) if cfg.model_dir else model_dir(info.model))
        self.state = state = GatewayState(cfg, target, draft, info, codec)
        await state.refresh_drafters()
        state.orchestrator.start()
        self.grpc = GrpcService([SERVICE_NAME])
        gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(state), self.grpc.server)
        self.grpc_port = await self.grpc.start(cfg.host, cfg.grpc_port)
        await self.grpc.set_serving()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.host, cfg.port))
        self.http_port = sock.getsockname()[1]
        self.http = uvicorn.Server(uvicorn.Config(
            create_app(state), log_level="warning", lifespan="off",
            timeout_graceful_shutdown=int(cfg.grace_s)))
        self._http_task = asyncio.create_task(self.http.serve(sockets=[sock]))
        while not self.http.started:
            if self._http_task.done():
                await self._http_task  # raises the start-up error
            await asyncio.sleep(0.02)
        log.info("gateway serving %s: http://%s:%d  grpc %s:%d", info.model, cfg.host,
                 self.http_port, cfg.host, self.grpc_port)

    async def stop(self, grace_s: float | None = None) -> None:
        grace = self.cfg.grace_s if grace_s is None else grace_s
        if self.state is not None:
            await self.state.drain(grace)
        if self.http is not None:
            self.http.should_exit = True
            await asyncio.gather(self._http_task, return_exceptions=True)
        if self.grpc is not None:
            await self.grpc.stop(min(grace, 5.0))
        if self.state is not None:
            await self.state.orchestrator.stop()
            await self.state.target.close()
            await self.state.draft.close()

    async def serve_forever(self) -> None:
        """Serve until SIGTERM / SIGINT (uvicorn captures them in the main thread), then drain."""
        await self.start()
        await asyncio.gather(self._http_task, return_exceptions=True)
        await self.stop()
