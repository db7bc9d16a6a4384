"""The target service process: a grpc.aio server over the target engine.

The server listens at once with health NOT_SERVING, loads the model on the engine thread, then
reports SERVING. SIGTERM stops admitting and lets calls in flight finish within the grace period.
With tracing on, every RPC gets a server span parented on the caller's (gRPC metadata).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from specgrove.config import ModelRunConfig
from specgrove.pb.v1 import target_pb2, target_pb2_grpc
from specgrove.service import GrpcService, run_until_signal
from specgrove.telemetry import Telemetry, TelemetryConfig, start_telemetry
from target_service.builder import build_runner
from target_service.engine import TargetEngine
from target_service.servicer import TargetLimits, TargetServicer

log = logging.getLogger("specgrove.target")
SERVICE_NAME = target_pb2.DESCRIPTOR.services_by_name["TargetService"].full_name


@dataclass(frozen=True)
class TargetServerConfig:
    run: ModelRunConfig
    host: str = "127.0.0.1"
    port: int = 50051
    limits: TargetLimits = field(default_factory=TargetLimits)
    max_model_len: int | None = None
    grace_s: float = 10.0
    telemetry: TelemetryConfig = TelemetryConfig()
    tp: int = 1  # tensor-parallel ranks (this process is rank 0)
    tp_timeout_s: float = 120.0


def build_engine(cfg: TargetServerConfig) -> TargetEngine:
    return TargetEngine(build_runner(cfg.run, cfg.tp, cfg.tp_timeout_s), cfg.max_model_len)


class TargetServer:
    def __init__(self, cfg: TargetServerConfig) -> None:
        self.cfg = cfg
        self.servicer = TargetServicer(cfg.run.model, cfg.run.dtype, cfg.limits, cfg.tp)
        self.servicer.on_fatal = self._fatal
        self.fatal: BaseException | None = None
        self.grpc: GrpcService | None = None
        self.telemetry = Telemetry.off()
        self.port = 0
        self._loaded: asyncio.Future | None = None

    async def start(self) -> int:
        """Listen (NOT_SERVING) and start loading the model; returns the bound port."""
        self.telemetry = start_telemetry(self.cfg.telemetry, "specgrove-target")
        self.servicer.tracer = self.telemetry.tracer
        # grpc.aio servers bind to the running loop: created here, not in __init__.
        self.grpc = GrpcService([SERVICE_NAME], self.telemetry.server_interceptors())
        target_pb2_grpc.add_TargetServiceServicer_to_server(self.servicer, self.grpc.server)
        self.port = await self.grpc.start(self.cfg.host, self.cfg.port)
        self._loaded = asyncio.ensure_future(self._load())
        return self.port

    async def _load(self) -> None:
        self.servicer.engine = await self.servicer.thread.run(build_engine, self.cfg)
        await self.grpc.set_serving()
        log.info("target %s serving on %s:%d", self.cfg.run.model, self.cfg.host, self.port)

    async def wait_ready(self) -> None:
        """Return once the model is loaded; raise the loading error if it failed."""
        assert self._loaded is not None, "start() first"
        await asyncio.shield(self._loaded)

    def _fatal(self, exc: BaseException) -> None:
        """Serving is over (a tensor-parallel rank died): say so, report NOT_SERVING, stop."""
        if self.fatal is None:
            self.fatal = exc
            log.error("target service going down: %s", exc)
            asyncio.get_running_loop().create_task(self.stop(0))

    async def stop(self, grace_s: float | None = None) -> None:
        if self._loaded is not None and not self._loaded.done():
            self._loaded.cancel()
        await self.grpc.stop(self.cfg.grace_s if grace_s is None else grace_s)
        self.servicer.thread.shutdown()
        if self.servicer.engine is not None:
            self.servicer.engine.runner.close()
        self.telemetry.shutdown()

    async def serve_forever(self) -> None:
        """Run until SIGTERM / SIGINT (graceful) or a loading failure (raised)."""
        await self.start()
        try:
            await self.wait_ready()
        except BaseException:
            await self.stop(0)
            raise
        await run_until_signal(self.stop, self.grpc.server.wait_for_termination())
        if self.fatal is not None:
            raise self.fatal
