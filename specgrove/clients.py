"""Async clients of the target and draft services: dataclasses in, dataclasses out.

Every call carries a deadline (``timeout_s``). Failures surface as ``grpc.aio.AioRpcError``
with the service's status code and message, for the caller (the gateway, tests) to act on.
``interceptors`` (e.g. ``Telemetry.client_interceptors()``) wrap every call on the channel.
"""
from __future__ import annotations

from typing import Sequence

import grpc

from specgrove.pb.v1 import common_pb2, draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from specgrove.service import SERVER_OPTIONS
from specgrove.types import (
    DrafterInfo,
    PrefillRequest,
    PrefillResult,
    ProposeRequest,
    ProposeResult,
    TargetInfo,
    VerifyItem,
    VerifyResult,
)


class _Client:
    def __init__(self, address: str, timeout_s: float = 30.0, interceptors: Sequence = ()) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.channel = grpc.aio.insecure_channel(address, options=SERVER_OPTIONS,
                                                 interceptors=list(interceptors) or None)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class TargetClient(_Client):
    def __init__(self, address: str, timeout_s: float = 30.0, interceptors: Sequence = ()) -> None:
        super().__init__(address, timeout_s, interceptors)
        self.stub = target_pb2_grpc.TargetServiceStub(self.channel)
        self.free_blocks: int | None = None  # as of the last reply that reported it

    async def info(self) -> TargetInfo:
        msg = await self.stub.Info(common_pb2.InfoRequest(), timeout=self.timeout_s)
        self.free_blocks = msg.free_blocks
        return TargetInfo.from_pb(msg)

    async def prefill(self, requests: Sequence[PrefillRequest]) -> list[PrefillResult]:
        batch = target_pb2.PrefillBatch(requests=[r.to_pb() for r in requests])
        msg = await self.stub.Prefill(batch, timeout=self.timeout_s)
        self.free_blocks = msg.free_blocks
        return [PrefillResult.from_pb(r) for r in msg.results]

    async def verify(self, items: Sequence[VerifyItem]) -> list[VerifyResult]:
        batch = target_pb2.VerifyBatch(items=[i.to_pb() for i in items])
        msg = await self.stub.Verify(batch, timeout=self.timeout_s)
        self.free_blocks = msg.free_blocks
        return [VerifyResult.from_pb(r) for r in msg.results]

    async def release(self, seq_ids: Sequence[int]) -> int:
        """Free sequences; returns the target's free KV blocks afterwards."""
        msg = await self.stub.Release(common_pb2.ReleaseRequest(seq_ids=seq_ids), timeout=self.timeout_s)
        self.free_blocks = msg.free_blocks
        return msg.free_blocks


class DraftClient(_Client):
    def __init__(self, address: str, timeout_s: float = 30.0, interceptors: Sequence = ()) -> None:
        super().__init__(address, timeout_s, interceptors)
        self.stub = draft_pb2_grpc.DraftServiceStub(self.channel)

    async def info(self) -> draft_pb2.DraftInfo:
        return await self.stub.Info(common_pb2.InfoRequest(), timeout=self.timeout_s)

    async def prefill(self, sequences: Sequence[tuple[int, Sequence[int]]]) -> None:
        batch = draft_pb2.DraftPrefillBatch(
            sequences=[draft_pb2.DraftPrefill(seq_id=s, token_ids=t) for s, t in sequences])
        await self.stub.Prefill(batch, timeout=self.timeout_s)

    async def propose(self, requests: Sequence[ProposeRequest]) -> list[ProposeResult]:
        batch = draft_pb2.ProposeBatch(requests=[r.to_pb() for r in requests])
        msg = await self.stub.Propose(batch, timeout=self.timeout_s)
        return [ProposeResult.from_pb(r) for r in msg.results]

    async def release(self, seq_ids: Sequence[int]) -> None:
        await self.stub.Release(common_pb2.ReleaseRequest(seq_ids=seq_ids), timeout=self.timeout_s)

    async def load_drafter(self, name: str, spec: str, make_default: bool = False,
                           timeout_s: float = 300.0) -> DrafterInfo:
        """Load a drafter (a model may take minutes: a longer deadline of its own)."""
        req = draft_pb2.LoadDrafterRequest(name=name, spec=spec, make_default=make_default)
        return DrafterInfo.from_pb(await self.stub.LoadDrafter(req, timeout=timeout_s))

    async def unload_drafter(self, name: str) -> None:
        await self.stub.UnloadDrafter(draft_pb2.UnloadDrafterRequest(name=name), timeout=self.timeout_s)

    async def list_drafters(self) -> list[DrafterInfo]:
        msg = await self.stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=self.timeout_s)
        return [DrafterInfo.from_pb(d) for d in msg.drafters]
