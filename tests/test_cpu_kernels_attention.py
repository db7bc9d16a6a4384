"""The C++ CPU tree attention (``specgrove/kernels/cpu_attention.py``) against ``tree_attention_ref``.

Covers decode, causal prefill (chunked: queries at the end of a longer prefix), tree masks whose
window is longer than the query count, GQA groups 1/3/4, odd lengths, page sizes 1/16, shuffled
block tables, zero-query sequences, and float64 / float32 / bfloat16. Skipped where the kernel
cannot be built (no C++ compiler).
"""
from __future__ import annotations

import pytest
import torch

from specgrove.kernels import cpu_attention
from specgrove.kernels.tree_attention import tree_attention_ref

pytestmark = pytest.mark.skipif(not cpu_attention.available(), reason="CPU kernels did not build")
tree_attention_cpu = cpu_attention.tree_attention_cpu


def random_tree_mask(n: int, g: torch.Generator) -> torch.Tensor:  # [n, n] ancestor mask
    parent = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            m[i, j] = True
            j = parent[j]
    return m


def make_case(seqs, *, hq=9, hkv=3, d=64, page=16, dtype=torch.float64, tree=False, seed=0,
              extra_width=0):
    """seqs: list of (kv_len, q_len, window) -- window is only used when ``tree``."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-kv // page) for kv, _, _ in seqs]
    num_blocks = sum(blocks_per_seq) + 3
    perm = torch.randperm(num_blocks, generator=g).tolist()  # shuffled physical blocks
    tables, used = [], 0
    width = max(blocks_per_seq) + 2
    for nb in blocks_per_seq:
        tables.append(perm[used:used + nb] + [0] * (width - nb))
        used += nb
    k_cache = torch.randn(num_blocks, page, hkv, d, generator=g, dtype=torch.float64).to(dtype)
    v_cache = torch.randn(num_blocks, page, hkv, d, generator=g, dtype=torch.float64).to(dtype)
    q_lens = [ql for _, ql, _ in seqs]
    T = sum(q_lens)
    q = torch.randn(T, hq, d, generator=g, dtype=torch.float64).to(dtype)
    cu = torch.tensor([0] + q_lens).cumsum(0).to(torch.int32)
    mask = lens = None
    if tree:
        W = max(w for _, _, w in seqs) + extra_width
        mask = torch.zeros(T, W, dtype=torch.bool)
        row = 0
        for kv, ql, w in seqs:
            full = random_tree_mask(w, g)  # the window's mask; queries are its last ql nodes
            mask[row:row + ql, :w] = full[w - ql:]
            row += ql
        lens = torch.tensor([w for _, _, w in seqs], dtype=torch.int32)
    return (q, k_cache, v_cache, torch.tensor(tables, dtype=torch.int32),
            torch.tensor([kv for kv, _, _ in seqs], dtype=torch.int32), cu, mask, lens, d ** -0.5)


TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2}

CASES = {
    "decode": ([(1, 1, 0), (37, 1, 0), (300, 1, 0), (1029, 1, 0)], False),
    "decode_long": ([(4099, 1, 0)], False),
    "prefill": ([(5, 5, 0), (33, 33, 0), (70, 70, 0)], False),
    "chunked_prefill": ([(100, 17, 0), (513, 40, 0)], False),
    "tree": ([(20, 16, 16), (301, 7, 7), (64, 1, 1)], True),
    "tree_window_longer": ([(50, 3, 9), (400, 4, 16), (17, 2, 15)], True),
    "zero_queries": ([(10, 0, 0), (30, 1, 0), (8, 0, 0)], False),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("heads", [(9, 3), (4, 4), (8, 2)])
def test_matches_reference(name, page, dtype, heads):
    seqs, tree = CASES[name]
    if tree and any(w > kv for kv, _, w in seqs):
        pytest.skip("invalid")
    args = make_case(seqs, hq=heads[0], hkv=heads[1], page=page, dtype=dtype, tree=tree,
                     extra_width=3)
    ref = tree_attention_ref(*args)
    out = tree_attention_cpu(*args)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if dtype == torch.bfloat16:  # the reference's SDPA rounds differently; compare in float64
        ref64 = tree_attention_ref(*[a.double() if torch.is_tensor(a) and a.is_floating_point()
                                     else a for a in args])
        err = (out.double() - ref64).abs().max().item()
        assert err < TOL[dtype], err
    else:
        err = (out - ref).abs().max().item()
        assert err < TOL[dtype], err


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_agree(threads):
    args = make_case([(2000, 1, 0), (7, 1, 0)], dtype=torch.float64)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = tree_attention_cpu(*args)
    finally:
        torch.set_num_threads(old)
    assert (out - tree_attention_ref(*args)).abs().max().item() < 1e-12


def test_no_visible_key_gives_zeros():
    # A causal sequence with q_len > kv_len breaks the precondition; queries seeing no key -> 0.
    args = list(make_case([(3, 1, 0)], dtype=torch.float64))
    args[4] = torch.tensor([0], dtype=torch.int32)  # kv_len 0
    out = tree_attention_cpu(*args)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("d", [8, 20, 80, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_other_head_dims(d, dtype):
    """Head dims off the 64 / 16-lane fast paths: multiples of 8 only (AVX2 blocks), of 64 with
    more than one register block (128), and no vector multiple (20: the scalar loops)."""
    for seqs, tree in [([(1, 1, 0), (300, 1, 0), (77, 1, 0)], False), ([(40, 9, 9), (301, 16, 16)], True),
                       ([(45, 45, 0)], False)]:
        args = make_case(seqs, d=d, dtype=dtype, tree=tree, seed=d)
        out = tree_attention_cpu(*args)
        ref64 = tree_attention_ref(*[a.double() if torch.is_tensor(a) and a.is_floating_point()
                                     else a for a in args])
        err = (out.double() - ref64).abs().max().item()
        assert err < TOL[dtype], (seqs, err)
