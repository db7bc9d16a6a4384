"""Tracing across gateway, draft and target (real gRPC servers on loopback, one trace file),
the gateway's Prometheus ``/metrics``, and ``specgrove trace`` on the file."""
from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict

import grpc
import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from draft_service.server import DraftServer, DraftServerConfig
from gateway.server import GatewayServer
from gateway.state import GatewayConfig
from specgrove import telemetry
from specgrove.cli import main
from specgrove.config import ModelRunConfig
from specgrove.pb.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from specgrove.kv import KVCacheConfig
from specgrove.telemetry import TelemetryConfig, start_telemetry
from specgrove.cli.tracefile import SpanRecord, read_spans
from specgrove.types import TreeBudget
from target_service.server import TargetServer, TargetServerConfig
from target_service.local import TargetLimits
from tests.grpc_harness import ServerLoop

TRACE_ID, PARENT_ID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
SERVER, CLIENT = 2, 3  # OTLP span kinds


@pytest.fixture(scope="module")
def traced(tiny_dirs, tmp_path_factory):
    path = tmp_path_factory.mktemp("traces") / "trace.jsonl"
    tel = TelemetryConfig(trace_file=str(path))
    loop = ServerLoop()
    model = str(tiny_dirs["llama"])
    run = ModelRunConfig(model, "float64", "cpu", "torch", KVCacheConfig(4, 1024))
    draft_run = ModelRunConfig("", "float64", "cpu", "torch", KVCacheConfig(4, 1024))
    # "self" drafts with the target's own weights: greedy decoding accepts (nearly) every node.
    drafters = (("lookup", "ngram"), ("self", f"model:{model}"))

    async def start():
        target = TargetServer(TargetServerConfig(run, port=0, limits=TargetLimits(64, 32), grace_s=1,
                                                 telemetry=tel))
        draft = DraftServer(DraftServerConfig(model, drafters, "lookup", draft_run, port=0, grace_s=1,
                                              telemetry=tel))
        tport, dport = await target.start(), await draft.start()
        await target.wait_ready()
        await draft.wait_ready()
        gw = GatewayServer(GatewayConfig(
            f"127.0.0.1:{tport}", f"127.0.0.1:{dport}", port=0, grpc_port=0,
            default_budget=TreeBudget(max_nodes=6, max_depth=3), grace_s=1, telemetry=tel))
        await gw.start()
        return target, draft, gw

    target, draft, gw = loop.run(start())
    yield {"http": f"http://127.0.0.1:{gw.http_port}", "grpc": f"127.0.0.1:{gw.grpc_port}",
           "model": model, "path": str(path), "servers": (gw, draft, target), "ids": []}
    loop.run(gw.stop(0))
    loop.run(target.stop(0))
    loop.run(draft.stop(0))
    loop.close()


