"""Our forward pass equals Hugging Face's for the same checkpoint (float64)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from specgrove.runner import ForwardItem
from tests.helpers import runner

# Differences come only from summation order: HF normalises RMSNorm in float32 even for
# float64 models, which turns 1e-16 reorderings into ~1e-6 logit differences.
ATOL = 2e-5


def _hf_logits(path, ids: torch.Tensor) -> torch.Tensor:
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, attn_implementation="sdpa")
    with torch.no_grad():
        return hf(ids.unsqueeze(0)).logits[0]  # [T, V]


@pytest.mark.parametrize("arch", ["llama", "llama3", "qwen2", "mistral"])
@pytest.mark.parametrize("block_size", [1, 16])
@pytest.mark.parametrize("transposed", [False, True])
def test_prefill_and_paged_decode_match_hf(tiny_dirs, arch, block_size, transposed):
    ids = torch.randint(0, 320, (29,), generator=torch.Generator().manual_seed(7))
    ref = _hf_logits(tiny_dirs[arch], ids)
    r = runner(tiny_dirs[arch], block_size=block_size, num_blocks=64, shuffle_seed=3,
               transposed=transposed)
    r.blocks.add_sequence(0)
    prompt = 17
    out = [r.forward([ForwardItem(0, ids[:prompt].tolist(), range(prompt), all_logits=True)])[0]]
    r.commit_many([(0, prompt, None)])
    for i in range(prompt, len(ids)):  # token-by-token through the paged cache
        out.append(r.forward([ForwardItem(0, [int(ids[i])], [i])])[0])
        r.commit_many([(0, 1, None)])
    torch.testing.assert_close(torch.cat(out), ref, atol=ATOL, rtol=0)


def test_batched_prefill_of_mixed_lengths_matches_hf(tiny_dirs):
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, 320, (n,), generator=gen) for n in (5, 13, 1, 9)]
    r = runner(tiny_dirs["qwen2"], block_size=4, shuffle_seed=5)
    for i in range(len(prompts)):
        r.blocks.add_sequence(i)
    items = [ForwardItem(i, p.tolist(), range(len(p)), all_logits=True) for i, p in enumerate(prompts)]
    for p, got in zip(prompts, r.forward(items)):
        torch.testing.assert_close(got, _hf_logits(tiny_dirs["qwen2"], p), atol=ATOL, rtol=0)


def test_low_precision_dtypes_run(tiny_dirs):
    ids = list(range(3, 20))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        r = runner(tiny_dirs["llama"], dtype=dtype)
        r.blocks.add_sequence(0)
        logits = r.forward([ForwardItem(0, ids, range(len(ids)))])[0]
        assert logits.dtype == dtype and torch.isfinite(logits).all()
