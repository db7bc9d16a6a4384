"""Sampling is lossless: speculative output has exactly the target's distribution.

Statistical test used throughout: Pearson's chi-square goodness of fit of observed counts
against the *exact* target probabilities (bins with expected count < 5 merged into one),
rejecting at p < 1e-3. Every draw is seeded, so each test sees the same samples on every run:
it cannot flake, and the negative controls show the same test does reject a wrong distribution.
"""
from __future__ import annotations

import collections

import pytest
import torch
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM

from specgrove.sampling import accept_sampled, make_generator, target_probs
from specgrove.tree import TokenTree
from specgrove.types import SamplingParams, TreeBudget
from tests.helpers import draft_engine, generate, request, target_engine
from tests.tiny_models import save_tiny_model

ALPHA = 1e-3


def chi_square_p(counts: collections.Counter, expected_probs: dict, n: int) -> float:
    obs, exp, rest_obs, rest_exp = [], [], 0, 0.0
    for key, p in expected_probs.items():
        if p * n >= 5:
            obs.append(counts.get(key, 0))
            exp.append(p * n)
        else:
            rest_obs += counts.get(key, 0)
            rest_exp += p * n
    rest_obs += sum(c for k, c in counts.items() if k not in expected_probs)
    obs.append(rest_obs)
    exp.append(rest_exp)
    if exp[-1] == 0:
        if obs[-1] > 0:
            return 0.0  # samples outside the support of p: certainly not distributed as p
        obs, exp = obs[:-1], exp[:-1]
    scale = sum(obs) / sum(exp)  # exact normalisation for scipy
    return chisquare(obs, [e * scale for e in exp]).pvalue


def test_target_probs_temperature_top_k_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]], dtype=torch.float64)
    p = target_probs(logits, SamplingParams(temperature=0.5))
    torch.testing.assert_close(p, (logits / 0.5).softmax(-1))
    p = target_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    torch.testing.assert_close(p[0, 2:], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(p[0, :2], logits[0, :2].softmax(-1))
    full = logits.softmax(-1)[0]  # [0.53, 0.20, 0.12, 0.07, 0.03]
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert (p[0] > 0).tolist() == [True, True, False, False, False]  # 0.53 < 0.7 <= 0.73
    torch.testing.assert_close(p[0, :2], full[:2] / full[:2].sum())


def test_acceptance_rule_emits_exact_p_at_every_node():
    """Unit level: the first emitted token (accepted child or bonus) follows p_root."""
    vocab = 6
    probs = torch.tensor([0.05, 0.3, 0.25, 0.1, 0.2, 0.1], dtype=torch.float64)
    tree = TokenTree((9, 2, 4, 0, 1), (-1, 0, 0, 0, 2))
    table = probs.expand(len(tree), vocab).clone()
    gen = make_generator(0)
    counts = collections.Counter()
    n = 20000
    for _ in range(n):
        path, bonus = accept_sampled(tree, table, gen)
        counts[tree.token_ids[path[0]] if path else bonus] += 1
    assert chi_square_p(counts, dict(enumerate(probs.tolist())), n) > ALPHA
    # Negative control: claiming the draft's order (first child always) is p must be rejected.
    wrong = dict(enumerate([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    assert chi_square_p(counts, wrong, n) < ALPHA


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab16")
    kw = dict(with_tokenizer=False, vocab_size=16)
    return {
        "target": save_tiny_model(root / "t", "llama", seed=10, **kw),
        "draft": save_tiny_model(root / "d", "llama", seed=11, seed_layers=1, **kw),
    }


PROMPT = (3, 1, 4, 1)
NEW = 3  # tokens per sample: the prefill's token then one or two verify steps


def exact_joint(path, params: SamplingParams) -> dict:
    """P(t1, t2, t3 | prompt) under the target, enumerated with the HF implementation."""
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)
    joint = {(): 1.0}
    for _ in range(NEW):
        prefixes = list(joint)
        with torch.no_grad():
            ids = torch.tensor([PROMPT + k for k in prefixes])
            p = target_probs(hf(ids).logits[:, -1], params)
        joint = {k + (t,): joint[k] * p[i, t].item()
                 for i, k in enumerate(prefixes) for t in range(p.shape[1]) if p[i, t] > 0}
    return joint


def sample_outputs(small_vocab, params, drafter, budget, n=3000) -> collections.Counter:
    target = target_engine(small_vocab["target"], num_blocks=4096)
    drafts = draft_engine(small_vocab[drafter] if drafter != "ngram" else None, num_blocks=4096)
    name = "ngram" if drafter == "ngram" else "model"
    counts = collections.Counter()
    for start in range(0, n, 500):
        reqs = [request(PROMPT, NEW, SamplingParams(params.temperature, params.top_p,
                                                    params.top_k, seed=i), budget, name)
                for i in range(start, start + 500)]
        for out in generate(target, drafts, reqs):
            counts[tuple(out.token_ids)] += 1
    return counts


CASES = [
    ("draft", SamplingParams(temperature=1.0), TreeBudget(branching=(3, 2))),
    ("target", SamplingParams(temperature=0.8, top_k=6), TreeBudget(branching=(2, 2))),
    ("draft", SamplingParams(temperature=1.0, top_p=0.8), TreeBudget(max_nodes=6, max_depth=2, top_k=3)),
]


@pytest.mark.parametrize("drafter,params,budget", CASES, ids=["static", "self-topk", "dynamic-topp"])
def test_speculative_sampling_matches_target_distribution(small_vocab, drafter, params, budget):
    n = 3000
    counts = sample_outputs(small_vocab, params, drafter, budget, n)
    joint = exact_joint(small_vocab["target"], params)
    assert chi_square_p(counts, joint, n) > ALPHA


def test_plain_sampling_matches_and_test_has_power(small_vocab):
    n = 3000
    params = SamplingParams(temperature=1.0)
    counts = sample_outputs(small_vocab, params, "ngram", TreeBudget.off(), n)
    assert chi_square_p(counts, exact_joint(small_vocab["target"], params), n) > ALPHA
    # Negative control: the same samples against a slightly different p are rejected.
    shifted = exact_joint(small_vocab["target"], SamplingParams(temperature=0.8))
    assert chi_square_p(counts, shifted, n) < ALPHA


def test_seeded_requests_are_reproducible(small_vocab):
    params = SamplingParams(temperature=1.0, seed=5)
    target = target_engine(small_vocab["target"])
    drafts = draft_engine(small_vocab["draft"])
    runs = [generate(target, drafts, [request(PROMPT, 12, params, TreeBudget(branching=(2, 2)), "model")])
            for _ in range(2)]
    assert runs[0][0].token_ids == runs[1][0].token_ids
