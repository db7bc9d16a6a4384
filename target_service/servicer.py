"""gRPC ``TargetService`` over the in-process :class:`TargetEngine` (a TGI-style shard server).

Each batch is validated as a whole before any state changes, so a bad item fails its RPC with
INVALID_ARGUMENT (naming ``items[i]`` and the field) and leaves every sequence as it was.
With tracing on, the server spans of ``Prefill`` and ``Verify`` carry the batch's
``specgrove.*`` attributes (batch size, tree nodes and depth, accepted tokens, KV blocks).
"""
from __future__ import annotations

from dataclasses import dataclass

from specgrove.kv import KVCacheExhausted
from specgrove.pb.v1 import common_pb2, target_pb2, target_pb2_grpc
from specgrove import telemetry
from specgrove.service import EngineThread, NotReady, rpc
from specgrove.tree import TreeError
from specgrove.types import InvalidRequest, PrefillRequest, TargetInfo, VerifyItem
from target_service.engine import TargetEngine


@dataclass(frozen=True)
class TargetLimits:
    max_num_seqs: int = 256
    max_tree_nodes: int = 64


class TargetServicer(target_pb2_grpc.TargetServiceServicer):
    def __init__(self, model_name: str, dtype: str, limits: TargetLimits, tp_size: int = 1) -> None:
        self.engine: TargetEngine | None = None  # set once the model is loaded
        self.thread = EngineThread("target-engine")
        self.model_name, self.dtype, self.limits, self.tp_size = model_name, dtype, limits, tp_size
        self.on_fatal = None  # set by the server: called with the error when serving is over
        self.tracer = None  # set by the server when tracing is on (see specgrove.service.rpc)

    def _engine(self) -> TargetEngine:
        if self.engine is None:
            raise NotReady("the target model is still loading")
        return self.engine

    def info(self) -> TargetInfo:
        eng = self._engine()
        cap = eng.capacity()
        return TargetInfo(
            self.model_name, eng.vocab_size, cap.max_model_len, cap.block_size, cap.total_blocks,
            cap.free_blocks, self.tp_size, tuple(eng.runner.config.eos_token_ids),
            self.limits.max_num_seqs, self.limits.max_tree_nodes, self.dtype,
        )

    @rpc
    async def Info(self, request, context):
        return self.info().to_pb()

    @rpc
    async def Prefill(self, request: target_pb2.PrefillBatch, context):
        eng = self._engine()
        reqs = [_convert(f"requests[{i}]", PrefillRequest.from_pb, r)
                for i, r in enumerate(request.requests)]
        running = eng.num_sequences
        if running + len(reqs) > self.limits.max_num_seqs:
            raise KVCacheExhausted(
                f"{running} sequences running; {len(reqs)} more exceed max_num_seqs "
                f"{self.limits.max_num_seqs}")
        results = await self.thread.run(eng.prefill, reqs)
        cap = eng.capacity()
        if (span := telemetry.recording_span()) is not None:
            span.set_attributes({"specgrove.batch_size": len(reqs),
                                 "specgrove.prompt_tokens": sum(len(r.prompt_ids) for r in reqs),
                                 **_kv_attributes(cap)})
        return target_pb2.PrefillBatchResult(results=[r.to_pb() for r in results],
                                             free_blocks=cap.free_blocks)

    @rpc
    async def Verify(self, request: target_pb2.VerifyBatch, context):
        eng = self._engine()
        items = []
        for i, msg in enumerate(request.items):
            item = _convert(f"items[{i}]", VerifyItem.from_pb, msg)
            if len(item.tree) > self.limits.max_tree_nodes:
                raise InvalidRequest(f"items[{i}].tree", f"{len(item.tree)} nodes exceed the "
                                     f"limit of {self.limits.max_tree_nodes}")
            items.append(item)
        results = await self.thread.run(eng.verify, items)
        cap = eng.capacity()
        if (span := telemetry.recording_span()) is not None:
            span.set_attributes({
                "specgrove.batch_size": len(items),
                "specgrove.tree.nodes": sum(len(it.tree) for it in items),
                "specgrove.tree.depth": max((it.tree.depth for it in items), default=0),
                "specgrove.accepted_tokens": sum(len(r.accepted_tokens) for r in results),
                **_kv_attributes(cap)})
        return target_pb2.VerifyBatchResult(results=[r.to_pb() for r in results],
                                            free_blocks=cap.free_blocks)

    @rpc
    async def Release(self, request: common_pb2.ReleaseRequest, context):
        eng = self._engine()

        def release_all() -> int:
            for seq_id in request.seq_ids:
                eng.release(seq_id)
            return eng.capacity().free_blocks

        return common_pb2.ReleaseResponse(free_blocks=await self.thread.run(release_all))


def _kv_attributes(cap) -> dict:
    return {"specgrove.kv.blocks_used": cap.total_blocks - cap.free_blocks,
            "specgrove.kv.blocks_total": cap.total_blocks}


def _convert(where: str, from_pb, msg):
    """Convert one message, prefixing any validation error with its place in the batch."""
    try:
        return from_pb(msg)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}.{exc.field}", str(exc).split(": ", 1)[-1]) from exc
    except TreeError as exc:
        raise InvalidRequest(f"{where}.tree", str(exc)) from exc
