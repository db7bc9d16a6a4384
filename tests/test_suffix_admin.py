"""The suffix drafter through the gateway: its global structure's size in ListDrafters (REST and
gRPC) and in a gauge, and cleared through the admin API."""
from __future__ import annotations

import asyncio

import grpc
import httpx

from specgrove.pb.v1 import draft_pb2, gateway_pb2_grpc
from tests.gateway_stack import running_stack


def test_suffix_store_is_listed_measured_and_cleared(tiny_dirs):
    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"]) as s:
        base = s["http"]
        assert httpx.post(base + "/v1/drafters", json={"name": "sfx", "spec": "suffix"}, timeout=60).status_code == 200
        body = {"model": s["model"], "prompt": "one two three four five", "max_tokens": 16, "temperature": 0,
                "ignore_eos": True, "speculation": {"drafter": "sfx", "tree": "6:4"}}
        first = httpx.post(base + "/v1/completions", json=body, timeout=60).json()
        second = httpx.post(base + "/v1/completions", json=body, timeout=60).json()
        assert second["choices"][0]["text"] == first["choices"][0]["text"]
        assert second["specgrove"]["mean_acceptance_length"] > first["specgrove"]["mean_acceptance_length"]

        def stats() -> dict:
            listed = httpx.get(base + "/v1/drafters", timeout=30).json()["data"]
            return next(d for d in listed if d["name"] == "sfx")["stats"]

        held = stats()
        assert held["tokens"] > 0 and held["bytes"] > 0 and held["documents"] >= 1
        s["loop"].run(s["gw"].state.refresh_drafters())
        metrics = httpx.get(base + "/metrics", timeout=30).text
        assert f'specgrove:drafter_store{{drafter="sfx",quantity="tokens"}} {float(held["tokens"])}' in metrics

        async def grpc_clear():
            async with grpc.aio.insecure_channel(s["grpc"]) as ch:
                stub = gateway_pb2_grpc.GatewayStub(ch)
                info = await stub.ClearDrafter(draft_pb2.ClearDrafterRequest(name="sfx"), timeout=30)
                listed = await stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=30)
                return info, listed

        info, listed = asyncio.run(grpc_clear())
        assert info.stats["tokens"] == 0
        assert any(d.name == "sfx" and "tokens" in d.stats for d in listed.drafters)
        httpx.post(base + "/v1/completions", json=body, timeout=60)
        assert stats()["tokens"] > 0
        cleared = httpx.post(base + "/v1/drafters/sfx/clear", timeout=30)
        assert cleared.status_code == 200 and cleared.json()["stats"]["tokens"] == 0
        nothing = httpx.post(base + "/v1/drafters/lookup/clear", timeout=30)
        assert nothing.status_code == 400 and "keeps nothing" in nothing.json()["error"]["message"]
