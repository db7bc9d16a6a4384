"""Reading trace files: OTLP/JSON lines, as written by ``--trace-file`` or by the OpenTelemetry
Collector's ``file`` exporter, into plain span records, and the per-request view of them that
``specgrove trace`` prints.

A request is a span with ``gen_ai.operation.name`` (the gateway's request span). Its steps are
the ``step`` spans that link to it; the request span's ``specgrove.step`` events carry what each
step did for that request (tree size, accepted tokens), and name the step span. Inside a step
span, the gRPC client spans to the draft service (``Prefill``, ``Propose``) are draft time, the
client span of the target's ``Verify`` is verify time; the rest of the step is "other"
(releases, the gateway's own work).
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class EventRecord:
    name: str
    time_ns: int
    attrs: dict[str, Any]


@dataclass
class SpanRecord:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    kind: int  # OTLP: 1 internal, 2 server, 3 client
    start_ns: int
    end_ns: int
    attrs: dict[str, Any] = field(default_factory=dict)
    events: list[EventRecord] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace id, span id)
    status: int = 0  # 0 unset, 1 ok, 2 error

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(v: dict) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return _attrs(v["kvlistValue"].get("values", []))
    return None


def _attrs(items: Iterable[dict] | None) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value", {})) for a in items or ()}


def _hex_id(raw: str | None, nbytes: int) -> str:
    """OTLP/JSON ids are hex; protobuf's own JSON mapping writes base64: accept both."""
    if not raw:
        return ""
    if len(raw) == 2 * nbytes:
        return raw.lower()
    try:
        return base64.b64decode(raw).hex()
    except (binascii.Error, ValueError):
        return raw


