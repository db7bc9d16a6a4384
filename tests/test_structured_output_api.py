"""Structured output through the real gateway, with the official ``openai`` client and gRPC:
OpenAI's ``response_format`` (json_object, json_schema) and vLLM's ``guided_json``,
``guided_regex``, ``guided_choice`` and ``structured_outputs`` on both routes; the same tokens
with speculation on and off (greedy and seeded, several choices at once); a grammar that does
not compile is a 400 with OpenAI's error body for that request alone, and the server keeps
serving."""
from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import openai
import pytest

from specgrove.pb.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.gateway_stack import running_stack
from tests.test_structured_output import SCHEMA

CHAT = [{"role": "user", "content": "Describe the fox as JSON."}]
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "fox", "schema": SCHEMA, "strict": True}}
SPECULATION = [{"drafter": "none"}, {"drafter": "lookup", "tree": "4,2,1"}, {"drafter": "small", "tree": "8:4:3"},
               {"drafter": "small", "tree": "3,2,1"}]


@pytest.fixture(scope="module")
def stack(tiny_dirs):
    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack["http"] + "/v1", api_key="unused", max_retries=0)


def _schema_ok(text: str) -> bool:
    obj = json.loads(text)
    return (set(obj) == {"ok", "color", "n"} and isinstance(obj["ok"], bool)
            and obj["color"] in ("red", "green", "blue") and 0 <= obj["n"] <= 99)


def test_chat_json_schema_is_the_same_under_every_speculation(stack, client):
    outs = []
    for spec in SPECULATION:
        r = client.chat.completions.create(model=stack["model"], messages=CHAT, max_tokens=60, temperature=0,
                                           response_format=JSON_SCHEMA_FORMAT, extra_body={"speculation": spec})
        assert r.choices[0].finish_reason == "stop"
        assert _schema_ok(r.choices[0].message.content), r.choices[0].message.content
        outs.append(r.choices[0].message.content)
    assert len(set(outs)) == 1
    streamed = client.chat.completions.create(model=stack["model"], messages=CHAT, max_tokens=60, temperature=0,
                                              response_format=JSON_SCHEMA_FORMAT, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == outs[0]


def test_seeded_choices_are_the_same_under_every_speculation(stack, client):
    """n = 3 seeded choices in one batch, under each speculation setting: one set of texts."""
    seen = []
    for spec in SPECULATION:
        r = client.completions.create(model=stack["model"], prompt='{"ok": true, "color": ', max_tokens=60,
                                      temperature=1.0, seed=11, n=3,
                                      extra_body={"guided_json": SCHEMA, "speculation": spec})
        for c in r.choices:
            if c.finish_reason == "stop":
                assert _schema_ok(c.text), c.text
        seen.append([(c.text, c.finish_reason) for c in r.choices])
    assert all(s == seen[0] for s in seen)


def test_json_object_regex_choice_and_structured_outputs(stack, client):
    obj = client.chat.completions.create(model=stack["model"], messages=CHAT, max_tokens=120, temperature=0,
                                         response_format={"type": "json_object"})
    text = obj.choices[0].message.content
    assert text.startswith("{")
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    choices = ["red fox", "lazy dog", "brown"]
    for extra in ({"guided_choice": choices}, {"structured_outputs": {"choice": choices}}):
        r = client.completions.create(model=stack["model"], prompt="the quick", max_tokens=10, temperature=0,
                                      extra_body=extra)
        assert r.choices[0].text in choices and r.choices[0].finish_reason == "stop"
    for extra in ({"guided_regex": r"(yes|no), [a-z]{2,5}!"}, {"structured_outputs": {"regex": r"(yes|no), [a-z]{2,5}!"}}):
        r = client.chat.completions.create(model=stack["model"], messages=CHAT, max_tokens=12, temperature=0,
                                           extra_body=extra)
        assert re.fullmatch(r"(yes|no), [a-z]{2,5}!", r.choices[0].message.content)
    as_text = client.completions.create(model=stack["model"], prompt="fox", max_tokens=60, temperature=0,
                                        extra_body={"guided_json": json.dumps(SCHEMA)})
    as_object = client.completions.create(model=stack["model"], prompt="fox", max_tokens=60, temperature=0,
                                          extra_body={"response_format": JSON_SCHEMA_FORMAT})
    assert as_text.choices[0].text == as_object.choices[0].text and _schema_ok(as_text.choices[0].text)


BAD = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}},
     None, 'Unsupported type "foo"'),
    ({"guided_regex": "a("}, None, "regular expression does not compile"),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"guided_json": [1, 2]}, "guided_json", "a JSON schema is an object"),
    ({"guided_choice": []}, "guided_choice", "choice needs 1 to"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema.schema", "needs a schema"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "guided_regex", "not several"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs.choice", "not several"),
    ({"structured_outputs": {"grammar": "root ::= 'a'"}}, "structured_outputs.grammar", None),
    ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "ignore_eos", "cannot be combined"),
    ({"guided_choice": ["a"], "min_tokens": 2}, "min_tokens", "cannot be combined"),
]


