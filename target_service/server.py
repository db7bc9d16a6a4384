"""The target service process: a grpc.aio server over the target engine.

The server listens at once with health NOT_SERVING, loads the model on the engine thread, then
reports SERVING (lifecycle: ``specgrove.service_server``). A tensor-parallel rank that dies
takes the service down.
With tracing on, every RPC gets a server span parented on the caller's (gRPC metadata).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from specgrove.config import ModelRunConfig
from specgrove.engine_thread import EngineThread
from specgrove.pb.v1 import target_pb2, target_pb2_grpc
from specgrove.service import TARGET_RECEIVE_BYTES
from specgrove.service_server import ServiceServer
from specgrove.telemetry import TelemetryConfig
from specgrove.tls import TlsConfig
from target_service.builder import build_runner
from target_service.engine import TargetEngine
from target_service.local import LocalTarget, TargetLimits
from target_service.servicer import TargetServicer

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
    service_token: str = ""  # callers must send it (``specgrove.auth``); "" = open
    tls: TlsConfig | None = None  # serve TLS, mutual with a CA (``specgrove.tls``); None = plaintext


def build_engine(cfg: TargetServerConfig) -> TargetEngine:
    return TargetEngine(build_runner(cfg.run, cfg.tp, cfg.tp_timeout_s), cfg.max_model_len)


class TargetServer(ServiceServer):
    service_name = SERVICE_NAME
    max_receive_bytes = TARGET_RECEIVE_BYTES
    telemetry_name = "specgrove-target"

    def __init__(self, cfg: TargetServerConfig) -> None:
        super().__init__(cfg.host, cfg.port, cfg.grace_s, cfg.telemetry, cfg.service_token, cfg.tls)
        self.cfg = cfg
        self.thread = EngineThread("target-engine")
        self.servicer = TargetServicer()
        self.servicer.on_fatal = self.go_down

    def _register(self, server) -> None:
        self.servicer.tracer = self.telemetry.tracer
        target_pb2_grpc.add_TargetServiceServicer_to_server(self.servicer, server)

    async def _load(self) -> None:
        engine = await self.thread.run(build_engine, self.cfg)
        self.servicer.target = LocalTarget(engine, self.cfg.run.model, self.cfg.run.dtype_name,
                                           self.cfg.limits, self.thread)
        log.info("target %s serving on %s:%d", self.cfg.run.model, self.cfg.host, self.port)

    def _close(self) -> None:
        self.thread.shutdown()
        if self.servicer.target is not None:
            self.servicer.target.engine.runner.close()
