"""Tracing for the gateway, draft and target services: one module, one set of options.

Each service calls :func:`start_telemetry` with its frozen :class:`TelemetryConfig` and gets a
:class:`Telemetry`: a tracer (``None`` when tracing is off), the gRPC interceptors of
``opentelemetry-instrumentation-grpc`` (they create client / server spans and carry the W3C
``traceparent`` in gRPC metadata) and ``shutdown`` (flushes the exporters).

Tracing is on when ``--trace-file`` or ``--otlp-endpoint`` is given, or the standard
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` / ``OTEL_TRACES_EXPORTER=otlp`` variables ask for OTLP
(``OTEL_SDK_DISABLED=true`` turns it off). The SDK itself reads the other ``OTEL_*`` variables
(sampler, batch sizes, headers, resource attributes). When off there is no tracer provider, no
span processor and no interceptor: instrumented code checks for ``None`` and does nothing.

Every service gets its own ``TracerProvider`` (never the global one), so the three services can
share one process in tests and still report as three services. Engine code running on an
engine thread reaches its service's tracer through :func:`span`, which reads a context variable
that :func:`bound` sets for the duration of an RPC (``EngineThread`` copies the context across).

The trace file holds OTLP/JSON, one ``{"resourceSpans": [...]}`` object per line: the format
of the OpenTelemetry Collector's ``file`` exporter, so ``specgrove trace`` reads both. This
module must not import torch (the gateway imports it).
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger("specgrove.telemetry")

_NULL = contextlib.nullcontext()  # reusable; entering it yields None
MAX_EVENTS_PER_SPAN = 8192
_TRACER: contextvars.ContextVar[trace.Tracer | None] = contextvars.ContextVar(
    "specgrove_tracer", default=None)


@dataclass(frozen=True)
class TelemetryConfig:
    """Tracing options of one service (``--trace-file``, ``--otlp-endpoint``, ``--service-name``)."""

    trace_file: str | None = None  # OTLP/JSON lines, appended to (several services may share it)
    otlp_endpoint: str | None = None  # overrides OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT
    service_name: str = ""  # "" -> OTEL_SERVICE_NAME, else the service's default name


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def otlp_requested(cfg: TelemetryConfig) -> bool:
    """Whether spans go to an OTLP collector: the option, or the standard variables."""
    exporters = {e.strip() for e in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    if "none" in exporters:
        return False
    return bool(cfg.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "otlp" in exporters)


def tracing_enabled(cfg: TelemetryConfig) -> bool:
    return not _env_flag("OTEL_SDK_DISABLED") and bool(cfg.trace_file or otlp_requested(cfg))


class Telemetry:
    """One service's tracing state; ``Telemetry.off()`` is the free, disabled one."""

    def __init__(self, provider=None, service_name: str = "") -> None:
        self.provider = provider
        self.service_name = service_name
        self.tracer: trace.Tracer | None = (
            provider.get_tracer("specgrove", _version()) if provider is not None else None)

    @staticmethod
    def off() -> "Telemetry":
        return Telemetry()

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def server_interceptors(self) -> list:
        """grpc.aio server interceptors: a SERVER span per RPC, parented on the caller's."""
        if self.provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        return [aio_server_interceptor(tracer_provider=self.provider, filter_=_untraced_rpcs())]

    def client_interceptors(self) -> list:
        """grpc.aio channel interceptors: a CLIENT span per call, ``traceparent`` in metadata."""
        if self.provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        return aio_client_interceptors(tracer_provider=self.provider, filter_=_untraced_rpcs())

    def force_flush(self, timeout_ms: int = 10_000) -> bool:
        return self.provider.force_flush(timeout_ms) if self.provider is not None else True

    def shutdown(self) -> None:
        """Flush and close the exporters; idempotent."""
        provider, self.provider, self.tracer = self.provider, None, None
        if provider is not None:
            provider.shutdown()


def _untraced_rpcs():
    """Health checks, reflection and ``Info`` are polled (the gateway polls the target's Info
    every half second while it loads) and say nothing about decoding."""
    from opentelemetry.instrumentation.grpc.filters import (
        any_of, health_check, method_name, negate, service_prefix)

    return negate(any_of(health_check(), service_prefix("grpc.reflection"), method_name("Info")))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("specgrove")
    except PackageNotFoundError:
        return "0"