@pytest.mark.parametrize("extra,param,message", BAD, ids=[str(b[0])[:60] for b in BAD])
def test_a_bad_grammar_is_a_400_and_the_server_keeps_serving(stack, client, extra, param, message):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=stack["model"], messages=CHAT, max_tokens=8, extra_body=extra)
    body = err.value.body
    assert body["type"] == "invalid_request_error"
    if param is not None:
        assert body["param"] == param
    if message is not None:
        assert message in body["message"], body
    ok = client.chat.completions.create(model=stack["model"], messages=CHAT, max_tokens=10, temperature=0,
                                        extra_body={"guided_choice": ["yes", "no"]})
    assert ok.choices[0].message.content in ("yes", "no")


def test_a_bad_grammar_admitted_with_good_requests_fails_alone(stack, client):
    """Requests sent together are prefilled in one batch; the target refuses the batch, the
    step loop prefills them one by one, and only the bad one fails."""
    def good(i):
        return client.completions.create(model=stack["model"], prompt=f"fox {i}", max_tokens=10, temperature=0,
                                         extra_body={"guided_choice": ["yes", "no"]}).choices[0].text

    def bad():
        with pytest.raises(openai.BadRequestError, match="does not compile"):
            client.completions.create(model=stack["model"], prompt="fox", max_tokens=10,
                                      extra_body={"guided_regex": "[z-a]"})
        return "refused"

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(good, i) for i in range(3)] + [pool.submit(bad)] + [pool.submit(good, i) for i in range(3, 5)]
        results = [f.result(timeout=120) for f in futures]
    assert results.count("refused") == 1 and all(r in ("yes", "no") for r in results if r != "refused")


def test_grpc_generate_takes_the_grammar(stack):
    async def go():
        async with grpc.aio.insecure_channel(stack["grpc"]) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            grammar = common_pb2.Grammar(choice=common_pb2.Grammar.Choices(options=["red fox", "lazy dog"]))
            req = gateway_pb2.GenerateRequest(model=stack["model"], prompt="the quick", max_tokens=10,
                                              sampling=common_pb2.SamplingParams(temperature=0, grammar=grammar))
            msgs = [m async for m in stub.Generate(req, timeout=60)]
            schema = common_pb2.SamplingParams(temperature=0, grammar=common_pb2.Grammar(json_schema=json.dumps(SCHEMA)))
            js = [m async for m in stub.Generate(gateway_pb2.GenerateRequest(
                model=stack["model"], prompt="fox", max_tokens=60, sampling=schema), timeout=60)]
            bad = gateway_pb2.GenerateRequest(model=stack["model"], prompt="fox", max_tokens=4, sampling=common_pb2.SamplingParams(
                grammar=common_pb2.Grammar(regex="a(")))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [m async for m in stub.Generate(bad, timeout=60)]
            return msgs, js, err.value

    msgs, js, err = asyncio.run(go())
    assert "".join(m.text for m in msgs) in ("red fox", "lazy dog") and msgs[-1].finish_reason == "stop"
    assert _schema_ok("".join(m.text for m in js)) and js[-1].finish_reason == "stop"
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not compile" in err.details()
