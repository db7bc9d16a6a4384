"""Size limits on the wire: the gateway's gRPC port refuses a request larger than its body limit
before reading it, without harming other requests; Prefill batches are split so that no message
nears the services' limits, all or nothing."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from specgrove import clients
from specgrove.clients import TargetClient, split_by_size
from specgrove.errors import ServiceError
from specgrove.pb.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from specgrove.types import PrefillRequest
from tests.gateway_stack import running_stack


@pytest.fixture(scope="module")
def stack(tiny_dirs):
    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"]) as s:
        yield s


def test_split_by_size_keeps_order_and_isolates_oversized_items():
    assert split_by_size([], len, 10) == []
    groups = split_by_size(["aaaa", "bbbb", "cc", "dddddddddddddddd", "e"], len, 10)
    assert groups == [["aaaa", "bbbb", "cc"], ["dddddddddddddddd"], ["e"]]


def _generate(stack, prompt: str, max_tokens: int = 4):
    async def main():
        async with grpc.aio.insecure_channel(stack["grpc"], options=[
                ("grpc.max_send_message_length", 8 << 20)]) as ch:
            req = gateway_pb2.GenerateRequest(model=stack["model"], prompt=prompt, max_tokens=max_tokens,
                                              sampling=common_pb2.SamplingParams(temperature=0, top_p=1))
            return [m async for m in gateway_pb2_grpc.GatewayStub(ch).Generate(req, timeout=60)]
    return asyncio.run(main())


def test_grpc_prompt_over_the_body_limit_is_refused_and_harms_nobody(stack):
    limit = stack["gw"].cfg.max_body_bytes
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _generate(stack, "x" * (limit + 1024))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert sum(len(m.token_ids) for m in _generate(stack, "the lazy dog")) == 4


def test_prefill_is_split_by_size_and_all_or_nothing(stack, monkeypatch):
    monkeypatch.setattr(clients, "PREFILL_MESSAGE_BYTES", 5 * 8)  # 8 prompt tokens a call

    async def main():
        async with TargetClient(stack["target"]) as t:
            info = await t.info()
            base = info.free_blocks
            prompts = [PrefillRequest(9001 + i, tuple(range(3, 9))) for i in range(3)]
            results = await t.prefill(prompts)  # three calls of one prompt each
            assert [r.seq_id for r in results] == [9001, 9002, 9003]
            held = await t.release([r.seq_id for r in results])
            assert held == base
            # The third call fails (a duplicate id): the first two are released, none is held.
            await t.prefill([PrefillRequest(9100, (3, 4))])
            with pytest.raises(ServiceError):
                await t.prefill([PrefillRequest(9101, tuple(range(3, 9))),
                                 PrefillRequest(9102, tuple(range(3, 9))),
                                 PrefillRequest(9100, tuple(range(3, 9)))])
            assert await t.release([9100]) == base  # 9101 and 9102 hold no blocks
    asyncio.run(main())
