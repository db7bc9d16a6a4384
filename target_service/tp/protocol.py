"""Rank 0 -> worker messages: a fixed-size header, then at most one packed payload.

Every message is one or two broadcasts from rank 0. The header (``[HEADER_LEN]`` int64 on the
CPU, so it travels over gloo even when the model's collectives use NCCL) carries the kind and
the sizes; the payload packs every tensor of the message into one int64 vector on the ranks'
device, one collective instead of nine. A worker rebuilds exactly the ``PreparedBatch`` that
rank 0 runs, so every rank executes the same forward on its own shard while only rank 0 owns
block tables and decides acceptance (DESIGN "Tensor parallelism": ranks may differ in the last
bit of their logits, one decision avoids divergence).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.distributed as dist

from specgrove.modeling.attention import AttentionMetadata
from specgrove.runner import PreparedBatch

HEADER_LEN = 6  # kind + up to five sizes
SOURCE = 0  # rank 0 sends, every other rank receives


class Kind(enum.IntEnum):
    HEARTBEAT = 0  # no work: keeps an idle worker's wait inside the group timeout
    FORWARD = 1  # run a PreparedBatch; sizes T, B, M, W, R
    COPIES = 2  # apply a commit plan's slot copies; size C
    SHUTDOWN = 3  # leave the serving loop


@dataclass(frozen=True)
class Message:
    kind: Kind
    sizes: tuple[int, ...] = ()
    payload: torch.Tensor | None = None  # [P] int64, on the ranks' device


@dataclass(frozen=True)
class Received:
    kind: Kind
    batch: PreparedBatch | None = None  # FORWARD
    copies: tuple[torch.Tensor, torch.Tensor] | None = None  # COPIES: src, dst [C] int64


def signal(kind: Kind) -> Message:
    return Message(kind)


def forward_message(batch: PreparedBatch) -> Message:
    meta = batch.meta
    t, (b, m), r = batch.input_ids.numel(), meta.block_tables.shape, batch.logit_rows.numel()
    w = 0 if meta.tree_mask is None else meta.tree_mask.shape[1]
    parts = [batch.input_ids, batch.positions, meta.slot_mapping, meta.block_tables,
             meta.kv_lens, meta.cu_seqlens_q]
    if meta.tree_mask is not None:
        parts += [meta.tree_mask, meta.tree_lens]
    parts.append(batch.logit_rows)
    return Message(Kind.FORWARD, (t, b, m, w, r), _pack(parts))


def copies_message(src: torch.Tensor, dst: torch.Tensor) -> Message:
    return Message(Kind.COPIES, (src.numel(),), _pack([src, dst]))


def send(message: Message, group) -> None:
    header = torch.zeros(HEADER_LEN, dtype=torch.int64)
    header[: 1 + len(message.sizes)] = torch.tensor((int(message.kind), *message.sizes))
    dist.broadcast(header, SOURCE, group=group)
    if message.payload is not None:
        dist.broadcast(message.payload, SOURCE, group=group)


def receive(group, device: torch.device) -> Received:
    header = torch.empty(HEADER_LEN, dtype=torch.int64)
    dist.broadcast(header, SOURCE, group=group)
    kind, *sizes = header.tolist()
    kind = Kind(kind)
    if kind is Kind.FORWARD:
        t, b, m, w, r = sizes
        lengths = [t, t, t, b * m, b, b + 1, t * w, b if w else 0, r]
        return Received(kind, batch=_unpack_batch(_receive_payload(lengths, group, device), sizes))
    if kind is Kind.COPIES:
        src, dst = _receive_payload([sizes[0]] * 2, group, device)
        return Received(kind, copies=(src, dst))
    return Received(kind)


def handshake(group) -> None:
    """Every rank: wait until all ranks have loaded their shards (a CPU all-reduce)."""
    ready = torch.ones(1, dtype=torch.int64)
    dist.all_reduce(ready, group=group)
    if ready.item() != dist.get_world_size(group):
        raise RuntimeError(f"tensor-parallel handshake counted {ready.item()} ranks")


def _pack(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1).to(torch.int64) for p in parts])


def _receive_payload(lengths: list[int], group, device: torch.device) -> list[torch.Tensor]:
    payload = torch.empty(sum(lengths), dtype=torch.int64, device=device)
    dist.broadcast(payload, SOURCE, group=group)
    return list(payload.split(lengths))


def _unpack_batch(parts: list[torch.Tensor], sizes: list[int]) -> PreparedBatch:
    t, b, m, w, _ = sizes
    ids, positions, slots, tables, kv_lens, cu, mask, tree_lens, rows = parts
    i32 = torch.int32
    meta = AttentionMetadata(
        slot_mapping=slots,  # [T] int64
        block_tables=tables.view(b, m).to(i32),  # [B, M]
        kv_lens=kv_lens.to(i32),  # [B]
        cu_seqlens_q=cu.to(i32),  # [B + 1]
        tree_mask=mask.view(t, w).bool() if w else None,  # [T, W]
        tree_lens=tree_lens.to(i32) if w else None,  # [B]
    )
    # Workers never split the logits per item, so they need no bounds.
    return PreparedBatch(ids, positions, meta, rows, bounds=())
