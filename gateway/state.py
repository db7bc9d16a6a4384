"""What the REST and gRPC front ends share: the orchestrator, the codec, the settings, and
the metrics / tracing observer."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from asyncio_throttle import Throttler

from gateway.draft_pool import DraftPool
from gateway.job import JobSpec
from gateway.metrics import GatewayMetrics
from gateway.observe import Observer
from gateway.orchestrator import Orchestrator, Overloaded, SchedulerConfig
from gateway.replicas import TargetPool
from gateway.text import TextCodec
from specgrove.auth import KeyPolicy
from specgrove.errors import InvalidRequest, ServiceError
from specgrove.ports import DraftPort, TargetPort
from specgrove.telemetry import TelemetryConfig
from specgrove.tls import TlsConfig
from specgrove.types import TargetInfo, TreeBudget


ADMIN_METHODS = ("/specgrove.v1.Gateway/LoadDrafter", "/specgrove.v1.Gateway/UnloadDrafter",
                 "/specgrove.v1.Gateway/ClearDrafter",
                 "POST /v1/drafters", "DELETE /v1/drafters")  # gRPC methods, REST calls


@dataclass(frozen=True)
class GatewayConfig:
    # The target and draft replicas: HOST:PORT, or dns:NAME:PORT for every address of a name
    # (gateway.discovery); one address or several.
    target: str | tuple[str, ...]
    draft: str | tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 50050
    model_dir: str | None = None  # tokenizer location; default: the target's model
    default_budget: TreeBudget = field(default_factory=lambda: TreeBudget(max_nodes=8, max_depth=4))
    default_max_tokens: int = 16  # /v1/completions without max_tokens (OpenAI's default)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    api_keys: tuple[str, ...] = ()  # REST and gRPC callers must send one (none = open)
    admin_keys: tuple[str, ...] = ()  # required for loading / unloading drafters when given
    service_token: str = ""  # sent to the target and draft services
    tls: TlsConfig | None = None  # the gRPC port's TLS and the client certificate towards the services
    max_requests_per_second: int = 0  # admission rate limit (0 = none); excess requests wait
    max_body_bytes: int = 1 << 20
    served_model_names: tuple[str, ...] = ()  # what clients call the model [the target's name]
    chat_template: str | None = None  # a Jinja file replacing the tokenizer's chat template
    log_requests: bool = True  # one INFO line per finished request
    log_stats_interval_s: float = 10.0  # a stats line this often while there is work (0 = never)
    rpc_timeout_s: float = 30.0
    grace_s: float = 30.0
    health_poll_s: float = 0.5  # how often the services' gRPC health is checked
    resolve_s: float = 10.0  # how often dns: replica names are looked up again
    telemetry: TelemetryConfig = TelemetryConfig()


    @property
    def targets(self) -> tuple[str, ...]:
        return (self.target,) if isinstance(self.target, str) else tuple(self.target)

    @property
    def drafts(self) -> tuple[str, ...]:
        return (self.draft,) if isinstance(self.draft, str) else tuple(self.draft)


class GatewayState:
    def __init__(self, cfg: GatewayConfig, target: TargetPort | TargetPool, draft: DraftPort | DraftPool,
                 info: TargetInfo, codec: TextCodec, tracer=None) -> None:
        self.cfg, self.info, self.codec = cfg, info, codec
        self.metrics = GatewayMetrics()
        self.observer = obs = Observer(tracer, self.metrics, info.model, log_requests=cfg.log_requests)
        self.orchestrator = orch = Orchestrator(cfg.scheduler, target, draft, codec, info, obs)
        self.target, self.draft = orch.targets, orch.draft  # the replica pools
        self.metrics.bind_gauges(lambda: len(orch.running), lambda: len(orch.waiting), self.kv_usage)
        self.drafters: set[str] = set()
        self.default_drafter = ""
        self.draining = False
        self.metrics.bind_health(lambda: orch.target_ok, lambda: self.draft_ok)
        self.metrics.bind_replicas({"target": self.target, "draft": self.draft})
        rate = cfg.max_requests_per_second
        self.throttle = Throttler(rate_limit=rate, period=1.0) if rate > 0 else None
        self.auth = KeyPolicy(cfg.api_keys, cfg.admin_keys, ADMIN_METHODS)

    @property
    def draft_ok(self) -> bool:
        """Whether some draft replica serves, as last polled."""
        return self.draft.any_serving

    def kv_usage(self) -> float:
        """The fraction of KV blocks in use over the serving target replicas."""
        free, total = self.target.free_blocks, self.target.total_blocks
        return 0.0 if free is None or not total else 1.0 - free / total

    @property
    def model_names(self) -> tuple[str, ...]:
        """The names clients may use; the first is the one responses carry."""
        return self.cfg.served_model_names or (self.info.model,)

    @property
    def model_id(self) -> str:
        return self.model_names[0]

    def check_model(self, name: str) -> None:
        if name not in self.model_names:
            raise InvalidRequest("model", f"unknown model {name!r}; this server serves "
                                          f"{', '.join(repr(n) for n in self.model_names)}")

    async def refresh_drafters(self) -> None:
        try:
            infos = await self.draft.list_drafters()
        except ServiceError:
            return  # keep the last known list while the draft service is away
        self.drafters = {d.name for d in infos}
        self.default_drafter = next((d.name for d in infos if d.is_default), "")
        self.metrics.drafter_stats(infos)
        self.orchestrator.proposer.use_drafters(infos)

    async def know_drafter(self, name: str | None) -> None:
        """A drafter name not seen yet may have been loaded on the draft service directly:
        ask it again before refusing the name (the list is refreshed, never guessed)."""
        if name and name != "none" and name not in self.drafters:
            await self.refresh_drafters()

    @property
    def tracing(self) -> bool:
        return self.observer.tracer is not None

    async def admit(self) -> None:
        """Wait for the admission rate limit (smooths bursts; the queue limit still answers 429)."""
        if self.throttle is not None:
            await self.throttle.acquire()

    def submit(self, spec: JobSpec, trace_parent=None):
        if self.draining:
            raise Overloaded("the gateway is shutting down")
        return self.orchestrator.submit(spec, trace_parent)

    async def drain(self, grace_s: float) -> None:
        """Stop admitting; give running work ``grace_s`` to finish."""
        self.draining = True
        deadline = asyncio.get_running_loop().time() + grace_s
        while not self.orchestrator.idle and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
