"""Several target replicas behind one gateway: placement, stickiness, health and failover.

A target replica holds a sequence's KV cache, so a sequence lives on one replica from its
prefill to its release. :class:`TargetPool` places each admitted sequence on the serving replica
with the most free KV blocks (as of its last reply), routes every later call of that sequence
there, and splits a batched Verify into one call per replica, run concurrently. A call that
fails is reported per replica (:class:`ReplicaCall`), never for the whole batch: the other
replicas' results still count, and the step loop decides what the failure means (KV exhausted:
preempt there; replica unavailable: recompute its sequences elsewhere, ``gateway.orchestrator``).

Health: the gateway's health watch calls :meth:`TargetPool.poll` (``grpc.health.v1`` of every
replica). A replica that stops serving gets no new sequences; one that serves again *rejoins*:
its model is checked against the pool's, the sequences it may still hold from before (orphans
of a call that failed on a live replica) are released, and placement sees its free blocks again.
With one replica the pool behaves exactly as a single target port.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

from specgrove.errors import ServiceError
from specgrove.ports import TargetPort
from specgrove.types import PrefillRequest, PrefillResult, TargetInfo, VerifyItem, VerifyResult

log = logging.getLogger("specgrove.gateway")
_placement_clock = itertools.count(1)


@dataclass(eq=False)  # identity: replicas are dictionary keys
class Replica:
    """One service process the gateway talks to (target or draft)."""

    address: str
    port: object  # TargetPort or DraftPort
    serving: bool = True  # as of the last health poll or failed call
    gone: bool = False  # its address no longer resolves: drained, then dropped
    sequences: set[int] = field(default_factory=set)  # the sequences it holds for us
    orphans: set[int] = field(default_factory=set)  # left there by a failed call: released on rejoin
    misses: int = 0  # health polls in a row it failed
    placed: int = 0  # sequences ever placed on it (a replica that rejoined gets new ones)
    last_placed: int = 0  # placement clock at its latest sequence: ties go to the least recent

    def place(self, seq_id: int) -> None:
        self.sequences.add(seq_id)
        self.placed += 1
        self.last_placed = next(_placement_clock)

    @property
    def usable(self) -> bool:
        return self.serving and not self.gone


@dataclass
class ReplicaCall:
    """One replica's share of a batched call: its results, or the error it failed with."""

    replica: Replica
    seq_ids: list[int]
    results: list = field(default_factory=list)  # in the order of seq_ids
    error: ServiceError | None = None


async def call_each(groups: dict[Replica, list], call: Callable[[Replica, list], object],
                    ids: Callable[[object], int]) -> list[ReplicaCall]:
    """Run ``call(replica, items)`` for every group concurrently; failures are per replica."""
    async def one(replica: Replica, items: list) -> ReplicaCall:
        out = ReplicaCall(replica, [ids(i) for i in items])
        try:
            out.results = list(await call(replica, items) or ())
        except ServiceError as exc:
            out.error = exc
        return out

    return list(await asyncio.gather(*(one(r, items) for r, items in groups.items())))


MISSES_DOWN = 2  # a loaded machine may miss one 1-second health check: not a failure yet


async def health(replicas: Sequence[Replica]) -> list[bool]:
    """Each replica's gRPC health (``serving()``), False only after ``MISSES_DOWN`` misses in a
    row; a replica that is down answers at once (connection refused), and its calls fail too."""
    states = await asyncio.gather(*(r.port.serving() for r in replicas))
    out = []
    for replica, serving in zip(replicas, states):
        replica.misses = 0 if serving else replica.misses + 1
        out.append(serving or (replica.serving and replica.misses < MISSES_DOWN))
    return out


async def release_on(replica: Replica, seq_ids: list[int]) -> list:
    """``call_each``'s form of a Release (no results)."""
    await replica.port.release(seq_ids)
    return []


def fits_pool(first: TargetInfo, other: TargetInfo) -> str:
    """Why a replica's model cannot serve beside the pool's ('' when it can)."""
    for name in ("model", "vocab_size", "block_size", "max_tree_nodes", "max_model_len", "hidden_size"):
        if getattr(first, name) != getattr(other, name):
            return f"{name} {getattr(other, name)!r} differs from the pool's {getattr(first, name)!r}"
    return ""


