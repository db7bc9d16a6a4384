"""Several draft replicas behind one gateway, as one draft port.

A draft replica holds each registered sequence's drafter state (n-gram index, draft-model KV,
EAGLE head KV), so a sequence is placed on the usable replica holding the fewest sequences when
it is registered, and its later calls go there. Draft state is only ever a cache of the
sequence's history: when a replica fails, its sequences are dropped from the pool, their
``Propose`` results are missing from the reply, and the proposer (``gateway.speculation``)
registers them again with their full history on another replica -- the path a restarted draft
service already takes. ``Prefill`` (registration) moves a failed replica's share to another one
within the same call. Only when every replica fails does a call raise, exactly as a single draft
service would.

Drafters loaded or unloaded at run time (``LoadDrafter`` and friends) go to every usable
replica, and are replayed on a replica that rejoins, so every replica offers the same drafters.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Sequence

from gateway.replicas import Replica, ReplicaCall, call_each, health, release_on
from specgrove.errors import ServiceError, Unavailable
from specgrove.ports import DraftPort
from specgrove.types import DrafterInfo, DraftInfo, DraftPrefill, ProposeRequest, ProposeResult

log = logging.getLogger("specgrove.gateway")


class DraftPool:
    def __init__(self, ports: Sequence[DraftPort], addresses: Sequence[str] = ()) -> None:
        names = list(addresses) or [getattr(p, "address", f"draft-{i}") for i, p in enumerate(ports)]
        self.replicas = [Replica(a, p) for a, p in zip(names, ports)]
        self.home: dict[int, Replica] = {}
        # Run-time drafter changes, in order, replayed on a replica that rejoins:
        # name -> (spec, make_default) for a load, None for an unload.
        self.changes: dict[str, tuple[str, bool] | None] = {}

    # --- membership ----------------------------------------------------------------------------
    def add(self, address: str, port: DraftPort) -> Replica:
        replica = Replica(address, port, serving=False)
        self.replicas.append(replica)
        return replica

    @property
    def any_serving(self) -> bool:
        return any(r.usable for r in self.replicas)

    def replica_of(self, seq_id: int) -> Replica | None:
        return self.home.get(seq_id)

    async def poll(self) -> bool:
        """Follow every replica's gRPC health; True when one came back (its drafters may differ:
        the caller refreshes what it knows)."""
        rejoined = False
        for replica, serving in zip(self.replicas, await health(self.replicas)):
            if serving and not replica.serving:
                await self._replay(replica)
                rejoined = True
                log.info("draft replica %s serves", replica.address)
            elif not serving and replica.serving:
                self._lost(replica)
            replica.serving = serving
        for replica in [r for r in self.replicas if r.gone and not r.sequences]:
            self.replicas.remove(replica)
            await replica.port.close()
        return rejoined

    async def _replay(self, replica: Replica) -> None:
        """A replica serving again: free what it may still hold, then make its drafters the pool's."""
        if replica.orphans:
            with contextlib.suppress(ServiceError):
                await replica.port.release(sorted(replica.orphans))
            replica.orphans.clear()
        for name, change in self.changes.items():
            try:
                if change is None:
                    await replica.port.unload_drafter(name)
                else:
                    await replica.port.load_drafter(name, *change)
            except ServiceError as exc:  # e.g. it loads the drafter from its command line already
                log.info("draft replica %s: replaying drafter %r: %s", replica.address, name, exc)

    def _lost(self, replica: Replica) -> None:
        """A replica failed: its sequences belong nowhere now (registered again elsewhere)."""
        if replica.serving:
            log.warning("draft replica %s failed: its sequences re-register on the others", replica.address)
        replica.serving = False
        for seq_id in replica.sequences:
            self.home.pop(seq_id, None)
        replica.orphans |= replica.sequences  # if it was alive after all: released on rejoin
        replica.sequences.clear()

    def _usable(self) -> list[Replica]:
        """Where calls may go: the usable replicas, else all (then a call fails as it would
        against a single draft service, or finds it back)."""
        replicas = [r for r in self.replicas if r.usable] or list(self.replicas)
        if not replicas:
            raise Unavailable("no draft replica (none of the --draft names resolves)")
        return replicas

    def _fail_calls(self, calls: list[ReplicaCall]) -> list[ReplicaCall]:
        """Drop the failed replicas' sequences; raise when every call failed."""
        failed = [c for c in calls if c.error is not None]
        for call in failed:
            self._lost(call.replica)
        if failed and len(failed) == len(calls):
            raise failed[0].error
        for call in calls:
            if call.error is None:
                call.replica.serving = True
        return failed

    # --- sequences -----------------------------------------------------------------------------
    async def prefill(self, sequences: Sequence[DraftPrefill]) -> None:
        groups: dict[Replica, list[DraftPrefill]] = {}
        for seq in sequences:
            # fewest sequences; on a tie the least recently placed, so sequential requests
            # (each finishing before the next arrives) still alternate between replicas
            replica = self.home.get(seq.seq_id) or min(
                self._usable(), key=lambda r: (len(r.sequences), r.last_placed)
            )
            groups.setdefault(replica, []).append(seq)
            self._place(replica, seq.seq_id)  # so the next one in the batch sees its load
        calls = await call_each(groups, lambda r, seqs: r.port.prefill(seqs), lambda s: s.seq_id)
        failed = self._fail_calls(calls)
        moved = {s for c in failed for s in c.seq_ids}
        if moved:  # registered on another replica within this call
            await self.prefill([s for s in sequences if s.seq_id in moved])

    async def propose(self, requests: Sequence[ProposeRequest]) -> list[ProposeResult]:
        """Trees of the sequences whose replica answered (the others' are missing)."""
        groups: dict[Replica, list[ProposeRequest]] = {}
        for req in requests:
            replica = self.home.get(req.seq_id)
            if replica is not None:
                groups.setdefault(replica, []).append(req)
        calls = await call_each(groups, lambda r, reqs: r.port.propose(reqs), lambda q: q.seq_id)
        self._fail_calls(calls)
        return [res for c in calls if c.error is None for res in c.results]

    async def release(self, seq_ids: Sequence[int]) -> None:
        """Free sequences where they live; ids the pool does not place (a failed call may have
        left them anywhere) go to every usable replica, which ignores ids it does not hold."""
        groups: dict[Replica, list[int]] = {}
        stray = []
        for seq_id in seq_ids:
            replica = self.home.pop(seq_id, None)
            if replica is None:
                stray.append(seq_id)
                continue
            replica.sequences.discard(seq_id)
            groups.setdefault(replica, []).append(seq_id)
        for replica in self._usable() if stray else ():
            groups.setdefault(replica, []).extend(stray)
        self._fail_calls(await call_each(groups, release_on, lambda s: s))

    def _place(self, replica: Replica, seq_id: int) -> None:
        self.home[seq_id] = replica
        replica.place(seq_id)

    # --- drafters (every replica) --------------------------------------------------------------
    async def info(self) -> DraftInfo:
        return await self._first(lambda port: port.info())

    async def list_drafters(self) -> list[DrafterInfo]:
        return await self._first(lambda port: port.list_drafters())

    async def load_drafter(self, name: str, spec: str, make_default: bool = False) -> DrafterInfo:
        infos = await self._everywhere(lambda port: port.load_drafter(name, spec, make_default))
        self.changes.pop(name, None)
        self.changes[name] = (spec, make_default)
        return infos[0]

    async def unload_drafter(self, name: str) -> None:
        await self._everywhere(lambda port: port.unload_drafter(name))
        self.changes.pop(name, None)
        self.changes[name] = None

    async def clear_drafter(self, name: str) -> DrafterInfo:
        return (await self._everywhere(lambda port: port.clear_drafter(name)))[0]

    async def _first(self, call):
        """The answer of the first usable replica that gives one."""
        error: ServiceError | None = None
        for replica in self._usable():
            try:
                return await call(replica.port)
            except ServiceError as exc:
                error = exc
        raise error or ServiceError("no draft replica")

    async def _everywhere(self, call) -> list:
        """One call on every usable replica; the first error is raised (an admin call that
        fails on one replica fails: the same drafter everywhere, or an error)."""
        replicas = self._usable()
        results = await asyncio.gather(*(call(r.port) for r in replicas), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def close(self) -> None:
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                await replica.port.close()
