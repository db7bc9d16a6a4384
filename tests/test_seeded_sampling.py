"""Through the real gateway: a seeded request's tokens do not depend on the speculation.

8 prompts x 3 seeds at temperature 0.8 under every speculation setting -- off, n-gram lookup,
a model drafter with three tree shapes, coupled and uncoupled drafts, the adaptive default --
sent all at once (batches of up to 16 with other requests interleaved) and one at a time: one
set of tokens. Float64 tiny models, so that batching cannot move a near-tie. And a request
without a seed, sent again with the seed it got back, repeats itself.
"""
from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from specgrove.pb.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from specgrove.types import TreeBudget
from tests.gateway_stack import running_stack

PROMPTS = ["the quick brown fox", "hello world", "fox dog fox dog fox", "speculative decoding is",
           "lazy lazy lazy", "a", "over the lazy dog the quick", "world, hello"]
SEEDS = (3, 1234567, 2**62 + 11)
MAX_TOKENS = 16

SETTINGS = {
    "off": gateway_pb2.Speculation(off=True),
    "ngram": gateway_pb2.Speculation(drafter="lookup", tree=TreeBudget(max_nodes=8, max_depth=4).to_pb()),
    "model 3,2": gateway_pb2.Speculation(drafter="small", tree=TreeBudget(branching=(3, 2)).to_pb()),
    "model chain": gateway_pb2.Speculation(drafter="small", tree=TreeBudget(branching=(1, 1, 1, 1)).to_pb()),
    "model dynamic": gateway_pb2.Speculation(
        drafter="small", tree=TreeBudget(max_nodes=8, max_depth=4, top_k=3).to_pb()),
    "model uncoupled": gateway_pb2.Speculation(
        drafter="small", tree=TreeBudget(branching=(3, 2)).to_pb(), coupled=False),
    "adaptive default": None,
}


@pytest.fixture(scope="module")
def stack(tiny_dirs):
    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"]) as running:
        yield running


def _request(stack, prompt: str, seed: int | None, speculation, temperature: float = 0.8):
    sampling = common_pb2.SamplingParams(temperature=temperature, top_p=0.95)
    if seed is not None:
        sampling.seed = seed
    req = gateway_pb2.GenerateRequest(model=stack["model"], prompt=prompt, max_tokens=MAX_TOKENS,
                                      sampling=sampling)
    if speculation is not None:
        req.speculation.CopyFrom(speculation)
    return req


async def _generate(stub, req) -> tuple[list[int], int]:
    msgs = [m async for m in stub.Generate(req, timeout=120)]
    assert not msgs[-1].error, msgs[-1].error
    return [t for m in msgs for t in m.token_ids], msgs[-1].seed


async def _run_setting(stack, speculation, concurrent: bool) -> dict:
    async with grpc.aio.insecure_channel(stack["grpc"]) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        keys = [(p, s) for p in PROMPTS for s in SEEDS]
        if not concurrent:
            return {k: (await _generate(stub, _request(stack, *k, speculation)))[0] for k in keys}
        # Other traffic interleaved: greedy and unseeded requests with other trees.
        noise = [_request(stack, f"noise {i} fox", None, SETTINGS["model 3,2"], temperature=0.5 * (i % 3))
                 for i in range(6)]
        calls = [_generate(stub, _request(stack, *k, speculation)) for k in keys]
        calls = calls[:5] + [_generate(stub, r) for r in noise[:3]] + calls[5:] + \
            [_generate(stub, r) for r in noise[3:]]
        outs = await asyncio.gather(*calls)
        mine = outs[:5] + outs[8:8 + len(keys) - 5]
        return {k: toks for k, (toks, _) in zip(keys, mine)}


def test_seeded_tokens_are_the_same_under_every_speculation(stack):
    results = {name: asyncio.run(_run_setting(stack, spec, concurrent=True))
               for name, spec in SETTINGS.items()}
    results["off, one at a time"] = asyncio.run(_run_setting(stack, SETTINGS["off"], concurrent=False))
    results["model 3,2, one at a time"] = asyncio.run(
        _run_setting(stack, SETTINGS["model 3,2"], concurrent=False))
    reference = results["off"]
    assert len({tuple(v) for v in reference.values()}) > len(PROMPTS)  # seeds do change outputs
    for name, got in results.items():
        diff = [k for k in reference if got[k] != reference[k]]
        assert not diff, f"{name}: {len(diff)} of {len(reference)} requests differ, e.g. {diff[0]}"


def test_unseeded_request_replays_with_the_returned_seed(stack):
    body = {"model": stack["model"], "prompt": "the quick brown fox", "max_tokens": MAX_TOKENS,
            "temperature": 0.9, "speculation": {"drafter": "small", "tree": "2,2"}}
    first = httpx.post(stack["http"] + "/v1/completions", json=body, timeout=60).json()
    seed = first["specgrove"]["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**63
    again = httpx.post(stack["http"] + "/v1/completions", json={**body, "seed": seed}, timeout=60).json()
    plain = httpx.post(stack["http"] + "/v1/completions", timeout=60,
                       json={**body, "seed": seed, "speculation": {"drafter": "none"}}).json()
    assert again["choices"][0]["text"] == first["choices"][0]["text"] == plain["choices"][0]["text"]
    assert again["specgrove"]["seed"] == seed

    async def grpc_replay():
        async with grpc.aio.insecure_channel(stack["grpc"]) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            toks, got_seed = await _generate(stub, _request(stack, "hello world", None, None))
            again, _ = await _generate(stub, _request(stack, "hello world", got_seed, SETTINGS["off"]))
            return toks, again

    toks, again = asyncio.run(grpc_replay())
    assert toks == again
