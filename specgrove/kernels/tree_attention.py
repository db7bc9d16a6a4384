"""Batched tree attention over a paged KV cache.

One call attends the new tokens of many sequences at once. Each sequence ``b`` owns the keys at
logical positions ``[0, kv_lens[b])``, stored in fixed-size pages listed by its block table. Its
queries are the rows ``q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]``; their own K/V has already been
written into the cache (so a query always finds itself among the keys).

Which keys a query sees:

* ``tree_mask is None`` -- causal: the ``q_len`` queries are the last ``q_len`` key positions, in
  order, and query ``j`` sees keys ``[0, kv_len - q_len + j]``. This serves prefill (chunked or
  not) and plain one-token decoding.
* ``tree_mask`` given -- the last ``w = tree_lens[b]`` key positions of the sequence form its tree
  window (tree nodes written in topological order). Every query sees all keys before the window;
  query row ``t`` sees window key ``m`` iff ``tree_mask[t, m]``. This is token-tree verification
  (SpecInfer, Miao et al. 2023; Medusa, Cai et al. 2024): node ``i`` attends to the committed
  prefix plus its own ancestors, although siblings share a RoPE position.

The window may be longer than the queries (a draft model expanding a tree one depth at a time
queries only the newest depth while earlier depths already sit in the cache).

``tree_attention`` (defined only when Triton imports) is the Triton kernel with this exact
signature, FlashAttention-style (Dao et al. 2022; FlashAttention-2, Dao 2023): an online softmax
over blocks of keys read page by page through the block table, so no score matrix over the
prefix is ever materialised. One program owns a tile of one sequence's queries times the GQA
group of query heads that share a KV head: each K/V block is loaded once per group, and even
one-query decoding fills the rows of a tensor-core tile. Key blocks every query of the tile sees
(the prefix) run unmasked; only blocks on the causal diagonal or in the tree window are masked,
and a causal tile stops at its last query. Not done: splitting one sequence's keys over several
programs (Flash-Decoding; Dao, Haziza, Massa, Sizov 2023), which would help batches too small to
fill the GPU at long prefixes.

Preconditions the launcher does not check (that would cost a device sync): ``cu_seqlens_q`` is
non-decreasing with ``cu_seqlens_q[-1] == T``; ``q_len <= kv_len`` (causal) or
``q_len <= tree_lens[b] <= min(W, kv_len)`` (tree); block tables cover ``kv_len`` keys. A query
that sees no key gets zeros, as from the reference's SDPA.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:  # Triton is optional: the reference above must import without it.
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:
    triton = None


def tree_attention_ref(
    q: torch.Tensor,  # [T, Hq, D] queries of all sequences, flattened
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32, physical block ids
    kv_lens: torch.Tensor,  # [B] int32, keys visible per sequence (prefix + window)
    cu_seqlens_q: torch.Tensor,  # [B + 1] int32, query offsets into q
    tree_mask: torch.Tensor | None,  # [T, W] bool, row t = visible window keys of query t
    tree_lens: torch.Tensor | None,  # [B] int32, window length per sequence (<= W)
    scale: float,
) -> torch.Tensor:  # [T, Hq, D]
    """Plain-torch reference: gather each sequence's keys, mask, and run SDPA (GQA aware)."""
    block_size = k_cache.shape[1]
    k_flat = k_cache.reshape(-1, *k_cache.shape[2:])  # [num_slots, Hkv, D]
    v_flat = v_cache.reshape(-1, *v_cache.shape[2:])
    out = torch.empty_like(q)
    starts = cu_seqlens_q.tolist()
    lens = kv_lens.tolist()
    windows = tree_lens.tolist() if tree_lens is not None else None
    for b, kv_len in enumerate(lens):
        s, e = starts[b], starts[b + 1]
        if e == s:
            continue
        pos = torch.arange(kv_len, device=q.device)
        slots = block_tables[b, pos // block_size].long() * block_size + pos % block_size
        k = k_flat[slots].transpose(0, 1).unsqueeze(0)  # [1, Hkv, kv_len, D]
        v = v_flat[slots].transpose(0, 1).unsqueeze(0)
        mask = _visible_keys(e - s, kv_len, tree_mask, s, windows[b] if windows else 0, q.device)
        qb = q[s:e].transpose(0, 1).unsqueeze(0)  # [1, Hq, q_len, D]
        ob = F.scaled_dot_product_attention(
            qb, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != qb.shape[1]
        )
        out[s:e] = ob[0].transpose(0, 1)
    return out


def _visible_keys(
    q_len: int, kv_len: int, tree_mask: torch.Tensor | None, row0: int, window: int, device
) -> torch.Tensor | None:
    """Boolean [q_len, kv_len] mask of the keys each query sees; None when it sees them all."""
    if tree_mask is None:
        if q_len == 1:
            return None
        # Query j sits at key position kv_len - q_len + j.
        return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    mask[:, kv_len - window :] = tree_mask[row0 : row0 + q_len, :window]
    return mask


if triton is not None:

    @triton.jit
    def _find_sequence(cu_seqlens_q, tile, num_seqs, BLOCK_Q: tl.constexpr):
        """The sequence owning flat query tile ``tile``: the last b with first_tile(b) <= tile.

        Sequence b's tiles start at ``cu_seqlens_q[b] // BLOCK_Q + b``, which leaves room for all
        tiles of the sequences before it, so the grid needs no host-side ``max(q_len)``.
        """
        lo: tl.int32 = 0
        hi: tl.int32 = num_seqs
        while lo < hi:
            mid = (lo + hi) // 2
            if tl.load(cu_seqlens_q + mid) // BLOCK_Q + mid <= tile:
                lo = mid + 1
            else:
                hi = mid
        return lo - 1

    @triton.jit
    def _key_ranges(kv_len, q_len, q_start, tree_len, TREE: tl.constexpr,
                    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr):
        """(win0, shared, kv_end) for a query tile: keys [0, shared) are seen by every row (whole
        key blocks, run unmasked), keys [shared, kv_end) need the mask. Tree: win0 is the first
        window key. Causal: win0 is query 0's key position, and the tile ends at its last query.
        """
        if TREE:
            win0 = kv_len - tree_len
            shared = win0
            kv_end = kv_len
        else:
            win0 = kv_len - q_len
            shared = win0 + q_start
            kv_end = tl.minimum(kv_len, win0 + q_start + BLOCK_Q)
        return win0, shared // BLOCK_N * BLOCK_N, kv_end

    @triton.jit
    def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """``a @ b`` with fp32 accumulation. UPCAST: the interpreter has no bf16 matmul."""
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def _visible(offs_n, key_ok, key_limit, win0, mask_rows, row_ok, TREE: tl.constexpr):
        """[BLOCK_M, BLOCK_N] bool: which of keys ``offs_n`` each query row sees."""
        if TREE:
            in_window = offs_n >= win0  # [BLOCK_N]
            bits = tl.load(  # [BLOCK_M, BLOCK_N] tree_mask[row, key - win0]
                mask_rows[:, None] + (offs_n - win0)[None, :],
                mask=row_ok[:, None] & (in_window & key_ok)[None, :],
                other=0,
            )
            return key_ok[None, :] & ((bits != 0) | ~in_window[None, :])
        return key_ok[None, :] & (offs_n[None, :] <= key_limit[:, None])

    @triton.jit
    def _attend_block(
        acc, m_i, l_i,  # [BLOCK_M, BLOCK_D] fp32, [BLOCK_M] running max (log2 units), [BLOCK_M] sum
        q_tile, start, kv_end, scale_log2e,  # q_tile: [BLOCK_M, BLOCK_D]
        k_base, v_base, table,  # K/V of this KV head, this sequence's block-table row
        stride_kb, stride_ks, stride_vb, stride_vs,
        key_limit, win0, mask_rows, row_ok,  # see _visible
        HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, TREE: tl.constexpr, MASKED: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """One online-softmax step over keys ``[start, start + BLOCK_N)`` (FlashAttention-2)."""
        offs_n = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] logical key positions
        offs_d = tl.arange(0, BLOCK_D)
        key_ok = offs_n < kv_end
        page = tl.load(table + offs_n // PAGE, mask=key_ok, other=0).to(tl.int64)  # physical
        slot = offs_n % PAGE
        kv_ok = key_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
        k = tl.load(  # [BLOCK_N, BLOCK_D]
            k_base + page[:, None] * stride_kb + slot[:, None] * stride_ks + offs_d[None, :],
            mask=kv_ok, other=0.0,
        )
        s = _dot(q_tile, tl.trans(k), PRECISION, UPCAST) * scale_log2e  # [BLOCK_M, BLOCK_N]
        if MASKED:
            visible = _visible(offs_n, key_ok, key_limit, win0, mask_rows, row_ok, TREE)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no key yet keeps m = -inf; shift by 0 there to avoid inf - inf.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_shift)  # rescales what was accumulated under the old max
        p = tl.exp2(s - m_shift[:, None])  # [BLOCK_M, BLOCK_N]
        v = tl.load(  # [BLOCK_N, BLOCK_D]
            v_base + page[:, None] * stride_vb + slot[:, None] * stride_vs + offs_d[None, :],
            mask=kv_ok, other=0.0,
        )
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)
        return acc, m_new, l_i * alpha + tl.sum(p, 1)

    @triton.jit
    def _tree_attention_kernel(
        q, k_cache, v_cache, out,  # [T, Hq, D], [num_blocks, PAGE, Hkv, D] x2, [T, Hq, D]
        block_tables, kv_lens, cu_seqlens_q,  # [B, max_blocks], [B], [B + 1] int32
        tree_mask, tree_lens,  # [T, W] uint8 (the bool mask), [B] int32; unused unless TREE
        num_seqs, scale_log2e,
        stride_qt, stride_qh, stride_ot, stride_oh,
        stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
        stride_bt, stride_mt,
        HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, PAGE: tl.constexpr, TREE: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """Grid (flat query tile, KV head). Tile row r is query q_start + r // GROUP of query
        head kv_head * GROUP + r % GROUP; rows past BLOCK_Q * GROUP are padding."""
        tile = tl.program_id(0)
        kv_head = tl.program_id(1)
        seq = _find_sequence(cu_seqlens_q, tile, num_seqs, BLOCK_Q)
        q_begin = tl.load(cu_seqlens_q + seq)
        q_len = tl.load(cu_seqlens_q + seq + 1) - q_begin
        q_start = (tile - q_begin // BLOCK_Q - seq) * BLOCK_Q
        if q_start >= q_len:  # slack tile of the flat grid
            return
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        tok = q_start + offs_m // GROUP  # [BLOCK_M] query index within the sequence
        head = kv_head * GROUP + offs_m % GROUP  # [BLOCK_M] query head
        row_ok = (offs_m < BLOCK_Q * GROUP) & (tok < q_len)
        rows = (q_begin + tok).to(tl.int64)  # [BLOCK_M] row of q / out / tree_mask
        io_ok = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
        q_tile = tl.load(
            q + rows[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
            mask=io_ok, other=0.0,
        )
        tree_len = tl.load(tree_lens + seq) if TREE else 0
        win0, shared, kv_end = _key_ranges(
            tl.load(kv_lens + seq), q_len, q_start, tree_len, TREE, BLOCK_Q, BLOCK_N
        )
        key_limit = win0 + tok  # [BLOCK_M] causal: last key each row sees
        mask_rows = tree_mask + rows * stride_mt  # [BLOCK_M] tree: mask row pointers
        table = block_tables + seq.to(tl.int64) * stride_bt
        k_base = k_cache + kv_head * stride_kh
        v_base = v_cache + kv_head * stride_vh
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, shared, BLOCK_N):
            acc, m_i, l_i = _attend_block(
                acc, m_i, l_i, q_tile, start, kv_end, scale_log2e, k_base, v_base, table,
                stride_kb, stride_ks, stride_vb, stride_vs, key_limit, win0, mask_rows, row_ok,
                HEAD_DIM, PAGE, TREE, False, BLOCK_N, BLOCK_D, PRECISION, UPCAST,
            )
        for start in range(shared, kv_end, BLOCK_N):
            acc, m_i, l_i = _attend_block(
                acc, m_i, l_i, q_tile, start, kv_end, scale_log2e, k_base, v_base, table,
                stride_kb, stride_ks, stride_vb, stride_vs, key_limit, win0, mask_rows, row_ok,
                HEAD_DIM, PAGE, TREE, True, BLOCK_N, BLOCK_D, PRECISION, UPCAST,
            )
        o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # a row that saw no key stays 0
        o_ptrs = out + rows[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, o.to(out.dtype.element_ty), mask=io_ok)

    # The interpreter (TRITON_INTERPRET=1, read when the kernels are decorated) runs tl.dot with
    # numpy, which has no bfloat16: there bf16 operands are widened to fp32, which holds every
    # bf16 value exactly, so the products are those of the GPU's bf16 tensor cores.
    _INTERPRETED = isinstance(_tree_attention_kernel, InterpretedFunction)

    def tree_attention(
        q: torch.Tensor,  # [T, Hq, D]
        k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        block_tables: torch.Tensor,  # [B, max_blocks] int32
        kv_lens: torch.Tensor,  # [B] int32
        cu_seqlens_q: torch.Tensor,  # [B + 1] int32
        tree_mask: torch.Tensor | None,  # [T, W] bool
        tree_lens: torch.Tensor | None,  # [B] int32
        scale: float,
    ) -> torch.Tensor:  # [T, Hq, D]
        """Triton launcher with the contract of :func:`tree_attention_ref`."""
        _check_inputs(q, k_cache, v_cache, block_tables, kv_lens, cu_seqlens_q, tree_mask,
                      tree_lens)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        num_tokens, num_q_heads, head_dim = q.shape
        num_seqs, num_kv_heads = kv_lens.shape[0], k_cache.shape[2]
        if num_tokens == 0 or num_seqs == 0:
            return out
        group = num_q_heads // num_kv_heads
        tiles = _tile_config(num_tokens, num_seqs, group, head_dim, q.dtype)
        tree = tree_mask is not None
        mask = tree_mask.view(torch.uint8) if tree else kv_lens  # placeholder when causal
        _tree_attention_kernel[(num_tokens // tiles["BLOCK_Q"] + num_seqs, num_kv_heads)](
            q, k_cache, v_cache, out, block_tables, kv_lens, cu_seqlens_q,
            mask, tree_lens if tree else kv_lens,
            num_seqs, float(scale) * math.log2(math.e),
            q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            block_tables.stride(0), mask.stride(0),
            HEAD_DIM=head_dim, GROUP=group, PAGE=k_cache.shape[1], TREE=tree, **tiles,
            # fp32 inputs: exact fp32 products, not TF32, to honour the fp32 reference.
            PRECISION="ieee" if q.dtype == torch.float32 else None,
            UPCAST=q.dtype == torch.bfloat16 and _INTERPRETED,
        )
        return out

    def _tile_config(
        num_tokens: int, num_seqs: int, group: int, head_dim: int, dtype: torch.dtype
    ) -> dict[str, int]:
        """Tile sizes and warps from shapes only (no device sync). Untuned on hardware: chosen so
        ptxas (sm_90) reports no register spills at head dim 128 in fp16/bf16.

        A tile's BLOCK_M = BLOCK_Q * group rows (a power of two) follow the mean queries per
        sequence: one when decoding, the tree size when verifying. tl.dot needs every tile
        dimension >= 16.
        """
        mean_q = triton.cdiv(num_tokens, num_seqs)
        block_m = min(64, triton.next_power_of_2(group * mean_q))
        block_m = max(16, triton.next_power_of_2(group), block_m)
        block_d = max(16, triton.next_power_of_2(head_dim))
        block_n = 64 if block_d <= 128 and dtype != torch.float32 else 32
        return dict(
            BLOCK_Q=block_m // group, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
            num_warps=8 if block_m * block_d >= 64 * 128 else 4,
        )

    _FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

    def _require(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(f"tree_attention: {message}")

    def _check_inputs(q, k_cache, v_cache, block_tables, kv_lens, cu_seqlens_q, tree_mask,
                      tree_lens) -> None:
        """Dtypes, shapes, strides and devices the kernel relies on (values are not read)."""
        _require(q.dim() == 3 and k_cache.dim() == 4,
                 "q must be [T, Hq, D] and k_cache [num_blocks, block_size, Hkv, D]")
        _require(q.dtype in _FLOAT_DTYPES, f"q dtype {q.dtype} is not fp16, bf16 or fp32")
        _require(k_cache.dtype == v_cache.dtype == q.dtype, "q, k_cache and v_cache dtypes differ")
        _require(v_cache.shape == k_cache.shape, "k_cache and v_cache shapes differ")
        _require(q.shape[2] == k_cache.shape[3], "q and k_cache head dims differ")
        _require(q.shape[1] % k_cache.shape[2] == 0, "query heads must be a multiple of KV heads")
        _require(all(t.stride(-1) == 1 for t in (q, k_cache, v_cache)),
                 "q, k_cache and v_cache need a contiguous last dim")
        num_seqs = kv_lens.shape[0]
        index = [block_tables, kv_lens, cu_seqlens_q]
        index += [tree_lens] if tree_lens is not None else []
        _require(all(t.dtype == torch.int32 for t in index), "index tensors must be int32")
        _require(block_tables.dim() == 2 and block_tables.shape[0] == num_seqs
                 and block_tables.stride(1) == 1,
                 "block_tables must be [B, max_blocks] with contiguous rows")
        _require(kv_lens.dim() == 1 and kv_lens.is_contiguous(),
                 "kv_lens must be a contiguous [B]")
        _require(cu_seqlens_q.shape == (num_seqs + 1,) and cu_seqlens_q.is_contiguous(),
                 "cu_seqlens_q must be a contiguous [B + 1]")
        _require((tree_mask is None) == (tree_lens is None),
                 "give tree_mask and tree_lens together")
        if tree_mask is not None:
            _require(tree_mask.dtype == torch.bool, "tree_mask must be bool")
            _require(tree_mask.dim() == 2 and tree_mask.shape[0] == q.shape[0]
                     and tree_mask.stride(1) == 1, "tree_mask must be [T, W] with contiguous rows")
            _require(tree_lens.shape == (num_seqs,) and tree_lens.is_contiguous(),
                     "tree_lens must be a contiguous [B]")
        others = [k_cache, v_cache, tree_mask] + index
        _require(all(t.device == q.device for t in others if t is not None),
                 "all tensors must be on q's device")
