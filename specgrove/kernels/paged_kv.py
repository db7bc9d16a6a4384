"""Writing K/V into paged slots, and committing an accepted tree path.

Layout of the whole cache (all layers in one tensor so a commit is one call per step):
``kv_cache[num_layers, 2, num_blocks, block_size, Hkv, D]`` where index 0/1 of dim 1 is K/V.
A *slot* is ``block_id * block_size + offset``; slots are physical and come from the block
manager (``specgrove/kv.py``).

Commit (DESIGN "One step", 3): after verification, the accepted path nodes ``a_1 .. a_k`` of a
tree written at logical positions ``L .. L+N-1`` move to ``L+1 .. L+k``. Because a path node's
index is at least its depth, a sequential copy in increasing order never overwrites a source it
still needs; the reference gathers all sources first, which is safe in any order.

``write_kv`` and ``commit_kv`` (defined only when Triton imports) are the Triton kernels with
these signatures. Both are launches of one bandwidth-bound row copy,
``dst[p, dst_row[i]] = src[p, src_row[i]]``, where a row is one slot's ``Hkv * D`` contiguous
elements and a plane ``p`` is one layer's K or V; a program copies one chunk of one row of one
plane. ``write_kv`` is two launches (K, then V) scattering token rows into slots.

``commit_kv`` must give the reference's result although the destination of one copy may be the
source of another. Its launcher gets flat slot lists (no sequence boundaries, no order promise),
and programs of one launch run in no fixed order, so it first gathers every source row into a
scratch ``[2 * num_layers, C, Hkv * D]`` tensor, then scatters that: two launches, correct for
any overlap, for twice the memory traffic of a direct copy and ``C`` rows of scratch per plane
(32 MB for 8 accepted tokens in each of 32 sequences, 32 layers of 8 fp16 heads of 128).
Duplicate destination slots, in either function, leave one of the rows written, as in the
reference; the block manager never makes any.
"""
from __future__ import annotations

import torch

try:  # Triton is optional: the references must import without it.
    import triton
    import triton.language as tl
except ImportError:
    triton = None


