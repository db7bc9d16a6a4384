"""Every OpenAI / vLLM request field is honoured or refused, through the official client:
fields this server does not implement get 400 naming them unless they ask for nothing, content
parts and token-id prompts are prompts like any other, and the routes and stream details
clients rely on exist."""
from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from gateway.api_schema import UNSUPPORTED
from tests.gateway_stack import running_stack

# A value that asks for something, per unsupported field.
# (Structured output -- response_format, guided_json / regex / choice, structured_outputs -- is
# honoured: tests/test_structured_output_api.py.)
ASKING = {"prompt_logprobs": 1, "guided_grammar": "root ::= 'a'",
          "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
          "tool_choice": "required", "functions": [{"name": "f"}], "function_call": {"name": "f"},
          "best_of": 2, "suffix": "end", "use_beam_search": True, "length_penalty": 0.5,
          "allowed_token_ids": [1, 2], "bad_words": ["x"], "audio": {"voice": "alloy"},
          "modalities": ["text", "audio"], "prediction": {"type": "content", "content": "x"},
          "web_search_options": {}, "reasoning_effort": "high", "truncate_prompt_tokens": 5,
          "include_stop_str_in_output": True, "skip_special_tokens": False,
          "add_generation_prompt": False, "continue_final_message": True, "chat_template": "{{x}}",
          "chat_template_kwargs": {"a": 1}, "documents": [{"text": "x"}]}


@pytest.fixture(scope="module")
def stack(tiny_dirs):
    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack["http"] + "/v1", api_key="unused", max_retries=0)


def test_every_unsupported_field_has_a_test_value():
    assert set(ASKING) == set(UNSUPPORTED)


