"""The two ports the gateway's step loop drives: the target and the draft service.

Each port has two implementations with the same behaviour: the gRPC clients
(``specgrove.clients``) and the in-process adapters over the engines
(``target_service.local.LocalTarget``, ``draft_service.local.LocalDraft``), which run the engine
on its own thread. The gRPC servicers are protobuf conversion over the in-process adapters, so
``specgrove generate``, the tests and the benchmarks run exactly the step loop users get.

Both speak dataclasses (``specgrove.types``) and fail with ``specgrove.errors`` classes.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from specgrove.types import (
    DrafterInfo, DraftInfo, DraftPrefill, PrefillRequest, PrefillResult, ProposeRequest,
    ProposeResult, TargetInfo, VerifyItem, VerifyResult,
)


class TargetPort(Protocol):
    free_blocks: int | None  # as of the last reply that reported it

    async def info(self) -> TargetInfo:
        """Model, vocabulary, context and KV capacity."""

    async def prefill(self, requests: Sequence[PrefillRequest]) -> list[PrefillResult]:
        """Prompt KV for new sequences; each one's first (pending) token."""

    async def verify(self, items: Sequence[VerifyItem]) -> list[VerifyResult]:
        """One forward over every tree; accepted tokens plus a bonus token per sequence."""

    async def release(self, seq_ids: Sequence[int]) -> int:
        """Free sequences (unknown ids are ignored); the free KV blocks afterwards."""

    async def serving(self) -> bool:
        """Whether it serves (``grpc.health.v1`` over gRPC; always in process)."""

    async def close(self) -> None:
        """Let go of the connection or thread."""


class DraftPort(Protocol):
    async def info(self) -> DraftInfo: ...

    async def prefill(self, sequences: Sequence[DraftPrefill]) -> None:
        """Register sequences with their history (prompt + generated, pending token last)."""

    async def propose(self, requests: Sequence[ProposeRequest]) -> list[ProposeResult]:
        """One token tree per sequence, rooted at its pending token."""

    async def release(self, seq_ids: Sequence[int]) -> None: ...

    async def load_drafter(self, name: str, spec: str, make_default: bool = False) -> DrafterInfo: ...

    async def unload_drafter(self, name: str) -> None: ...

    async def list_drafters(self) -> list[DrafterInfo]: ...

    async def clear_drafter(self, name: str) -> DrafterInfo: ...

    async def serving(self) -> bool: ...

    async def close(self) -> None: ...
