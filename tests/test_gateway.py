"""The gateway over real target / draft gRPC servers, driven by real HTTP and gRPC clients."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import grpc
import httpx
import openai
import pytest

from gateway.state import GatewayConfig
from gateway.text import TextCodec
from specgrove.pb.v1 import common_pb2, draft_pb2, gateway_pb2, gateway_pb2_grpc
from tests.gateway_stack import running_stack
from tests.helpers import draft_engine, generate, request, target_engine

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def stack(tiny_dirs):
    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"]) as running:
        yield running


@pytest.fixture(scope="module")
def reference(tiny_dirs):
    """Plain greedy decoding of a prompt's tokens in process (the same step loop, stop tokens
    and detokenization, without the servers)."""
    codec = TextCodec(tiny_dirs["llama"])
    engine, drafts = target_engine(tiny_dirs["llama"]), draft_engine()

    def run(prompt_ids, max_tokens=MAX_TOKENS):
        out = generate(engine, drafts, [request(prompt_ids, max_tokens, ignore_eos=False)], codec=codec)[0]
        return out.token_ids, out.text

    return codec, run


def _client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["http"] + "/v1", api_key="unused", max_retries=0)


def test_openai_client_completions_and_chat(stack, reference):
    codec, run = reference
    client = _client(stack)
    prompt = "the quick brown fox"
    _, want = run(codec.encode(prompt))
    c = client.completions.create(model=stack["model"], prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
    assert c.choices[0].text == want
    assert c.usage.completion_tokens >= 1 and c.choices[0].finish_reason in ("stop", "length")
    extra = c.model_extra["specgrove"]
    assert extra["steps"] >= 1 and extra["mean_acceptance_length"] >= 1.0
    chunks = list(client.completions.create(model=stack["model"], prompt=prompt, max_tokens=MAX_TOKENS,
                                            temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == want
    messages = [{"role": "user", "content": "hello world"}]
    _, want_chat = run(codec.encode_chat(messages))
    r = client.chat.completions.create(model=stack["model"], messages=messages, max_tokens=MAX_TOKENS,
                                       temperature=0)
    assert r.choices[0].message.content == want_chat and r.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model=stack["model"], messages=messages, max_tokens=MAX_TOKENS,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    parts = list(stream)
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == want_chat
    assert parts[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [m.id for m in client.models.list().data] == [stack["model"]]


@pytest.mark.parametrize("speculation", [
    None, {"drafter": "small", "tree": "3,2"}, {"drafter": "lookup", "tree": {"nodes": 8, "depth": 4}},
    {"drafter": "none"},
])
def test_greedy_through_gateway_equals_in_process(stack, reference, speculation):
    codec, run = reference
    prompt = "hello world, speculative decoding hello world"
    want_ids, want = run(codec.encode(prompt))
    body = {"model": stack["model"], "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
    if speculation:
        body["speculation"] = speculation
    r = httpx.post(stack["http"] + "/v1/completions", json=body, timeout=60).json()
    assert r["choices"][0]["text"] == want
    assert r["usage"]["completion_tokens"] == len(want_ids)
    stats = r["specgrove"]
    if speculation and speculation.get("drafter") == "none":
        assert stats["drafter"] == "none" and stats["drafted_tokens"] == 0
    elif speculation:
        assert stats["drafter"] == speculation["drafter"]


def test_grpc_generate_stream_tokens_and_admin(stack, reference):
    codec, run = reference
    prompt = "the lazy dog"
    want_ids, _ = run(codec.encode(prompt))

    async def main():
        async with grpc.aio.insecure_channel(stack["grpc"]) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            req = gateway_pb2.GenerateRequest(
                model=stack["model"], prompt=prompt, max_tokens=MAX_TOKENS,
                sampling=common_pb2.SamplingParams(temperature=0, top_p=1),
                speculation=gateway_pb2.Speculation(drafter="small"), request_id="r1")
            msgs = [m async for m in stub.Generate(req, timeout=60)]
            drafters = await stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                req.sampling.top_p = 2.0
                [m async for m in stub.Generate(req, timeout=10)]
            return msgs, drafters, bad.value

    msgs, drafters, bad = asyncio.run(main())
    assert [t for m in msgs for t in m.token_ids] == want_ids
    assert msgs[0].effective.drafter == "small" and msgs[-1].finish_reason in ("stop", "length")
    assert msgs[-1].speculation.steps >= 1 and msgs[-1].usage.completion_tokens == len(want_ids)
    assert {d.name for d in drafters.drafters} == {"lookup", "small"}
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_p" in bad.details()


def test_grpc_ignore_eos_generates_past_end_of_sequence(stack):
    """An end-of-sequence token forced by logit_bias ends the request, unless ignore_eos."""
    async def run(ignore_eos: bool):
        async with grpc.aio.insecure_channel(stack["grpc"]) as ch:
            req = gateway_pb2.GenerateRequest(
                model=stack["model"], prompt="the lazy dog", max_tokens=6, ignore_eos=ignore_eos,
                sampling=common_pb2.SamplingParams(temperature=0, logit_bias={2: 100.0}))
            return [m async for m in gateway_pb2_grpc.GatewayStub(ch).Generate(req, timeout=60)]

    stopped, kept_going = asyncio.run(run(False)), asyncio.run(run(True))
    assert [t for m in stopped for t in m.token_ids] == [2] and stopped[-1].finish_reason == "stop"
    assert [t for m in kept_going for t in m.token_ids] == [2] * 6 and kept_going[-1].finish_reason == "length"


def test_concurrent_requests_are_batched(stack, reference):
    codec, run = reference
    prompts = [f"fox {'dog ' * i}" for i in range(8)]
    wants = [run(codec.encode(p), 8 + 2 * i)[1] for i, p in enumerate(prompts)]

    async def main():
        async with httpx.AsyncClient(timeout=120) as client:
            calls = [client.post(stack["http"] + "/v1/completions", json={
                "model": stack["model"], "prompt": p, "max_tokens": 8 + 2 * i, "temperature": 0})
                for i, p in enumerate(prompts)]
            return [r.json() for r in await asyncio.gather(*calls)]

    outs = asyncio.run(main())
    assert [o["choices"][0]["text"] for o in outs] == wants
    assert max(o["specgrove"]["max_batch_size"] for o in outs) > 1


def _free_blocks(stack) -> int:
    gw = stack["gw"]
    return stack["loop"].run(gw.state.target.replicas[0].port.info()).free_blocks


def _wait_idle(stack) -> None:
    """Wait until the previous test's last request has left the batch."""
    deadline = time.monotonic() + 10
    while not stack["gw"].state.orchestrator.idle and time.monotonic() < deadline:
        time.sleep(0.02)


