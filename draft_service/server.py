"""The draft service process: a grpc.aio server over the drafter registry.

With tracing on, every RPC gets a server span parented on the caller's (gRPC metadata).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from draft_service.engine import DraftEngine
from draft_service.factory import DraftTarget, build_drafter
from draft_service.load_policy import LoadPolicy
from draft_service.local import LocalDraft
from draft_service.registry import DrafterRegistry
from draft_service.servicer import DraftServicer
from specgrove.config import ModelRunConfig
from specgrove.engine_thread import EngineThread
from specgrove.pb.v1 import draft_pb2, draft_pb2_grpc
from specgrove.service_server import ServiceServer
from specgrove.telemetry import TelemetryConfig
from specgrove.tls import TlsConfig
from specgrove.errors import InvalidRequest

log = logging.getLogger("specgrove.draft")
SERVICE_NAME = draft_pb2.DESCRIPTOR.services_by_name["DraftService"].full_name


@dataclass(frozen=True)
class DraftServerConfig:
    target_vocab_from: str  # a model name or path whose vocabulary every drafter must share
    drafters: tuple[tuple[str, str], ...] = (("ngram", "ngram"),)  # (name, KIND[:SPEC])
    default: str = ""
    run: ModelRunConfig = ModelRunConfig("")  # dtype / device / kernels / KV of model drafters
    host: str = "127.0.0.1"
    port: int = 50052
    grace_s: float = 10.0
    telemetry: TelemetryConfig = TelemetryConfig()
    service_token: str = ""  # callers must send it (``specgrove.auth``); "" = open
    load_policy: LoadPolicy = LoadPolicy()  # what LoadDrafter may build at run time
    tls: TlsConfig | None = None  # serve TLS, mutual with a CA (``specgrove.tls``); None = plaintext


class DraftServer(ServiceServer):
    service_name = SERVICE_NAME
    telemetry_name = "specgrove-draft"

    def __init__(self, cfg: DraftServerConfig) -> None:
        super().__init__(cfg.host, cfg.port, cfg.grace_s, cfg.telemetry, cfg.service_token, cfg.tls)
        self.cfg = cfg
        self.target = DraftTarget(cfg.target_vocab_from)
        self.thread, self.loader = EngineThread("draft-engine"), EngineThread("draft-loader")
        self.servicer = DraftServicer()

    def _builder(self, spec: str):
        try:
            return build_drafter(spec, self.target, self.cfg.run)
        except ValueError as exc:  # bad spec, unknown model, vocabulary mismatch
            raise InvalidRequest("spec", str(exc)) from exc

    def _build_registry(self) -> DrafterRegistry:
        registry = DrafterRegistry(self._builder)
        default = self.cfg.default or self.cfg.drafters[0][0]
        for name, spec in self.cfg.drafters:
            registry.add(registry.build(name, spec), make_default=name == default)
        if registry.default != default:
            raise InvalidRequest("default", f"no drafter named {default!r} was given")
        return registry

    def _register(self, server) -> None:
        self.servicer.tracer = self.telemetry.tracer
        draft_pb2_grpc.add_DraftServiceServicer_to_server(self.servicer, server)

    async def _load(self) -> None:
        # Start-up drafters load on the engine thread that will run them: the first thread to
        # run OpenMP work keeps bf16 ops fast (``specgrove.engine_thread.CallerThread``).
        registry = await self.thread.run(self._build_registry)
        policy = self.cfg.load_policy.with_startup(tuple(spec for _, spec in self.cfg.drafters))
        self.servicer.draft = LocalDraft(DraftEngine(registry), self.target.vocab_size, self.thread,
                                         self.loader, policy)
        log.info("draft service serving on %s:%d with %s", self.cfg.host, self.port,
                 [i.name for i in registry.list()])

    def _close(self) -> None:
        self.thread.shutdown()
        self.loader.shutdown()
