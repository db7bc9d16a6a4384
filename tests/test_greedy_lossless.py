"""Greedy speculative decoding returns exactly the tokens of plain greedy decoding and of HF,
through the gateway's orchestrator over the in-process ports."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from specgrove.types import TreeBudget
from tests.helpers import draft_engine, generate, request, target_engine

PROMPTS = [
    (5, 6, 7, 8, 5, 6, 7, 8, 5, 6),  # repetitive: n-gram lookup finds continuations
    (9, 10, 11),
    (20, 21, 22, 23, 24, 25, 26, 20, 21),
    (42,),
]
MAX_TOKENS = 30

BUDGETS = [
    ("model", TreeBudget(branching=(4, 2, 2, 1))),
    ("model", TreeBudget(branching=(1, 1, 1, 1, 1))),  # a chain
    ("model", TreeBudget(branching=(3,))),  # wide and shallow
    ("model", TreeBudget(max_nodes=12, max_depth=4, top_k=3)),  # dynamic (EAGLE-2)
    ("ngram", TreeBudget(max_nodes=10, max_depth=5)),
    ("ngram", TreeBudget(branching=(2, 2, 1))),
]


@pytest.fixture(scope="module")
def engines(tiny_dirs):
    target = target_engine(tiny_dirs["llama"], block_size=4, shuffle_seed=2)
    drafts = draft_engine(tiny_dirs["draft"], block_size=3)
    return target, drafts


@pytest.fixture(scope="module")
def plain(engines):
    target, drafts = engines
    reqs = [request(p, MAX_TOKENS) for p in PROMPTS]
    return [o.token_ids for o in generate(target, drafts, reqs)]


def test_plain_engine_matches_hf_generate(tiny_dirs, plain):
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], dtype=torch.float64)
    for prompt, ours in zip(PROMPTS, plain):
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
        assert out[0, len(prompt):].tolist() == ours


@pytest.mark.parametrize("drafter,budget", BUDGETS, ids=lambda x: str(x))
def test_speculative_equals_plain(engines, plain, drafter, budget):
    target, drafts = engines
    free = target.runner.blocks.num_free_blocks
    reqs = [request(p, MAX_TOKENS, budget=budget, drafter=drafter) for p in PROMPTS]
    outs = generate(target, drafts, reqs)
    assert [o.token_ids for o in outs] == plain
    assert target.runner.blocks.num_free_blocks == free
    assert drafts.num_sequences == 0
    assert all(o.stats.drafted_tokens > 0 for o in outs if drafter == "model")


def test_self_drafting_accepts_whole_paths(tiny_dirs, engines, plain):
    """The target drafting for itself must have every greedy path accepted (tree plumbing)."""
    target, _ = engines
    drafts = draft_engine(tiny_dirs["llama"])
    reqs = [request(p, MAX_TOKENS, budget=TreeBudget(branching=(2, 2, 2)), drafter="model")
            for p in PROMPTS]
    outs = generate(target, drafts, reqs)
    assert [o.token_ids for o in outs] == plain
    for o in outs:
        assert o.stats.mean_acceptance_length > 3.5  # 4 tokens per step except the last one


def test_other_architectures_greedy(tiny_dirs):
    for arch in ("qwen2", "mistral", "llama3"):
        target = target_engine(tiny_dirs[arch])
        drafts = draft_engine(tiny_dirs[arch])  # self-draft through a separate runner
        base = generate(target, drafts, [request(PROMPTS[0], 20)])[0].token_ids
        spec = generate(target, drafts, [request(PROMPTS[0], 20, drafter="model",
                                                 budget=TreeBudget(branching=(3, 2)))])
        assert spec[0].token_ids == base


def test_triton_backend_gives_the_same_tokens(tiny_dirs):
    """The engine with the Triton kernels forced (interpreter on CPU) decodes identically."""
    pytest.importorskip("triton")
    prompts = PROMPTS[:2]
    reqs = lambda **kw: [request(p, 12, **kw) for p in prompts]
    reference = target_engine(tiny_dirs["llama"], dtype=torch.float32, backend="torch")
    want = [o.token_ids for o in generate(reference, draft_engine(), reqs())]
    target = target_engine(tiny_dirs["llama"], dtype=torch.float32, backend="triton", shuffle_seed=1)
    drafts = draft_engine(tiny_dirs["draft"], dtype=torch.float32, backend="triton")
    assert target.runner.model.model.layers[0].self_attn.backend.name == "triton"
    free = target.runner.blocks.num_free_blocks
    for kw in ({}, {"drafter": "model", "budget": TreeBudget(branching=(2, 2))},
               {"drafter": "ngram", "budget": TreeBudget(max_nodes=6, max_depth=4)}):
        assert [o.token_ids for o in generate(target, drafts, reqs(**kw))] == want
    assert target.runner.blocks.num_free_blocks == free
