"""Async gRPC clients of the target and draft services: the gRPC implementations of the ports.

Dataclasses in, dataclasses out (``specgrove.ports``). Every call carries a deadline
(``timeout_s``); a failed call raises the ``specgrove.errors`` class of its status code
(``Unavailable`` for an unreachable service or a missed deadline), the same errors the
in-process ports raise. ``token`` is sent as ``authorization: Bearer`` metadata (the services'
shared token, ``specgrove.auth``); with ``tls`` (``specgrove.tls``) the channel is TLS and
presents the process's certificate (mutual TLS), else plaintext. ``interceptors`` (e.g. ``Telemetry.client_interceptors()``) wrap every
call on the channel.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specgrove.auth import call_metadata
from specgrove.errors import ServiceError, from_status
from specgrove.pb.v1 import common_pb2, draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from specgrove.service import SERVER_OPTIONS
from specgrove.tls import TlsConfig
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


# Prefill batches are split so that no message comes near the services' gRPC size limits
# (``specgrove.service``): features travel target -> gateway -> draft at 2 bytes a value, and
# one 8k-token prompt with SmolLM2's three feature layers is 28 MB of them; three such prompts
# in one call would be refused.
PREFILL_MESSAGE_BYTES = 16 << 20


def split_by_size(items: Sequence, size_of, budget: int) -> list[list]:
    """Consecutive groups of ``items`` whose sizes add up to at most ``budget``; an item larger
    than the budget goes alone. Order is kept, so results concatenate back in request order."""
    groups: list[list] = [[]]
    used = 0
    for item in items:
        size = size_of(item)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += size
    return groups if groups[0] else []


# A restarted service is found again within ~2 s (gRPC's default backoff grows to 120 s).
CHANNEL_OPTIONS = SERVER_OPTIONS + (("grpc.initial_reconnect_backoff_ms", 500),
                                    ("grpc.max_reconnect_backoff_ms", 2000))


def open_channel(address: str, tls: TlsConfig | None = None, options: Sequence = CHANNEL_OPTIONS,
            interceptors: Sequence = ()) -> grpc.aio.Channel:
    """The one way this system opens a gRPC channel: TLS with ``tls``, plaintext without."""
    chain = list(interceptors) or None
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=chain)
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=options,
                                   interceptors=chain)


class _Client:
    def __init__(self, address: str, timeout_s: float = 30.0, interceptors: Sequence = (),
                 token: str | None = None, tls: TlsConfig | None = None,
                 server_name: str | None = None) -> None:
        """``server_name``: the name the server's certificate must carry when ``address`` is
        one of the addresses a DNS name resolved to (``gateway.discovery``), not that name."""
        self.address = address
        self.timeout_s = timeout_s
        self.metadata = call_metadata(token)  # the service token on every call
        options = CHANNEL_OPTIONS
        if server_name and tls is not None:
            options += (("grpc.ssl_target_name_override", server_name),)
        self.channel = open_channel(address, tls, options, interceptors)
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
                 token: str | None = None, tls: TlsConfig | None = None,
                 server_name: str | None = None) -> None:
        super().__init__(address, timeout_s, interceptors, token, tls, server_name)
        self.stub = target_pb2_grpc.TargetServiceStub(self.channel)
        self.free_blocks: int | None = None  # as of the last reply that reported it
        self.hidden_size = 0  # from Info: sizes the features a Prefill returns

    async def info(self) -> TargetInfo:
        msg = await self._call(self.stub.Info, common_pb2.InfoRequest())
        self.free_blocks = msg.free_blocks
        self.hidden_size = msg.hidden_size
        return TargetInfo.from_pb(msg)

    async def prefill(self, requests: Sequence[PrefillRequest]) -> list[PrefillResult]:
        """Prefill in as many calls as the features they return need (one call without them)."""
        def message_bytes(r: PrefillRequest) -> int:  # prompt varints out, features back
            return len(r.prompt_ids) * (5 + len(r.feature_layers) * self.hidden_size * 2)

        results: list[PrefillResult] = []
        for group in split_by_size(requests, message_bytes, PREFILL_MESSAGE_BYTES):
            try:
                msg = await self._call(self.stub.Prefill,
                                       target_pb2.PrefillBatch(requests=[r.to_pb() for r in group]))
            except ServiceError:
                # All or nothing, as one call would be: the caller retries or fails the whole batch.
                if results:
                    with contextlib.suppress(ServiceError):
                        await self.release([r.seq_id for r in results])
                raise
            self.free_blocks = msg.free_blocks
            results.extend(PrefillResult.from_pb(r) for r in msg.results)
        return results

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
                 token: str | None = None, tls: TlsConfig | None = None,
                 server_name: str | None = None) -> None:
        super().__init__(address, timeout_s, interceptors, token, tls, server_name)
        self.stub = draft_pb2_grpc.DraftServiceStub(self.channel)

    async def info(self) -> DraftInfo:
        return DraftInfo.from_pb(await self._call(self.stub.Info, common_pb2.InfoRequest()))

    async def prefill(self, sequences: Sequence[DraftPrefill]) -> None:
        def message_bytes(s: DraftPrefill) -> int:
            return 5 * len(s.token_ids) + (len(s.features.data) if s.features is not None else 0)

        for group in split_by_size(sequences, message_bytes, PREFILL_MESSAGE_BYTES):
            await self._call(self.stub.Prefill, draft_pb2.DraftPrefillBatch(sequences=[s.to_pb() for s in group]))

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

    async def clear_drafter(self, name: str) -> DrafterInfo:
        return DrafterInfo.from_pb(await self._call(self.stub.ClearDrafter, draft_pb2.ClearDrafterRequest(name=name)))