def start_telemetry(cfg: TelemetryConfig, default_service_name: str) -> Telemetry:
    """Set up tracing for one service; ``Telemetry.off()`` when nothing asks for it."""
    if not tracing_enabled(cfg):
        return Telemetry.off()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = cfg.service_name or os.environ.get("OTEL_SERVICE_NAME") or default_service_name
    # Explicit attributes win over OTEL_RESOURCE_ATTRIBUTES, which still adds its others.
    resource = Resource.create({"service.name": name, "service.namespace": "specgrove",
                                "service.version": _version()})
    # A request span holds one event per step: the SDK's default of 128 events would cut long
    # generations short. OTEL_SPAN_EVENT_COUNT_LIMIT still overrides.
    events = int(os.environ.get("OTEL_SPAN_EVENT_COUNT_LIMIT") or MAX_EVENTS_PER_SPAN)
    provider = TracerProvider(resource=resource, span_limits=SpanLimits(max_events=events))
    sinks = []
    if cfg.trace_file:
        provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(cfg.trace_file)))
        sinks.append(f"file {cfg.trace_file}")
    if otlp_requested(cfg):
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(cfg.otlp_endpoint)))
        sinks.append(f"OTLP {cfg.otlp_endpoint or '(OTEL_EXPORTER_OTLP_* settings)'}")
    log.info("tracing %s to %s", name, ", ".join(sinks))
    return Telemetry(provider, name)


def _otlp_exporter(endpoint: str | None):
    """The OTLP span exporter for OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL (grpc by default)."""
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip()
    if endpoint and "://" not in endpoint:
        endpoint = "http://" + endpoint  # host:port means a plain-text collector (Jaeger, local)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint)
    if protocol == "http/protobuf":
        from urllib.parse import urlparse

        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        if endpoint and urlparse(endpoint).path in ("", "/"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"  # a base URL, as OTEL_..._ENDPOINT is
        return OTLPSpanExporter(endpoint=endpoint)
    raise ValueError(f"unsupported OTLP protocol {protocol!r} (use grpc or http/protobuf)")


# --- instrumentation helpers used by the services ----------------------------------------------
@contextlib.contextmanager
def bound(tracer: trace.Tracer | None) -> Iterator[None]:
    """Make ``tracer`` the one :func:`span` uses, in this context (an RPC and its engine work)."""
    if tracer is None:
        yield
        return
    token = _TRACER.set(tracer)
    try:
        yield
    finally:
        _TRACER.reset(token)


def span(name: str, attributes: Mapping[str, Any] | None = None):
    """A child span of the current one, or a free no-op context when tracing is off."""
    tracer = _TRACER.get()
    if tracer is None:
        return _NULL
    return tracer.start_as_current_span(name, attributes=attributes)


def recording_span() -> trace.Span | None:
    """The current span if it records (tracing on, sampled), else None: guards attribute work."""
    current = trace.get_current_span()
    return current if current.is_recording() else None


# --- the JSON-lines file exporter ---------------------------------------------------------------
_KIND = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}


def _any_value(value: Any) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a string in OTLP/JSON, as in proto3 JSON
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _attributes(attrs: Mapping[str, Any] | None) -> list[dict]:
    return [{"key": k, "value": _any_value(v)} for k, v in (attrs or {}).items()]


def _span_json(s) -> dict:
    ctx = s.context
    out = {"traceId": f"{ctx.trace_id:032x}", "spanId": f"{ctx.span_id:016x}",
           "name": s.name, "kind": _KIND.get(s.kind.name, 0),
           "startTimeUnixNano": str(s.start_time), "endTimeUnixNano": str(s.end_time),
           "attributes": _attributes(s.attributes)}
    if s.parent is not None:
        out["parentSpanId"] = f"{s.parent.span_id:016x}"
    if s.events:
        out["events"] = [{"timeUnixNano": str(e.timestamp), "name": e.name,
                          "attributes": _attributes(e.attributes)} for e in s.events]
    if s.links:
        out["links"] = [{"traceId": f"{l.context.trace_id:032x}", "spanId": f"{l.context.span_id:016x}",
                         "attributes": _attributes(l.attributes)} for l in s.links]
    status = {"code": s.status.status_code.value}
    if s.status.description:
        status["message"] = s.status.description
    out["status"] = status
    return out


def otlp_json(spans: Sequence) -> dict:
    """Finished SDK spans as one OTLP/JSON ``ExportTraceServiceRequest`` (ids in hex)."""
    resources: dict[int, tuple[Any, dict[tuple, list]]] = {}
    for s in spans:
        _, scopes = resources.setdefault(id(s.resource), (s.resource, {}))
        scope = s.instrumentation_scope
        key = (scope.name, scope.version or "") if scope is not None else ("", "")
        scopes.setdefault(key, []).append(_span_json(s))
    return {"resourceSpans": [
        {"resource": {"attributes": _attributes(res.attributes)},
         "scopeSpans": [{"scope": {"name": n, "version": v}, "spans": sp}
                        for (n, v), sp in scopes.items()]}
        for res, scopes in resources.values()]}


class JsonLinesSpanExporter(SpanExporter):
    """Appends each exported batch as one line of OTLP/JSON.

    The file is opened with O_APPEND and every line goes out in one ``write``: the three
    services of ``specgrove up`` append to the same file without interleaving their lines.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def export(self, spans):
        data = (json.dumps(otlp_json(spans), separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fd is None:
                return SpanExportResult.FAILURE
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # every export is written through

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