def _kind(raw: Any) -> int:
    if isinstance(raw, str):  # enum names, if a writer used them
        return {"SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3}.get(raw, 0)
    return int(raw or 0)


def _span(s: dict, service: str) -> SpanRecord:
    return SpanRecord(
        trace_id=_hex_id(s.get("traceId"), 16), span_id=_hex_id(s.get("spanId"), 8),
        parent_id=_hex_id(s.get("parentSpanId"), 8), name=s.get("name", ""), service=service,
        kind=_kind(s.get("kind")), start_ns=int(s.get("startTimeUnixNano", 0)),
        end_ns=int(s.get("endTimeUnixNano", 0)), attrs=_attrs(s.get("attributes")),
        events=[EventRecord(e.get("name", ""), int(e.get("timeUnixNano", 0)), _attrs(e.get("attributes")))
                for e in s.get("events", [])],
        links=[(_hex_id(l.get("traceId"), 16), _hex_id(l.get("spanId"), 8)) for l in s.get("links", [])],
        status=int((s.get("status") or {}).get("code", 0) or 0))


def parse_line(obj: dict) -> list[SpanRecord]:
    out = []
    for rs in obj.get("resourceSpans", []):
        service = str(_attrs((rs.get("resource") or {}).get("attributes")).get("service.name", ""))
        for ss in rs.get("scopeSpans", []) or rs.get("instrumentationLibrarySpans", []):
            out.extend(_span(s, service) for s in ss.get("spans", []))
    return out


def read_spans(path: str) -> tuple[list[SpanRecord], int]:
    """All spans in the file, and the number of lines that could not be read."""
    spans, bad = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                spans.extend(parse_line(json.loads(line)))
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1  # a line cut short by a crash, or another signal's data
    return spans, bad


# --- the per-request view ------------------------------------------------------------------------
@dataclass
class RequestInfo:
    span: SpanRecord
    request_id: str
    output_tokens: int
    steps: int
    mean_acceptance_length: float
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float


@dataclass
class StepInfo:
    index: int  # the request's own step number, from 1
    start_ms: float  # from the request span's start
    end_ms: float
    batch_size: int
    tree_nodes: int
    tree_depth: int
    accepted: int
    drafter: str
    draft: list[tuple[float, float]]  # (start_ms, end_ms) of the draft service calls
    verify: list[tuple[float, float]]
    forward_ms: float  # the target's forward inside Verify (server side)

    @property
    def total_ms(self) -> float:
        return self.end_ms - self.start_ms

    @property
    def draft_ms(self) -> float:
        return sum(b - a for a, b in self.draft)

    @property
    def verify_ms(self) -> float:
        return sum(b - a for a, b in self.verify)

    @property
    def other_ms(self) -> float:
        return max(self.total_ms - self.draft_ms - self.verify_ms, 0.0)


def _rpc(span: SpanRecord) -> tuple[str, str]:
    service, method = span.attrs.get("rpc.service"), span.attrs.get("rpc.method")
    if service is None and span.name.count("/") == 2:
        service, method = span.name.lstrip("/").split("/", 1)
    return str(service or ""), str(method or "")


class TraceIndex:
    def __init__(self, spans: list[SpanRecord]) -> None:
        self.spans = spans
        self.by_id = {s.span_id: s for s in spans}
        self.children: dict[str, list[SpanRecord]] = {}
        for s in spans:
            if s.parent_id:
                self.children.setdefault(s.parent_id, []).append(s)

    def requests(self) -> list[RequestInfo]:
        reqs = [self._request(s) for s in self.spans if "gen_ai.operation.name" in s.attrs]
        return sorted(reqs, key=lambda r: r.span.start_ns)

    def _request(self, s: SpanRecord) -> RequestInfo:
        events = [e for e in s.events if e.name == "specgrove.step"]
        # The totals the gateway set at the end; the events if it did not (or a limit cut them).
        steps = int(s.attrs.get("specgrove.steps", len(events)))
        accepted = int(s.attrs.get("specgrove.accepted_tokens", sum(
            int(e.attrs.get("specgrove.accepted_tokens", 0)) for e in events)))
        first = next((e for e in s.events if e.name == "specgrove.first_token"), None)
        ttft = s.attrs.get("specgrove.ttft_s")
        if ttft is None and first is not None:
            ttft = (first.time_ns - s.start_ns) / 1e9
        tpot = s.attrs.get("specgrove.tpot_s")
        rid = s.attrs.get("gen_ai.response.id") or s.attrs.get("specgrove.request_id") or s.span_id
        return RequestInfo(
            s, str(rid), int(s.attrs.get("gen_ai.usage.output_tokens", 0)), steps,
            (accepted + steps) / steps if steps else 0.0,
            None if ttft is None else ttft * 1e3, None if tpot is None else tpot * 1e3,
            s.duration_ms)

    def find(self, key: str | None) -> RequestInfo:
        """A request by id, id prefix or trace id; the latest one when ``key`` is None."""
        reqs = self.requests()
        if not reqs:
            raise LookupError("no request spans in this file (was tracing on in the gateway?)")
        if key is None:
            return reqs[-1]
        hits = [r for r in reqs if r.request_id == key or r.span.trace_id == key.lower()]
        hits = hits or [r for r in reqs if r.request_id.startswith(key)]
        if len(hits) != 1:
            raise LookupError(f"{len(hits)} requests match {key!r}" + (
                "" if hits else "; run without --request to list them"))
        return hits[0]

    def timeline(self, req: RequestInfo) -> list[StepInfo]:
        out = []
        for n, ev in enumerate((e for e in req.span.events if e.name == "specgrove.step"), 1):
            step = self.by_id.get(str(ev.attrs.get("specgrove.step.span_id", "")))
            if step is not None:
                out.append(self._step(req.span.start_ns, n, ev, step))
        return out

    def _step(self, t0: int, n: int, ev: EventRecord, step: SpanRecord) -> StepInfo:
        def ms(t: int) -> float:
            return (t - t0) / 1e6

        draft, verify, forward = [], [], 0.0
        for child in self.children.get(step.span_id, []):
            service, method = _rpc(child)
            if service.endswith("DraftService") and method in ("Prefill", "Propose"):
                draft.append((ms(child.start_ns), ms(child.end_ns)))
            elif service.endswith("TargetService") and method == "Verify":
                verify.append((ms(child.start_ns), ms(child.end_ns)))
                forward += sum(g.duration_ms for srv in self.children.get(child.span_id, [])
                               for g in self.children.get(srv.span_id, []) if g.name == "target.forward")
        a = ev.attrs
        return StepInfo(n, ms(step.start_ns), ms(step.end_ns), int(step.attrs.get("specgrove.batch_size", 0)),
                        int(a.get("specgrove.tree.nodes", 0)), int(a.get("specgrove.tree.depth", 0)),
                        int(a.get("specgrove.accepted_tokens", 0)), str(a.get("specgrove.drafter", "")),
                        sorted(draft), verify, forward)

    def prefill_ms(self, req: RequestInfo) -> list[tuple[float, float]]:
        """The (start, end) of the prefill spans that served this request, from its start."""
        key = (req.span.trace_id, req.span.span_id)
        return [((s.start_ns - req.span.start_ns) / 1e6, (s.end_ns - req.span.start_ns) / 1e6)
                for s in self.spans if s.name == "prefill" and key in s.links]