def _complete(traced, headers=None, **body) -> dict:
    body = {"model": traced["model"], "prompt": "the quick brown fox", "max_tokens": 16,
            "temperature": 0, **body}
    r = httpx.post(traced["http"] + "/v1/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    traced["ids"].append(r.json()["id"])
    return r.json()


def _spans(traced, done, timeout_s: float = 15.0) -> list[SpanRecord]:
    """Flush all three services until ``done(spans)``: a step span ends after the response."""
    deadline = time.monotonic() + timeout_s
    while True:
        for server in traced["servers"]:
            server.telemetry.force_flush()
        spans, bad = read_spans(traced["path"])
        assert bad == 0
        if done(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


def _request_span(spans, rid: str) -> SpanRecord:
    found = [s for s in spans if s.attrs.get("gen_ai.response.id") == rid]
    assert len(found) == 1, rid
    return found[0]


def _steps_of(spans, req: SpanRecord) -> list[SpanRecord]:
    return [s for s in spans if s.name == "step" and (req.trace_id, req.span_id) in s.links]


def _all_steps_in(rid: str):
    def done(spans):
        req = [s for s in spans if s.attrs.get("gen_ai.response.id") == rid]
        return bool(req) and len(_steps_of(spans, req[0])) == req[0].attrs["specgrove.steps"]
    return done


def _children(spans) -> dict[str, list[SpanRecord]]:
    kids = defaultdict(list)
    for s in spans:
        kids[s.parent_id].append(s)
    return kids


def _rpc_child(kids, parent: SpanRecord, method: str, service: str) -> tuple[SpanRecord, SpanRecord]:
    """The gateway's client span for ``method`` under ``parent`` and the server span under it."""
    client = [c for c in kids[parent.span_id] if c.name == method]
    assert len(client) == 1 and client[0].kind == CLIENT and client[0].service == "specgrove-gateway"
    server = kids[client[0].span_id]
    assert len(server) == 1, method
    srv = server[0]
    assert (srv.kind, srv.service, srv.name, srv.trace_id) == (SERVER, service, method, parent.trace_id)
    assert client[0].start_ns <= srv.start_ns and srv.end_ns <= client[0].end_ns
    return client[0], srv


def test_one_trace_holds_gateway_draft_and_target_spans(traced):
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    r = _complete(traced, headers, seed=7, top_p=0.9,
                  speculation={"drafter": "self", "tree": {"nodes": 6, "depth": 3}})
    stats, usage = r["specgrove"], r["usage"]
    spans = _spans(traced, _all_steps_in(r["id"]))
    req = _request_span(spans, r["id"])
    assert (req.trace_id, req.parent_id, req.kind, req.service) == (TRACE_ID, PARENT_ID, SERVER,
                                                                     "specgrove-gateway")
    a = req.attrs
    assert a["gen_ai.operation.name"] == "text_completion" and a["gen_ai.request.model"] == traced["model"]
    assert (a["gen_ai.request.max_tokens"], a["gen_ai.request.temperature"], a["gen_ai.request.top_p"],
            a["gen_ai.request.seed"]) == (16, 0.0, 0.9, 7)
    assert a["gen_ai.response.finish_reasons"] == [r["choices"][0]["finish_reason"]]
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    for key in ("steps", "drafted_tokens", "accepted_tokens", "drafter"):
        assert a[f"specgrove.{key}"] == stats[key]
    assert stats["accepted_tokens"] > 0  # the "self" drafter is accepted: the counts mean something
    events = [e for e in req.events if e.name == "specgrove.step"]
    assert len(events) == stats["steps"]
    assert sum(e.attrs["specgrove.accepted_tokens"] for e in events) == stats["accepted_tokens"]
    assert sum(e.attrs["specgrove.tree.nodes"] - 1 for e in events) == stats["drafted_tokens"]
    # Which replicas served each step (one of each here).
    gw, draft, target = traced["servers"]
    assert {e.attrs["specgrove.target.replica"] for e in events} == {f"127.0.0.1:{target.port}"}
    assert {e.attrs["specgrove.draft.replica"] for e in events if e.attrs["specgrove.drafter"] != "none"} \
        == {f"127.0.0.1:{draft.port}"}

    kids = _children(spans)
    steps = _steps_of(spans, req)
    assert {e.attrs["specgrove.step.span_id"] for e in events} == {s.span_id for s in steps}
    accepted = 0
    for step in steps:
        assert (step.trace_id, step.parent_id) == (TRACE_ID, req.span_id)  # alone: its own trace
        assert step.attrs["specgrove.batch_size"] == 1 and step.attrs["specgrove.drafter"] == "self"
        _, propose = _rpc_child(kids, step, "/specgrove.v1.DraftService/Propose", "specgrove-draft")
        _, verify = _rpc_child(kids, step, "/specgrove.v1.TargetService/Verify", "specgrove-target")
        assert {c.name for c in kids[verify.span_id]} == {"target.forward", "target.accept", "target.commit"}
        assert verify.attrs["specgrove.accepted_tokens"] == step.attrs["specgrove.accepted_tokens"]
        assert verify.attrs["specgrove.tree.nodes"] == step.attrs["specgrove.tree.nodes"]
        assert propose.attrs["specgrove.tree.nodes"] == step.attrs["specgrove.tree.nodes"]
        assert verify.attrs["specgrove.kv.blocks_used"] > 0
        (drafter,) = kids[propose.span_id]
        assert drafter.name == "draft.propose" and drafter.attrs["specgrove.drafter"] == "self"
        depths = [c.attrs["specgrove.tree.depth"] for c in kids[drafter.span_id]]
        if step.attrs["specgrove.tree.nodes"] > 1:
            assert depths == list(range(len(depths)))
            assert {c.name for c in kids[drafter.span_id]} == {"draft.expand"}
        accepted += step.attrs["specgrove.accepted_tokens"]
    assert accepted == stats["accepted_tokens"]
    (prefill,) = [s for s in kids[req.span_id] if s.name == "prefill"]
    assert (req.trace_id, req.span_id) in prefill.links
    _rpc_child(kids, prefill, "/specgrove.v1.TargetService/Prefill", "specgrove-target")


def test_grpc_generate_continues_the_callers_trace(traced):
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    async def call():
        async with grpc.aio.insecure_channel(traced["grpc"]) as ch:
            req = gateway_pb2.GenerateRequest(
                model=traced["model"], max_tokens=12, request_id="grpc-req-1",
                messages=gateway_pb2.ChatMessages(
                    messages=[gateway_pb2.ChatMessage(role="user", content="hi")]),
                sampling=common_pb2.SamplingParams(temperature=0, top_p=1),
                speculation=gateway_pb2.Speculation(drafter="lookup"))
            md = (("traceparent", f"00-{trace_id}-{parent}-01"),)
            return [m async for m in gateway_pb2_grpc.GatewayStub(ch).Generate(req, metadata=md, timeout=60)]

    msgs = asyncio.run(call())
    traced["ids"].append("grpc-req-1")
    spans = _spans(traced, _all_steps_in("grpc-req-1"))
    req = _request_span(spans, "grpc-req-1")
    server = [s for s in spans if s.span_id == req.parent_id]
    assert len(server) == 1 and server[0].name == "/specgrove.v1.Gateway/Generate"
    assert (server[0].kind, server[0].trace_id, server[0].parent_id) == (SERVER, trace_id, parent)
    assert req.attrs["gen_ai.operation.name"] == "chat" and req.trace_id == trace_id
    last = msgs[-1]
    assert req.attrs["gen_ai.usage.output_tokens"] == last.usage.completion_tokens
    assert req.attrs["specgrove.steps"] == last.speculation.steps == len(_steps_of(spans, req))
    assert req.attrs["specgrove.accepted_tokens"] == last.speculation.accepted_tokens


def test_a_step_links_every_request_it_served(traced):
    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            calls = [client.post(traced["http"] + "/v1/completions", json={
                "model": traced["model"], "prompt": f"fox {'dog ' * i}", "max_tokens": 8 + 2 * i,
                "temperature": 0, "speculation": {"drafter": "lookup"}}) for i in range(4)]
            return [r.json() for r in await asyncio.gather(*calls)]

    outs = asyncio.run(burst())
    ids = [o["id"] for o in outs]
    traced["ids"].extend(ids)
    spans = _spans(traced, lambda sp: all(_all_steps_in(i)(sp) for i in ids))
    reqs = {i: _request_span(spans, i) for i in ids}
    for rid, out in zip(ids, outs):
        assert len(_steps_of(spans, reqs[rid])) == out["specgrove"]["steps"]
    keys = {(r.trace_id, r.span_id): r for r in reqs.values()}
    shared = [s for s in spans if s.name == "step" and sum(l in keys for l in s.links) > 1]
    assert shared, "no step served two of the four requests"
    for step in shared:
        assert step.attrs["specgrove.batch_size"] == len(step.links)
        parent = keys[step.links[0]]  # the oldest job of the batch is the parent
        assert (step.trace_id, step.parent_id) == (parent.trace_id, parent.span_id)


def _scrape(traced) -> dict[str, float]:
    text = httpx.get(traced["http"] + "/metrics", timeout=10).text
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            if "le" not in sample.labels:
                totals[f"{sample.name}{{{label}}}"] += sample.value
                totals[sample.name] += sample.value
    return totals


def test_metrics_counters_equal_the_sums_over_responses(traced):
    before = _scrape(traced)
    outs = [_complete(traced, speculation={"drafter": "self", "tree": {"nodes": 5, "depth": 3}}),
            _complete(traced, prompt="hello world hello world hello", speculation={"drafter": "lookup"}),
            _complete(traced, prompt="abc", max_tokens=6, speculation={"drafter": "none"})]
    after = _scrape(traced)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    p = "specgrove:spec_decode_num_"
    stats = [o["specgrove"] for o in outs]
    assert delta(p + "drafts_total") == sum(s["steps"] for s in stats)
    assert delta(p + "draft_tokens_total") == sum(s["drafted_tokens"] for s in stats)
    assert delta(p + "accepted_tokens_total") == sum(s["accepted_tokens"] for s in stats)
    assert delta(p + "accepted_tokens_per_pos_total") == sum(s["accepted_tokens"] for s in stats)
    for s in stats:  # each request used one drafter throughout: per-label sums match too
        assert delta(f"{p}drafts_total{{drafter={s['drafter']}}}") == s["steps"]
        assert delta(f"{p}accepted_tokens_total{{drafter={s['drafter']}}}") == s["accepted_tokens"]
    first = delta(f"{p}accepted_tokens_per_pos_total{{drafter=self,position=0}}")
    assert 0 < first <= stats[0]["steps"]
    tokens = [o["usage"]["completion_tokens"] for o in outs]
    assert delta("specgrove:time_to_first_token_seconds_count") == 3
    assert delta("specgrove:time_per_output_token_seconds_count") == sum(t - 1 for t in tokens)
    assert delta("specgrove:e2e_request_latency_seconds_count") == 3
    assert delta("specgrove:generation_tokens_total") == sum(tokens)
    assert after["specgrove:num_requests_waiting"] == 0
    assert 0.0 <= after["specgrove:kv_cache_usage_perc"] <= 1.0
    assert after["specgrove:step_duration_seconds_count"] >= sum(s["steps"] for s in stats)


def test_trace_command_lists_requests_and_draws_the_timeline(traced, tmp_path):
    rid = _complete(traced, speculation={"drafter": "self"})["id"]
    _spans(traced, _all_steps_in(rid))
    out = CliRunner().invoke(main, ["trace", traced["path"]])
    assert out.exit_code == 0, out.output
    for known in traced["ids"]:
        assert known in out.output
    png = tmp_path / "timeline.png"
    out = CliRunner().invoke(main, ["trace", traced["path"], "--request", rid, "--png", str(png)])
    assert out.exit_code == 0, out.output
    spans, _ = read_spans(traced["path"])
    steps = _request_span(spans, rid).attrs["specgrove.steps"]
    timeline = out.output.split("timeline of", 1)[1]
    assert len(re.findall(r"^\s+\d+\s+\d+\.\d+\s", timeline, re.M)) == steps  # "  step  at-ms ..."
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    bad = CliRunner().invoke(main, ["trace", traced["path"], "--request", "no-such-request"])
    assert bad.exit_code == 2 and "0 requests match" in bad.stderr


@pytest.fixture
def no_otel_env(monkeypatch):
    for key in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_tracing_off_is_a_no_op(no_otel_env):
    tel = start_telemetry(TelemetryConfig(), "specgrove-test")
    assert not tel.enabled and tel.provider is None
    assert tel.server_interceptors() == [] and tel.client_interceptors() == []
    with telemetry.span("target.forward") as span:  # engine code outside any traced RPC
        assert span is None
    with telemetry.bound(None), telemetry.span("x") as span:
        assert span is None
    assert telemetry.recording_span() is None


def test_otlp_is_configured_by_the_standard_variables(no_otel_env, tmp_path):
    env = no_otel_env
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    env.setenv("OTEL_SERVICE_NAME", "from-env")
    tel = start_telemetry(TelemetryConfig(), "specgrove-test")
    assert tel.enabled and tel.service_name == "from-env" and len(tel.client_interceptors()) == 4
    tel.shutdown()
    tel = start_telemetry(TelemetryConfig(service_name="explicit"), "specgrove-test")
    assert tel.service_name == "explicit"
    tel.shutdown()
    env.setenv("OTEL_SDK_DISABLED", "true")
    assert not start_telemetry(TelemetryConfig(trace_file=str(tmp_path / "t")), "x").enabled
    env.delenv("OTEL_SDK_DISABLED")
    env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not start_telemetry(TelemetryConfig(), "x").enabled
    env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    exporter = telemetry._otlp_exporter("collector:4318")
    assert "http" in type(exporter).__module__ and exporter._endpoint == "http://collector:4318/v1/traces"
    exporter.shutdown()


def test_spans_reach_an_otlp_collector(no_otel_env):
    """--otlp-endpoint HOST:PORT: a plain-text OTLP/gRPC collector receives the spans."""
    from concurrent import futures

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        tel = start_telemetry(TelemetryConfig(otlp_endpoint=f"127.0.0.1:{port}"), "specgrove-test")
        with telemetry.bound(tel.tracer), telemetry.span("target.forward", {"specgrove.tokens": 3}):
            pass
        assert tel.force_flush(10_000)
        tel.shutdown()
    finally:
        server.stop(0)
    spans = [(rs.resource, s) for req in received for rs in req.resource_spans
             for ss in rs.scope_spans for s in ss.spans]
    assert [s.name for _, s in spans] == ["target.forward"]
    resource = {a.key: a.value.string_value for a in spans[0][0].attributes}
    assert resource["service.name"] == "specgrove-test"