def write_kv_ref(
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D] (one layer)
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64 physical slots
) -> None:
    """Scatter new keys/values into their slots (in place)."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)


def commit_kv_ref(
    kv_cache: torch.Tensor,  # [num_layers, 2, num_blocks, block_size, Hkv, D]
    src_slots: torch.Tensor,  # [C] int64
    dst_slots: torch.Tensor,  # [C] int64
) -> None:
    """Copy K/V of every layer from src to dst slots (in place, all sources read first)."""
    if src_slots.numel() == 0:
        return
    flat = kv_cache.view(kv_cache.shape[0], 2, -1, *kv_cache.shape[4:])
    flat[:, :, dst_slots] = flat[:, :, src_slots]


if triton is not None:

    @triton.jit
    def _copy_rows_kernel(
        src, dst,  # [planes, src_rows, ROW], [planes, dst_rows, ROW]; rows contiguous
        src_index, dst_index,  # [C] int64 row ids, read only when *_INDEXED (else row i)
        src_plane_stride, src_row_stride, dst_plane_stride, dst_row_stride,
        ROW: tl.constexpr, BLOCK: tl.constexpr,
        SRC_INDEXED: tl.constexpr, DST_INDEXED: tl.constexpr,
    ):
        """Grid (C, planes, chunks): dst[plane, dst_row(i)] = src[plane, src_row(i)], a chunk."""
        i = tl.program_id(0).to(tl.int64)
        plane = tl.program_id(1).to(tl.int64)
        offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] elements of the row
        ok = offs < ROW
        src_row = i
        dst_row = i
        if SRC_INDEXED:
            src_row = tl.load(src_index + i)
        if DST_INDEXED:
            dst_row = tl.load(dst_index + i)
        x = tl.load(src + plane * src_plane_stride + src_row * src_row_stride + offs, mask=ok)
        tl.store(dst + plane * dst_plane_stride + dst_row * dst_row_stride + offs, x, mask=ok)

    def _copy_rows(
        src: torch.Tensor,  # [planes, src_rows, ROW]
        dst: torch.Tensor,  # [planes, dst_rows, ROW]
        src_index: torch.Tensor | None,  # [C] int64, or None: rows 0 .. C-1
        dst_index: torch.Tensor | None,  # [C] int64, or None: rows 0 .. C-1
    ) -> None:
        """Launch ``_copy_rows_kernel``; at least one of the indices is given."""
        index = src_index if src_index is not None else dst_index
        planes, _, row = src.shape
        block = min(triton.next_power_of_2(row), 1024)
        _copy_rows_kernel[(index.shape[0], planes, triton.cdiv(row, block))](
            src, dst,
            index if src_index is None else src_index, index if dst_index is None else dst_index,
            src.stride(0), src.stride(1), dst.stride(0), dst.stride(1),
            ROW=row, BLOCK=block,
            SRC_INDEXED=src_index is not None, DST_INDEXED=dst_index is not None,
        )

    def write_kv(
        k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D] (one layer), contiguous
        v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], contiguous
        k: torch.Tensor,  # [T, Hkv, D]; any token stride, each token's [Hkv, D] contiguous
        v: torch.Tensor,  # [T, Hkv, D]
        slot_mapping: torch.Tensor,  # [T] int64 physical slots
    ) -> None:
        """Triton launcher with the contract of :func:`write_kv_ref`."""
        _require(k_cache.dim() == 4 and k_cache.shape == v_cache.shape,
                 "k_cache and v_cache must be equal [num_blocks, block_size, Hkv, D]")
        _require(k.shape == v.shape == (slot_mapping.shape[0], *k_cache.shape[2:]),
                 "k and v must be [T, Hkv, D] matching the cache and slot_mapping")
        _require(k.dtype == v.dtype == k_cache.dtype == v_cache.dtype,
                 "k, v and the caches must share a dtype")
        _require(k_cache.is_contiguous() and v_cache.is_contiguous(),
                 "k_cache and v_cache must be contiguous")
        _require(all(_rows_contiguous(t) for t in (k, v)),
                 "each token of k and v must be contiguous")
        _require(k.device == v.device == k_cache.device == v_cache.device,
                 "k, v and the caches must be on one device")
        _check_slots(slot_mapping, k_cache)
        if slot_mapping.shape[0] == 0:
            return
        for src, cache in ((k, k_cache), (v, v_cache)):
            rows = cache.view(1, -1, cache.shape[2] * cache.shape[3])  # [1, num_slots, Hkv * D]
            _copy_rows(src.flatten(1).unsqueeze(0), rows, None, slot_mapping)

    def commit_kv(
        kv_cache: torch.Tensor,  # [num_layers, 2, num_blocks, block_size, Hkv, D], contiguous
        src_slots: torch.Tensor,  # [C] int64
        dst_slots: torch.Tensor,  # [C] int64
    ) -> None:
        """Triton launcher with the contract of :func:`commit_kv_ref`: gather, then scatter."""
        _require(kv_cache.dim() == 6 and kv_cache.shape[1] == 2,
                 "kv_cache must be [num_layers, 2, num_blocks, block_size, Hkv, D]")
        _require(kv_cache.is_contiguous(), "kv_cache must be contiguous")
        _require(src_slots.shape == dst_slots.shape, "src_slots and dst_slots must be equal [C]")
        _check_slots(src_slots, kv_cache)
        _check_slots(dst_slots, kv_cache)
        if src_slots.shape[0] == 0:
            return
        planes = kv_cache.shape[0] * 2
        row = kv_cache.shape[4] * kv_cache.shape[5]
        rows = kv_cache.view(planes, -1, row)  # [planes, num_slots, Hkv * D]
        staged = rows.new_empty(planes, src_slots.shape[0], row)  # [planes, C, Hkv * D]
        _copy_rows(rows, staged, src_slots, None)  # every source is read ...
        _copy_rows(staged, rows, None, dst_slots)  # ... before any destination is written

    def _require(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(f"paged_kv: {message}")

    def _rows_contiguous(t: torch.Tensor) -> bool:
        """[T, Hkv, D] whose tokens are each one contiguous run of Hkv * D elements."""
        return t.dim() == 3 and t.stride(2) == 1 and (t.shape[1] == 1 or t.stride(1) == t.shape[2])

    def _check_slots(slots: torch.Tensor, cache: torch.Tensor) -> None:
        _require(slots.dtype == torch.int64 and slots.dim() == 1, "slots must be int64 [C]")
        _require(slots.is_contiguous() and slots.device == cache.device,
                 "slots must be contiguous and on the cache's device")
