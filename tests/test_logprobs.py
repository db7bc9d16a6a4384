"""Log-probabilities of emitted tokens: the raw model's (checked against Hugging Face), the same
with speculation on or off (greedy and seeded), and in OpenAI's shapes through the official
client, streamed and whole."""
from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget
from tests.gateway_stack import running_stack
from tests.helpers import draft_engine, generate, request, target_engine

PROMPTS = [[5, 6, 7, 5, 6, 7, 5, 6], [9, 10, 11, 9, 10, 11], [20, 21, 22, 23], [3, 4, 3, 4, 3, 4]]
TOP = 3


def _run(tiny_dirs, sampling: SamplingParams, budget: TreeBudget, drafter: str = ""):
    specs = [request(p, 16, sampling, budget, drafter) for p in PROMPTS]
    # The draft model is the target itself: every drafted token is accepted, so the logprobs of
    # whole accepted paths are exercised.
    return generate(target_engine(tiny_dirs["llama"]), draft_engine(tiny_dirs["llama"]), specs)


def _close(a, b) -> None:
    assert [x.token_id for x in a] == [x.token_id for x in b]
    assert [x.logprob for x in a] == pytest.approx([x.logprob for x in b], abs=1e-9)
    assert [[t for t, _ in x.top] for x in a] == [[t for t, _ in x.top] for x in b]


@pytest.mark.parametrize("sampling", [SamplingParams(logprobs=TOP),
                                      SamplingParams(0.8, 0.9, 0, seed=7, logprobs=TOP)],
                         ids=["greedy", "seeded"])
def test_logprobs_do_not_depend_on_speculation(tiny_dirs, sampling):
    plain = _run(tiny_dirs, sampling, TreeBudget.off())
    for budget, drafter in ((TreeBudget(branching=(2, 2, 1)), "model"), (TreeBudget(max_nodes=6, max_depth=3), "model"),
                            (TreeBudget(branching=(2, 1)), "ngram")):
        spec = _run(tiny_dirs, sampling, budget, drafter)
        assert drafter == "ngram" or sum(o.stats.accepted_tokens for o in spec) > 0  # speculation did happen
        for p, s in zip(plain, spec):
            assert s.token_ids == p.token_ids and len(s.logprobs) == len(s.token_ids)
            _close(s.logprobs, p.logprobs)


def test_logprobs_are_the_raw_model_log_softmax(tiny_dirs):
    out = _run(tiny_dirs, SamplingParams(0.7, 1.0, 0, seed=3, logprobs=TOP), TreeBudget(branching=(2, 1)), "ngram")
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], dtype=torch.float64).eval()
    for prompt, o in zip(PROMPTS, out):
        ids = torch.tensor([prompt + o.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits[0], dim=-1)  # [T, V]
        rows = logp[len(prompt) - 1: len(prompt) - 1 + len(o.token_ids)]  # row j produced token j
        want = rows.gather(-1, torch.tensor(o.token_ids).unsqueeze(-1)).squeeze(-1)
        assert [x.logprob for x in o.logprobs] == pytest.approx(want.tolist(), abs=1e-5)
        top_ids = torch.topk(rows, TOP, dim=-1).indices.tolist()
        assert [[t for t, _ in x.top] for x in o.logprobs] == top_ids
    assert all(o.logprobs == [] for o in _run(tiny_dirs, SamplingParams(), TreeBudget.off()))  # not asked


@pytest.fixture(scope="module")
def stack(tiny_dirs):
    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"]) as s:
        yield s


def test_chat_logprobs_through_the_openai_client(stack):
    client = openai.OpenAI(base_url=stack["http"] + "/v1", api_key="unused", max_retries=0)
    kw = dict(model=stack["model"], messages=[{"role": "user", "content": "the quick brown fox"}],
              max_tokens=10, temperature=0, logprobs=True, top_logprobs=2,
              extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kw, extra_headers={})
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 10
    for c in content:
        assert len(c.top_logprobs) == 2 and c.logprob <= c.top_logprobs[0].logprob + 1e-6
        assert bytes(c.bytes).decode("utf-8", "replace") == c.token
    spec = client.chat.completions.create(**{**kw, "extra_body": {"ignore_eos": True, "speculation": {
        "drafter": "lookup", "tree": "2,2"}}})
    assert [c.token for c in spec.choices[0].logprobs.content] == [c.token for c in content]
    assert [c.logprob for c in spec.choices[0].logprobs.content] == pytest.approx([c.logprob for c in content], abs=1e-4)
    streamed = [c for ch in client.chat.completions.create(**kw, stream=True)
                if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]
    plain = client.chat.completions.create(**{**kw, "logprobs": False, "top_logprobs": None})
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_shape(stack):
    r = httpx.post(stack["http"] + "/v1/completions", timeout=60, json={
        "model": stack["model"], "prompt": "the lazy dog", "max_tokens": 6, "temperature": 0,
        "ignore_eos": True, "logprobs": 2})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == 6
    assert all(len(t) == 2 for t in lp["top_logprobs"])
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    bad = httpx.post(stack["http"] + "/v1/completions", timeout=30, json={
        "model": stack["model"], "prompt": "x", "logprobs": 50})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "logprobs"
    json.dumps(choice)


def test_grpc_generate_returns_logprobs(stack):
    import asyncio

    import grpc

    from specgrove.pb.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    async def main(**sampling):
        async with grpc.aio.insecure_channel(stack["grpc"]) as ch:
            req = gateway_pb2.GenerateRequest(model=stack["model"], prompt="the lazy dog", max_tokens=5,
                                              sampling=common_pb2.SamplingParams(temperature=0, top_p=1, **sampling))
            return [m async for m in gateway_pb2_grpc.GatewayStub(ch).Generate(req, timeout=60)]

    msgs = asyncio.run(main(logprobs=2))
    lps = [lp for m in msgs for lp in m.logprobs]
    ids = [t for m in msgs for t in m.token_ids]
    assert [lp.token_id for lp in lps] == ids[:len(lps)] and len(lps) >= len(ids) - 1
    assert all(len(lp.top_ids) == 2 for lp in lps)
    assert not any(m.logprobs for m in asyncio.run(main()))

