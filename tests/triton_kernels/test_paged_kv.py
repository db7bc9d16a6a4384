"""KV write and commit kernels vs ``write_kv_ref`` / ``commit_kv_ref``."""
from __future__ import annotations

import pytest
import torch

from specgrove.kernels import paged_kv as paged
from tests.triton_kernels.cases import DEVICE, DTYPES, path_commits


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("page", [1, 16, 32])
def test_write_kv_matches_reference(dtype, page):
    gen = torch.Generator().manual_seed(page)
    hkv, d, t = 3, 16, 11
    num_blocks = -(-2 * t // page) + 1  # twice the slots needed
    k_cache = torch.randn(num_blocks, page, hkv, d, generator=gen).to(dtype).to(DEVICE)
    v_cache = torch.randn(num_blocks, page, hkv, d, generator=gen).to(dtype).to(DEVICE)
    # K and V as the model makes them: strided views into one fused projection.
    kv = torch.randn(t, 2 * hkv * d + 5, generator=gen).to(dtype).to(DEVICE)
    k = kv[:, : hkv * d].view(t, hkv, d)
    v = kv[:, hkv * d : 2 * hkv * d].view(t, hkv, d)
    slots = torch.randperm(num_blocks * page, generator=gen)[:t].to(DEVICE)
    expect_k, expect_v = k_cache.clone(), v_cache.clone()
    paged.write_kv_ref(expect_k, expect_v, k, v, slots)
    paged.write_kv(k_cache, v_cache, k, v, slots)
    assert torch.equal(k_cache, expect_k) and torch.equal(v_cache, expect_v)


def test_write_kv_nothing_to_write():
    cache = torch.randn(2, 4, 1, 16, device=DEVICE)
    before = cache.clone()
    empty = torch.empty(0, 1, 16, device=DEVICE)
    paged.write_kv(cache, cache, empty, empty, torch.empty(0, dtype=torch.int64, device=DEVICE))
    assert torch.equal(cache, before)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("page", [1, 16, 32])
def test_commit_kv_matches_reference(dtype, page):
    gen = torch.Generator().manual_seed(page)
    src, dst, num_slots = path_commits([5, 0, 33, 17], tree_size=9, page=page, gen=gen)
    layers, hkv, d = 3, 2, 16
    kv_cache = torch.randn(layers, 2, num_slots // page, page, hkv, d, generator=gen)
    kv_cache = kv_cache.to(dtype).to(DEVICE)
    expect = kv_cache.clone()
    paged.commit_kv_ref(expect, src, dst)
    paged.commit_kv(kv_cache, src, dst)
    assert torch.equal(kv_cache, expect)


def test_commit_kv_reads_every_source_before_writing():
    """A swap and a 3-cycle: any copy order without staging would lose a source."""
    kv_cache = torch.randn(2, 2, 3, 4, 1, 16, device=DEVICE)
    src = torch.tensor([0, 5, 7, 8, 9], device=DEVICE)
    dst = torch.tensor([5, 0, 8, 9, 7], device=DEVICE)
    expect = kv_cache.clone()
    paged.commit_kv_ref(expect, src, dst)
    paged.commit_kv(kv_cache, src, dst)
    assert torch.equal(kv_cache, expect)


def test_paged_kv_rejects_bad_inputs():
    kv_cache = torch.zeros(1, 2, 2, 4, 1, 16, device=DEVICE)
    slots = torch.tensor([1, 2], device=DEVICE)
    with pytest.raises(ValueError, match="int64"):
        paged.commit_kv(kv_cache, slots.int(), slots.int())
    with pytest.raises(ValueError, match="contiguous"):
        paged.commit_kv(kv_cache.transpose(2, 3), slots, slots)
    k = torch.zeros(2, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="share a dtype"):
        paged.write_kv(kv_cache[0, 0], kv_cache[0, 1], k.half(), k.half(), slots)
