"""Async gRPC clients of the target and draft services: the gRPC implementations of the ports.

Dataclasses in, dataclasses out (``specgrove.ports``). Every call carries a deadline
(``timeout_s``); a failed call raises the ``specgrove.errors`` class of its status code
(``Unavailable`` for an unreachable service or a missed deadline), the same errors the
in-process ports raise. ``token`` is sent as ``authorization: Bearer`` metadata (the services'
shared token, ``specgrove.auth``). ``interceptors`` (e.g. ``Telemetry.client_interceptors()``) wrap every
call on the channel.
"""
from __future__ import annotations

from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specgrove.auth import call_metadata
from specgrove.errors import from_status
from specgrove.pb.v1 import common_pb2, draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from specgrove.service import SERVER_OPTIONS
from specgrove.types import (
    DrafterInfo,
    DraftInfo,
    DraftPrefill,
    PrefillRequest,
    PrefillResult,
    ProposeRequest,
    ProposeResult,
    TargetInfo,
    VerifyItem,
    VerifyResult,
)


# A restarted service is found again within ~2 s (gRPC's default backoff grows to 120 s).
CHANNEL_OPTIONS = SERVER_OPTIONS + (("grpc.initial_reconnect_backoff_ms", 500),
                                    ("grpc.max_reconnect_backoff_ms", 2000))


class _Client:
    def __init__(self, address: str, timeout_s: float = 30.0, interceptors: Sequence = (),
                 token: str | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.metadata = call_metadata(token)  # the service token on every call
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS,
                                                 interceptors=list(interceptors) or None)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def _call(self, method, request, timeout_s: float | None = None):
        try:
            return await method(request, timeout=timeout_s or self.timeout_s, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_status(exc.code().name, exc.details() or "") from exc

    async def serving(self, timeout_s: float = 1.0) -> bool:
        """Whether the service reports SERVING on ``grpc.health.v1`` (answered by the gRPC
        server itself, so a busy engine does not make a healthy service look down)."""
        try:
            resp = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class TargetClient(_Client):
    def __init__(self, address: str, timeout_s: float = 30.0, interceptors: Sequence = (),
                 token: str | None = None) -> None:
        super().__init__(address, timeout_s, interceptors, token)
        self.stub = target_pb2_grpc.TargetServiceStub(self.channel)
        self.free_blocks: int | None = None  # as of the last reply that reported it

    async def info(self) -> TargetInfo:
        msg = await self._call(self.stub.Info, common_pb2.InfoRequest())
        self.free_blocks = msg.free_blocks
        return TargetInfo.from_pb(msg)

    async def prefill(self, requests: Sequence[PrefillRequest]) -> list[PrefillResult]:
        batch = target_pb2.PrefillBatch(requests=[r.to_pb() for r in requests])
        msg = await self._call(self.stub.Prefill, batch)
        self.free_blocks = msg.free_blocks
        return [PrefillResult.from_pb(r) for r in msg.results]

    async def verify(self, items: Sequence[VerifyItem]) -> list[VerifyResult]:
        batch = target_pb2.VerifyBatch(items=[i.to_pb() for i in items])
        msg = await self._call(self.stub.Verify, batch)
        self.free_blocks = msg.free_blocks
        return [VerifyResult.from_pb(r) for r in msg.results]

    async def release(self, seq_ids: Sequence[int]) -> int:
        """Free sequences; returns the target's free KV blocks afterwards."""
        msg = await self._call(self.stub.Release, common_pb2.ReleaseRequest(seq_ids=seq_ids))
        self.free_blocks = msg.free_blocks
        return msg.free_blocks


class DraftClient(_Client):
    def __init__(self, address: str, timeout_s: float = 30.0, interceptors: Sequence = (),
                 token: str | None = None) -> None:
        super().__init__(address, timeout_s, interceptors, token)
        self.stub = draft_pb2_grpc.DraftServiceStub(self.channel)

    async def info(self) -> DraftInfo:
        return DraftInfo.from_pb(await self._call(self.stub.Info, common_pb2.InfoRequest()))

    async def prefill(self, sequences: Sequence[DraftPrefill]) -> None:
        batch = draft_pb2.DraftPrefillBatch(sequences=[s.to_pb() for s in sequences])
        await self._call(self.stub.Prefill, batch)

    async def propose(self, requests: Sequence[ProposeRequest]) -> list[ProposeResult]:
        batch = draft_pb2.ProposeBatch(requests=[r.to_pb() for r in requests])
        msg = await self._call(self.stub.Propose, batch)
        return [ProposeResult.from_pb(r) for r in msg.results]

    async def release(self, seq_ids: Sequence[int]) -> None:
        await self._call(self.stub.Release, common_pb2.ReleaseRequest(seq_ids=seq_ids))

    async def load_drafter(self, name: str, spec: str, make_default: bool = False,
                           timeout_s: float = 600.0) -> DrafterInfo:
        """Load a drafter (a model may take minutes: a longer deadline of its own)."""
        req = draft_pb2.LoadDrafterRequest(name=name, spec=spec, make_default=make_default)
        return DrafterInfo.from_pb(await self._call(self.stub.LoadDrafter, req, timeout_s))

    async def unload_drafter(self, name: str) -> None:
        await self._call(self.stub.UnloadDrafter, draft_pb2.UnloadDrafterRequest(name=name))

    async def list_drafters(self) -> list[DrafterInfo]:
        msg = await self._call(self.stub.ListDrafters, draft_pb2.ListDraftersRequest())
        return [DrafterInfo.from_pb(d) for d in msg.drafters]