def test_disconnect_mid_stream_frees_kv(stack):
    _wait_idle(stack)
    baseline = _free_blocks(stack)
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", stack["http"] + "/v1/completions", json={
                "model": stack["model"], "prompt": "fox", "max_tokens": 400, "temperature": 0.7,
                "stream": True, "speculation": {"drafter": "small"}}) as resp:
            lines = resp.iter_lines()
            got = [next(lines) for _ in range(3)]
            assert got[0].startswith("data: ")
        # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 10
    while _free_blocks(stack) != baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _free_blocks(stack) == baseline
    assert stack["gw"].state.orchestrator.idle


def test_a_chunked_body_over_the_limit_is_refused_by_what_was_read(stack):
    def body():  # no Content-Length: chunked transfer encoding
        yield b'{"model": "m", "prompt": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = httpx.post(stack["http"] + "/v1/completions", content=body(), timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "exceeds the limit" in r.json()["error"]["message"]


def test_disconnect_of_a_non_streamed_request_cancels_it(stack):
    _wait_idle(stack)
    baseline = _free_blocks(stack)
    orch = stack["gw"].state.orchestrator
    body = {"model": stack["model"], "prompt": "fox", "max_tokens": 480, "temperature": 0.7,
            "ignore_eos": True, "speculation": {"drafter": "small"}}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(stack["http"] + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
    job = orch.running[0] if orch.running else None
    deadline = time.monotonic() + 10
    while not orch.idle and time.monotonic() < deadline:
        time.sleep(0.05)
    assert orch.idle and _free_blocks(stack) == baseline
    if job is not None:  # caught while running: it stopped early, not after 480 tokens
        assert job.done and len(job.tokens) < 480


BAD = [
    ("not json", "malformed JSON"),
    (json.dumps([1, 2]), "JSON object"),
    (json.dumps({"prompt": "hi", "max_tokens": 4}), "model"),
    (json.dumps({"model": "M", "prompt": "hi", "max_tokens": "four"}), "max_tokens"),
    (json.dumps({"model": "M", "prompt": "hi", "temperature": -0.5}), "temperature"),
    (json.dumps({"model": "M", "prompt": "hi", "top_p": 0}), "top_p"),
    (json.dumps({"model": "M", "prompt": "hi", "top_p": 1.5}), "top_p"),
    (json.dumps({"model": "M", "prompt": "hi", "max_tokens": 0}), "max_tokens"),
    (json.dumps({"model": "M", "prompt": "hi", "max_tokens": 100000}), "exceed the context"),
    (json.dumps({"model": "M", "prompt": ""}), "empty"),
    (json.dumps({"model": "nope", "prompt": "hi"}), "unknown model"),
    (json.dumps({"model": "M", "prompt": "hi", "speculation": {"drafter": "ghost"}}), "unknown drafter"),
    (json.dumps({"model": "M", "prompt": "hi", "speculation": {"tree": "9,9,9"}}), "exceed"),
    (json.dumps({"model": "M", "prompt": "hi", "n": 100}), "n"),
    (json.dumps({"model": "M", "prompt": "x" * (2 << 20)}), "exceeds the limit"),
    ('{"model": "M", "prompt": "ab\\ud800cd"}', "surrogate"),
    ('{"model": "M", "prompt": "hi", "max_tokens": ' + "9" * 5000 + "}", "digits"),
    ('{"model": "M", "prompt": "hi", "x": ' + "[" * 100000 + "]" * 100000 + "}", "body"),
    (json.dumps({"model": "M", "prompt": "hi", "speculation": {"tree": ",".join(["1"] * 20000)}}), "tree"),
]


@pytest.mark.parametrize("body,needle", BAD, ids=[n for _, n in BAD])
def test_bad_input_is_a_400_with_an_openai_error(stack, body, needle):
    body = body.replace('"M"', json.dumps(stack["model"]))
    r = httpx.post(stack["http"] + "/v1/completions", content=body,
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"] + str(err["param"])
    ok = httpx.post(stack["http"] + "/v1/completions", timeout=30,
                    json={"model": stack["model"], "prompt": "fox", "max_tokens": 2})
    assert ok.status_code == 200


@pytest.mark.parametrize("method,path,status", [("GET", "/v1/nothing", 404), ("GET", "/v1/completions", 405),
                                                ("DELETE", "/v1/models", 405)])
def test_unknown_routes_get_openai_errors(stack, method, path, status):
    r = httpx.request(method, stack["http"] + path, timeout=10)
    assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_chat_bad_messages(stack):
    for body in ({"model": stack["model"], "messages": []},
                 {"model": stack["model"], "messages": [{"role": "wizard", "content": "hi"}]},
                 {"model": stack["model"], "messages": [{"role": "user"}]}):
        r = httpx.post(stack["http"] + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")


def test_health(stack):
    assert httpx.get(stack["http"] + "/health", timeout=10).json() == {
        "status": "ok", "target": "serving", "draft": "serving", "draining": False}


def test_gateway_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; "
            "import gateway.server, gateway.http_api, gateway.grpc_api, specgrove.clients; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_admission_rate_limit_spaces_requests(tiny_dirs):
    from gateway.state import GatewayState
    from specgrove.clients import DraftClient, TargetClient
    from specgrove.types import TargetInfo

    async def main():
        info = TargetInfo("m", 320, 512, 4, 100, 100, 1, (2,), 8, 32, "float32")
        state = GatewayState(GatewayConfig("127.0.0.1:1", "127.0.0.1:1", max_requests_per_second=5),
                             TargetClient("127.0.0.1:1"), DraftClient("127.0.0.1:1"), info,
                             TextCodec(tiny_dirs["llama"]))
        start = time.monotonic()
        for _ in range(11):  # 5 per second: the 11th waits for the third second to begin
            await state.admit()
        return time.monotonic() - start

    assert asyncio.run(main()) >= 2.0


def test_rest_grpc_and_specgrove_generate_agree_on_a_seeded_request(stack, tiny_dirs):
    """One request, three entry points, one step loop: the same tokens and text."""
    from specgrove.cli.generate_cmd import GenerateOptions, run_generate

    prompt, seed = "the quick brown fox", 11
    cli = run_generate(GenerateOptions(
        target=str(tiny_dirs["llama"]), drafter="none", prompt=prompt, chat=False,
        max_tokens=16, temperature=0.8, top_p=0.9, top_k=0, seed=seed, tree="8:4",
        dtype="float64", quantization="none", device="cpu", kernel_backend="torch",
        block_size=4, kv_blocks=256, as_json=True))
    rest = httpx.post(stack["http"] + "/v1/completions", timeout=60, json={
        "model": stack["model"], "prompt": prompt, "max_tokens": 16, "temperature": 0.8,
        "top_p": 0.9, "seed": seed, "speculation": {"drafter": "none"}}).json()

    async def via_grpc():
        async with grpc.aio.insecure_channel(stack["grpc"]) as ch:
            req = gateway_pb2.GenerateRequest(
                model=stack["model"], prompt=prompt, max_tokens=16,
                sampling=common_pb2.SamplingParams(temperature=0.8, top_p=0.9, seed=seed),
                speculation=gateway_pb2.Speculation(off=True))
            stream = gateway_pb2_grpc.GatewayStub(ch).Generate(req, timeout=60)
            return [t async for m in stream for t in m.token_ids]

    assert rest["choices"][0]["text"] == cli["text"]
    assert rest["usage"]["completion_tokens"] == len(cli["token_ids"])
    assert asyncio.run(via_grpc()) == cli["token_ids"]


EXTREME = [
    ({"temperature": 1e-300}, 200), ({"temperature": 1e-45, "top_p": 1e-320}, 200),
    ({"top_p": 1e-320}, 200), ({"top_k": 3_000_000_000}, 400),
    ({"speculation": {"tree": {"nodes": 8, "depth": 3, "top_k": 3_000_000_000}}}, 400),
    ({"speculation": {"tree": ",".join(["1"] * 20000)}}, 400),
]


@pytest.mark.parametrize("extra,status", EXTREME, ids=[str(e)[:40] for e, _ in EXTREME])
def test_extreme_sampling_values_are_served_or_refused_cleanly(stack, extra, status):
    """Tiny temperatures decode greedily (below 1e-5), tiny top_p keeps the top token; values
    beyond the wire types are a 400 naming the field. The server keeps serving."""
    body = {"model": stack["model"], "prompt": "the quick brown fox", "max_tokens": 6, **extra}
    r = httpx.post(stack["http"] + "/v1/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    if status == 200:
        greedy = httpx.post(stack["http"] + "/v1/completions", timeout=60, json={
            "model": stack["model"], "prompt": "the quick brown fox", "max_tokens": 6, "temperature": 0})
        assert r.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
    assert httpx.get(stack["http"] + "/health", timeout=10).status_code == 200


def test_a_drafter_loaded_on_the_draft_service_directly_is_usable_at_once(stack):
    from specgrove.clients import DraftClient

    async def load():
        async with DraftClient(stack["gw"].state.draft.replicas[0].address) as d:
            await d.load_drafter("lookup5", "ngram:5")

    asyncio.run(load())
    r = httpx.post(stack["http"] + "/v1/completions", timeout=60, json={
        "model": stack["model"], "prompt": "fox fox fox", "max_tokens": 6, "temperature": 0,
        "speculation": {"drafter": "lookup5"}})
    assert r.status_code == 200, r.text
    assert r.json()["specgrove"]["drafter"] == "lookup5"
