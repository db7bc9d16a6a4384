"""Tree attention kernel vs ``tree_attention_ref``: trees, causal chunks, GQA, pages, dtypes."""
from __future__ import annotations

import pytest
import torch

from specgrove.kernels import tree_attention as attn
from tests.triton_kernels.cases import DTYPES, Seq, assert_matches_reference, make_batch, tree_parents


def tree_batch(gen) -> list[Seq]:
    return [
        Seq(37, 5, tree_parents("chain", 5, gen)),
        Seq(0, 1, (-1,)),  # single node, no prefix: plain decoding of a first token
        Seq(19, 8, tree_parents("wide", 8, gen)),
        Seq(5, 4, tree_parents("random", 11, gen)),  # window longer than the queries
        Seq(70, 0, tree_parents("chain", 3, gen)),  # no queries this step
        Seq(3, 7, tree_parents("deep", 7, gen)),
    ]


def causal_batch(gen) -> list[Seq]:
    return [Seq(0, 9), Seq(21, 6), Seq(50, 1), Seq(13, 0), Seq(33, 1), Seq(1, 17)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("page", [1, 16, 32])
@pytest.mark.parametrize("hq,hkv", [(2, 2), (6, 2)])  # GQA groups 1 and 3 (not a power of two)
@pytest.mark.parametrize("make_seqs", [tree_batch, causal_batch], ids=["tree", "causal"])
def test_tree_attention_matches_reference(dtype, page, hq, hkv, make_seqs):
    gen = torch.Generator().manual_seed(page * 100 + hq)
    batch = make_batch(make_seqs(gen), page=page, hq=hq, hkv=hkv, d=32, dtype=dtype, gen=gen)
    assert_matches_reference(batch)


@pytest.mark.parametrize("hq,hkv", [(1, 1), (4, 1), (16, 2)])
@pytest.mark.parametrize("d", [16, 24])  # 24: padded to a 32-wide tile
def test_decoding_long_prefixes(hq, hkv, d):
    """One query per sequence over prefixes spanning several key blocks (the unmasked loop);
    q is a strided view, as a slice of a fused QKV projection would be."""
    gen = torch.Generator().manual_seed(hq + d)
    seqs = [Seq(200, 1), Seq(128, 1), Seq(63, 1), Seq(0, 1)]
    batch = make_batch(seqs, page=16, hq=hq, hkv=hkv, d=d, dtype=torch.float32, gen=gen)
    batch["q"] = torch.cat([batch["q"], torch.randn_like(batch["q"])], dim=1)[:, :hq]
    assert_matches_reference(batch)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_prefill_spanning_query_tiles(dtype):
    """A chunk of queries after a prefix: several query tiles, each along the causal diagonal."""
    gen = torch.Generator().manual_seed(7)
    seqs = [Seq(150, 100), Seq(0, 77)]
    assert_matches_reference(make_batch(seqs, page=16, hq=2, hkv=1, d=16, dtype=dtype, gen=gen))


def test_large_tree_spanning_key_blocks():
    """A 100-node window over a short prefix: window keys span two key blocks."""
    gen = torch.Generator().manual_seed(3)
    seqs = [
        Seq(9, 90, tree_parents("random", 100, gen)),
        Seq(64, 40, tree_parents("deep", 40, gen)),
    ]
    batch = make_batch(seqs, page=32, hq=4, hkv=2, d=16, dtype=torch.float16, gen=gen)
    assert_matches_reference(batch)


def test_query_that_sees_no_key_returns_zeros():
    """Outside the contract (a node always sees itself), but it must not produce NaN."""
    gen = torch.Generator().manual_seed(0)
    seqs = [Seq(0, 2, (-1, 0)), Seq(4, 1, (-1,))]
    batch = make_batch(seqs, page=16, hq=2, hkv=1, d=16, dtype=torch.float32, gen=gen)
    batch["tree_mask"][0] = False
    out = attn.tree_attention(**batch)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    torch.testing.assert_close(out[1:], attn.tree_attention_ref(**batch)[1:])


def test_no_queries_returns_empty():
    gen = torch.Generator().manual_seed(0)
    seqs = [Seq(5, 0), Seq(3, 0)]
    batch = make_batch(seqs, page=4, hq=2, hkv=1, d=16, dtype=torch.float16, gen=gen)
    assert attn.tree_attention(**batch).shape == (0, 2, 16)


def _corrupt(batch, key, value):
    return {**batch, key: value}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: _corrupt(b, "block_tables", b["block_tables"].long()), "int32"),
        (lambda b: _corrupt(b, "k_cache", b["k_cache"].half()), "dtypes differ"),
        (lambda b: _corrupt(b, "q", b["q"].double()), "not fp16, bf16 or fp32"),
        (lambda b: _corrupt(b, "tree_lens", None), "together"),
        (lambda b: _corrupt(b, "tree_mask", b["tree_mask"].int()), "bool"),
        (lambda b: _corrupt(b, "q", b["q"].mT.contiguous().mT), "last dim"),
        (lambda b: _corrupt(b, "q", b["q"][:, :3]), "multiple of KV heads"),
        (lambda b: _corrupt(b, "cu_seqlens_q", b["cu_seqlens_q"][:-1]), "cu_seqlens_q"),
    ],
)
def test_launcher_rejects_bad_inputs(change, message):
    gen = torch.Generator().manual_seed(0)
    seqs = [Seq(3, 2, (-1, 0)), Seq(1, 1, (-1,))]
    batch = make_batch(seqs, page=4, hq=4, hkv=2, d=16, dtype=torch.float32, gen=gen)
    with pytest.raises(ValueError, match=message):
        attn.tree_attention(**change(batch))