@pytest.mark.parametrize("field", sorted(ASKING))
@pytest.mark.parametrize("route", ["completions", "chat/completions"])
def test_an_unsupported_field_that_asks_for_something_is_a_400_naming_it(stack, field, route):
    body = {"model": stack["model"], "max_tokens": 2, field: ASKING[field]}
    body.update({"prompt": "fox"} if route == "completions" else {"messages": [{"role": "user", "content": "fox"}]})
    r = httpx.post(f"{stack['http']}/v1/{route}", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field and field in r.json()["error"]["message"]


def test_neutral_values_and_unknown_fields_are_accepted(stack, client):
    c = client.chat.completions.create(
        model=stack["model"], messages=[{"role": "user", "content": "fox"}], max_tokens=3, temperature=0,
        presence_penalty=0, frequency_penalty=0.0, logprobs=False, n=1, response_format={"type": "text"},
        tool_choice="none", user="u1", extra_body={"repetition_penalty": 1.0, "min_tokens": 0,
                                                  "some_future_field": {"x": 1}})
    assert c.choices[0].finish_reason in ("stop", "length")


def test_text_content_parts_are_the_joined_text(stack, client):
    def chat(content):
        return client.chat.completions.create(model=stack["model"], max_tokens=8, temperature=0,
                                              messages=[{"role": "user", "content": content}])
    parts = chat([{"type": "text", "text": "the quick"}, {"type": "text", "text": "brown fox"}])
    joined = chat("the quick\nbrown fox")
    assert parts.choices[0].message.content == joined.choices[0].message.content
    assert parts.usage.prompt_tokens == joined.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as err:
        chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
    assert err.value.body["param"] == "messages.0.content.0.type"


def test_token_id_prompts_equal_their_text(stack, client):
    from gateway.text import TextCodec

    ids = TextCodec(Path(stack["model"])).encode("the lazy dog")
    by_text = client.completions.create(model=stack["model"], prompt="the lazy dog", max_tokens=8, temperature=0)
    by_ids = client.completions.create(model=stack["model"], prompt=ids, max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        client.completions.create(model=stack["model"], prompt=[10**6], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="prompts"):
        client.completions.create(model=stack["model"], prompt=["a"] * 17, max_tokens=2)


def test_stop_token_ids_end_the_request(stack):
    def complete(**extra):
        r = httpx.post(stack["http"] + "/v1/completions", timeout=60, json={
            "model": stack["model"], "prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0,
            "ignore_eos": True, "speculation": {"drafter": "lookup", "tree": "2,2"}, **extra})
        assert r.status_code == 200, r.text
        return r.json()

    full = complete()
    assert full["usage"]["completion_tokens"] == 12
    from gateway.text import TextCodec

    codec = TextCodec(Path(stack["model"]))
    ids = codec.encode(full["choices"][0]["text"], add_special_tokens=False)
    stop = ids[len(ids) // 2]
    cut = complete(stop_token_ids=[stop])
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] < 12
    assert full["choices"][0]["text"].startswith(cut["choices"][0]["text"])


def test_model_by_id_and_usage_null_on_stream_chunks(stack, client):
    assert client.models.retrieve(stack["model"]).id == stack["model"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    with httpx.stream("POST", stack["http"] + "/v1/chat/completions", timeout=60, json={
            "model": stack["model"], "messages": [{"role": "user", "content": "fox"}], "max_tokens": 4,
            "stream": True, "stream_options": {"include_usage": True}}) as r:
        import json

        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] >= 1 and chunks[-1]["choices"] == []


def test_tokenize_and_detokenize(stack):
    r = httpx.post(stack["http"] + "/tokenize", timeout=30,
                   json={"model": stack["model"], "prompt": "the lazy dog", "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) == len(body["token_strs"]) and body["max_model_len"] > 0
    back = httpx.post(stack["http"] + "/detokenize", timeout=30, json={"model": stack["model"], "tokens": body["tokens"]})
    assert back.json()["prompt"].strip() == "the lazy dog"
    chat = httpx.post(stack["http"] + "/tokenize", timeout=30,
                      json={"model": stack["model"], "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200 and chat.json()["count"] > 1
    for path, body in (("/tokenize", {"model": stack["model"]}), ("/detokenize", {"model": stack["model"], "tokens": [-1]}),
                       ("/tokenize", {"model": "nope", "prompt": "x"})):
        assert httpx.post(stack["http"] + path, json=body, timeout=30).status_code == 400


def test_served_model_names_are_aliases(tiny_dirs):
    from dataclasses import replace

    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"]) as s:
        gw = s["gw"]
        gw.state.cfg = replace(gw.state.cfg, served_model_names=("tiny", "tiny-alias"))
        client = openai.OpenAI(base_url=s["http"] + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny", "tiny-alias"]
        for name in ("tiny", "tiny-alias"):
            r = client.completions.create(model=name, prompt="fox", max_tokens=2)
            assert r.model == "tiny"
        with pytest.raises(openai.BadRequestError, match="unknown model"):
            client.completions.create(model=s["model"], prompt="fox", max_tokens=2)


def test_n_choices_and_several_prompts(stack, client):
    greedy = client.completions.create(model=stack["model"], prompt=["the lazy dog", "hello world"], n=2,
                                       max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert [c.index for c in greedy.choices] == [0, 1, 2, 3]
    texts = [c.text for c in greedy.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy choices of one prompt agree
    alone = client.completions.create(model=stack["model"], prompt="hello world", max_tokens=6, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert texts[2] == alone.choices[0].text
    assert greedy.usage.completion_tokens == 24 and greedy.usage.prompt_tokens == sum(
        client.completions.create(model=stack["model"], prompt=p, max_tokens=1).usage.prompt_tokens
        for p in ("the lazy dog", "hello world"))

    def sampled(**kw):
        return client.chat.completions.create(model=stack["model"], messages=[{"role": "user", "content": "fox"}],
                                              n=4, max_tokens=8, temperature=1.0, seed=11,
                                              extra_body={"ignore_eos": True, **kw})
    first = sampled()
    again = sampled(speculation={"drafter": "lookup", "tree": "2,2"})
    contents = [c.message.content for c in first.choices]
    assert len(set(contents)) > 1  # each choice samples under its own seed
    assert [c.message.content for c in again.choices] == contents  # ... reproducibly, whatever the speculation
    streamed: dict[int, str] = {}
    finished = set()
    for chunk in client.chat.completions.create(model=stack["model"], messages=[{"role": "user", "content": "fox"}],
                                                n=4, max_tokens=8, temperature=1.0, seed=11, stream=True,
                                                extra_body={"ignore_eos": True}):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1, 2, 3} and [streamed[i] for i in range(4)] == contents


def test_grpc_unset_sampling_takes_the_rest_defaults():
    from gateway.grpc_api import _as_request
    from specgrove.pb.v1 import common_pb2, gateway_pb2

    unset = _as_request(gateway_pb2.GenerateRequest(prompt="x"))
    assert (unset.temperature, unset.top_p) == (1.0, 1.0)  # OpenAI's and REST's defaults
    greedy = _as_request(gateway_pb2.GenerateRequest(prompt="x", sampling=common_pb2.SamplingParams(temperature=0)))
    assert greedy.temperature == 0.0


def test_one_tree_syntax_on_rest_and_grpc(stack):
    import asyncio

    import grpc

    from specgrove.pb.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    for tree, want in (("8:4", {"nodes": 8, "depth": 4, "top_k": 4}), ("4,2", {"branching": [4, 2]}),
                       ("6:3:2", {"nodes": 6, "depth": 3, "top_k": 2})):
        r = httpx.post(stack["http"] + "/v1/completions", timeout=60, json={
            "model": stack["model"], "prompt": "fox", "max_tokens": 3, "speculation": {"drafter": "lookup", "tree": tree}})
        assert r.status_code == 200 and r.json()["specgrove"]["tree"] == want, r.text

    async def grpc_tree(tree_spec):
        async with grpc.aio.insecure_channel(stack["grpc"]) as ch:
            req = gateway_pb2.GenerateRequest(model=stack["model"], prompt="fox", max_tokens=3,
                                              sampling=common_pb2.SamplingParams(temperature=0),
                                              speculation=gateway_pb2.Speculation(drafter="lookup", tree_spec=tree_spec))
            msgs = [m async for m in gateway_pb2_grpc.GatewayStub(ch).Generate(req, timeout=60)]
            return msgs[-1].effective.tree

    tree = asyncio.run(grpc_tree("6:3:2"))
    assert (tree.max_nodes, tree.max_depth, tree.top_k) == (6, 3, 2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(grpc_tree("6:x"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_echo_puts_the_prompt_first(stack, client):
    plain = client.completions.create(model=stack["model"], prompt="the lazy dog", max_tokens=5, temperature=0)
    echoed = client.completions.create(model=stack["model"], prompt="the lazy dog", max_tokens=5, temperature=0,
                                       echo=True)
    assert echoed.choices[0].text == "the lazy dog" + plain.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=stack["model"], prompt="the lazy dog", max_tokens=5, temperature=0, echo=True, stream=True)
        if c.choices)
    assert streamed == echoed.choices[0].text
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model=stack["model"], prompt="x", max_tokens=2, echo=True, logprobs=1)