class TargetPool:
    def __init__(self, ports: Sequence[TargetPort], addresses: Sequence[str] = ()) -> None:
        names = list(addresses) or [getattr(p, "address", f"target-{i}") for i, p in enumerate(ports)]
        self.replicas = [Replica(a, p) for a, p in zip(names, ports)]
        self.home: dict[int, Replica] = {}
        self.info: TargetInfo | None = None  # the first replica's: every other must fit it
        self.totals: dict[Replica, int] = {}  # KV blocks of each replica that answered Info
        self.last_error: ServiceError | None = None

    # --- membership ----------------------------------------------------------------------------
    async def start(self) -> TargetInfo:
        """Ask every replica for its model: the first that answers sets the pool's, and the
        others must fit it. Raises the last error when none answers (the caller retries)."""
        for replica in self.replicas:
            replica.serving = await self._rejoin(replica)
        if self.info is None:
            raise self.last_error or ServiceError("no target replica")
        return self.info

    def add(self, address: str, port: TargetPort) -> Replica:
        """A replica found later (DNS): it serves once a health poll has seen it rejoin."""
        replica = Replica(address, port, serving=False)
        self.replicas.append(replica)
        return replica

    async def poll(self) -> None:
        """Follow every replica's gRPC health; a replica serving again rejoins."""
        for replica, serving in zip(self.replicas, await health(self.replicas)):
            if serving and not replica.serving:
                replica.serving = await self._rejoin(replica)
            elif not serving:
                replica.serving = False
        for replica in [r for r in self.replicas if r.gone and not r.sequences]:
            self.replicas.remove(replica)
            self.totals.pop(replica, None)
            await replica.port.close()

    async def _rejoin(self, replica: Replica) -> bool:
        """Whether a replica that answers may serve: its model fits, its orphans are freed."""
        try:
            info = await replica.port.info()
            if self.info is not None and (why := fits_pool(self.info, info)):
                log.error("target replica %s refused: %s", replica.address, why)
                return False
            self.info = self.info or info
            if replica.orphans:
                await replica.port.release(sorted(replica.orphans))
                replica.orphans.clear()
        except ServiceError as exc:
            self.last_error = exc
            return False
        self.totals[replica] = info.total_blocks
        log.info("target replica %s serves: %d free KV blocks", replica.address, info.free_blocks)
        return True

    def mark_down(self, replica: Replica) -> None:
        """A call to it failed: no new sequences until a health poll sees it serve again."""
        if replica.serving:
            log.warning("target replica %s failed: its sequences move to the other replicas", replica.address)
        replica.serving = False

    def others_usable(self, replica: Replica) -> bool:
        return any(r.usable for r in self.replicas if r is not replica)

    @property
    def any_serving(self) -> bool:
        return any(r.usable for r in self.replicas)

    # --- placement -----------------------------------------------------------------------------
    def budgets(self) -> dict[Replica, int]:  # empty only when DNS names no replica at all
        """Free KV blocks by replica, for admission: the usable replicas (all of them when none
        is, so that a request then fails as it would against a single target)."""
        pool = [r for r in self.replicas if r.usable] or self.replicas
        return {r: (r.port.free_blocks if r.port.free_blocks is not None else self.totals.get(r, 0))
                for r in pool}

    def replica_of(self, seq_id: int) -> Replica | None:
        return self.home.get(seq_id)

    def forget(self, seq_ids: Sequence[int]) -> None:
        """Sequences moved away from a failed replica without a Release: if it is alive after
        all, they are released there when it rejoins."""
        for seq_id in seq_ids:
            replica = self.home.pop(seq_id, None)
            if replica is not None:
                replica.sequences.discard(seq_id)
                replica.orphans.add(seq_id)

    @property
    def free_blocks(self) -> int | None:
        """Free KV blocks over the usable replicas, as of their last replies."""
        known = [r.port.free_blocks for r in self.replicas if r.usable and r.port.free_blocks is not None]
        return sum(known) if known else None

    @property
    def total_blocks(self) -> int:
        return sum(t for r, t in self.totals.items() if r.usable) or (self.info.total_blocks if self.info else 0)

    # --- the target calls ----------------------------------------------------------------------
    async def prefill(self, placed: dict[Replica, list[PrefillRequest]]) -> list[ReplicaCall]:
        calls = await call_each(placed, lambda r, reqs: r.port.prefill(reqs), lambda q: q.seq_id)
        for call in calls:
            if call.error is None:
                self._place(call.replica, call.seq_ids)
        return calls

    async def verify(self, items: Sequence[VerifyItem]) -> list[ReplicaCall]:
        groups: dict[Replica, list[VerifyItem]] = {}
        for item in items:
            groups.setdefault(self.home[item.seq_id], []).append(item)
        return await call_each(groups, lambda r, its: r.port.verify(its), lambda i: i.seq_id)

    async def release(self, seq_ids: Sequence[int]) -> None:
        """Free sequences where they live; a replica that fails keeps them as orphans."""
        groups: dict[Replica, list[int]] = {}
        for seq_id in seq_ids:
            replica = self.home.pop(seq_id, None)
            if replica is not None:
                replica.sequences.discard(seq_id)
                groups.setdefault(replica, []).append(seq_id)
        for replica, ids in groups.items():  # and what a failed call left there, if any
            ids += sorted(replica.orphans)
            replica.orphans.clear()
        for call in await call_each(groups, release_on, lambda s: s):
            if call.error is not None:
                call.replica.orphans.update(call.seq_ids)

    def _place(self, replica: Replica, seq_ids: Sequence[int]) -> None:
        for seq_id in seq_ids:
            self.home[seq_id] = replica
            replica.place(seq_id)

    async def close(self) -> None:
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                await replica.port.close()
