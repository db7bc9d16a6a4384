"""Sampling is lossless: speculative output has exactly the target's distribution, and a seeded
request's tokens do not depend on the speculation (position-keyed Gumbel noise).

Statistical test used throughout: Pearson's chi-square goodness of fit of observed counts
against the *exact* target probabilities (bins with expected count < 5 merged into one),
rejecting at p < 1e-3. Every draw is seeded, so each test sees the same samples on every run:
it cannot flake, and the negative controls show the same test does reject a wrong distribution.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM

import math

from scipy.stats import kstest

from specgrove.sampling import (NoiseCache, _mix64, accept_path, position_noise, sampled_tokens,
                                target_logits, target_probs)
from specgrove.tree import TokenTree
from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget
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


def _splitmix_gumbel(seed: int, position: int, token: int) -> float:
    """The noise definition written out in pure Python, 64-bit unsigned arithmetic."""
    key = _mix64(_mix64(seed) + position)
    z = _mix64((key + (token + 1) * 0x9E3779B97F4A7C15) & (2**64 - 1))
    return -math.log(-math.log(((z >> 11) + 0.5) * 2.0**-53))


def test_position_noise_is_splitmix64_and_standard_gumbel():
    seed, positions = 2**62 + 12345, [0, 7, 10**9]
    g = position_noise(seed, positions, 300)
    for i, pos in enumerate(positions):
        for v in (0, 1, 17, 299):
            assert g[i, v].item() == pytest.approx(_splitmix_gumbel(seed, pos, v), abs=1e-12)
    many = position_noise(3, range(40), 5000).flatten().numpy()  # 200k draws
    gumbel_cdf = lambda x: np.exp(-np.exp(-x))
    assert kstest(many, gumbel_cdf).pvalue > ALPHA
    assert kstest(many + 0.1, gumbel_cdf).pvalue < ALPHA  # the test can tell a shift
    rows = position_noise(3, [5, 6], 20000)  # neighbouring positions (and seeds) uncorrelated
    other = position_noise(4, [5], 20000)
    assert abs(np.corrcoef(rows[0], rows[1])[0, 1]) < 0.03
    assert abs(np.corrcoef(rows[0], other[0])[0, 1]) < 0.03
    assert torch.equal(position_noise(9, [4, 2], 64)[1], position_noise(9, [2], 64)[0])  # per row


def test_gumbel_max_picks_exactly_p_whatever_the_children():
    """Unit level: with fresh noise per seed, the first emitted token (an accepted child or
    the bonus) follows p at the root, for any set of children."""
    probs = torch.tensor([0.05, 0.3, 0.25, 0.1, 0.2, 0.1], dtype=torch.float64)
    tree = TokenTree((9, 2, 4, 0, 1), (-1, 0, 0, 0, 2))
    log_p = probs.log().expand(len(tree), -1)
    n = 20000
    counts = collections.Counter()
    for seed in range(n):
        noise = position_noise(seed, [10 + d for d in tree.depths], len(probs))
        path, bonus = accept_path(tree, sampled_tokens(log_p, noise))
        counts[tree.token_ids[path[0]] if path else bonus] += 1
    assert chi_square_p(counts, dict(enumerate(probs.tolist())), n) > ALPHA
    # Negative control: claiming the draft's order (first child always) is p must be rejected.
    wrong = dict(enumerate([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    assert chi_square_p(counts, wrong, n) < ALPHA


def test_siblings_share_their_position_and_the_walk_follows_the_target():
    """Every node at one depth sees the same noise row: the same logits give the same token."""
    tree = TokenTree((5, 1, 2, 3), (-1, 0, 0, 0))
    logits = torch.randn(1, 32, dtype=torch.float64).expand(len(tree), -1)
    cache = NoiseCache(7, 32)
    rows = cache.rows([11 + d for d in tree.depths])
    assert torch.equal(rows[1], rows[2]) and torch.equal(rows[2], rows[3])
    tokens = sampled_tokens(target_logits(logits, SamplingParams(temperature=1.0)), rows)
    assert tokens[1] == tokens[2] == tokens[3]


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


def exact_joint(path, params: SamplingParams, prompt=PROMPT, new=NEW) -> dict:
    """P(t1 .. t_new | prompt) under the target, enumerated with the HF implementation."""
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)
    joint = {(): 1.0}
    for _ in range(new):
        prefixes = list(joint)
        with torch.no_grad():
            ids = torch.tensor([prompt + k for k in prefixes])
            p = target_probs(hf(ids).logits[:, -1], params)
        joint = {k + (t,): joint[k] * p[i, t].item()
                 for i, k in enumerate(prefixes) for t in range(p.shape[1]) if p[i, t] > 0}
    return joint


def sample_outputs(small_vocab, params, drafter, budget, n=3000, coupled=True) -> collections.Counter:
    """``n`` samples of NEW tokens, one seed each, through the step loop."""
    target = target_engine(small_vocab["target"], num_blocks=4096)
    drafts = draft_engine(small_vocab[drafter] if drafter != "ngram" else None, num_blocks=4096)
    name = "ngram" if drafter == "ngram" else "model"
    counts = collections.Counter()
    for start in range(0, n, 500):
        reqs = [request(PROMPT, NEW, SamplingParams(params.temperature, params.top_p,
                                                    params.top_k, seed=i), budget, name, coupled=coupled)
                for i in range(start, start + 500)]
        for out in generate(target, drafts, reqs):
            counts[tuple(out.token_ids)] += 1
    return counts


CASES = [  # (drafter, p, tree, coupled drafts)
    ("draft", SamplingParams(temperature=1.0), TreeBudget(branching=(3, 2)), True),
    ("draft", SamplingParams(temperature=1.0), TreeBudget(branching=(3, 2)), False),
    ("target", SamplingParams(temperature=0.8, top_k=6), TreeBudget(branching=(2, 2)), True),
    ("draft", SamplingParams(temperature=1.0, top_p=0.8), TreeBudget(max_nodes=6, max_depth=2, top_k=3), True),
    ("ngram", SamplingParams(temperature=0.9, top_k=10), TreeBudget(max_nodes=4, max_depth=3), True),
]


@pytest.mark.parametrize("drafter,params,budget,coupled", CASES,
                         ids=["static-coupled", "static-uncoupled", "self-topk", "dynamic-topp", "ngram"])
def test_speculative_sampling_matches_target_distribution(small_vocab, drafter, params, budget, coupled):
    n = 3000
    counts = sample_outputs(small_vocab, params, drafter, budget, n, coupled)
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


def test_a_seed_fixes_the_tokens_whatever_the_speculation(small_vocab):
    """The same seeded request: plain decoding, n-gram, static and dynamic model trees,
    coupled or not, alone or in a batch with other requests -- one output."""
    target = target_engine(small_vocab["target"])
    drafts = draft_engine(small_vocab["draft"])
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=5)
    settings = [(TreeBudget.off(), "", True), (TreeBudget(max_nodes=6, max_depth=4), "ngram", True),
                (TreeBudget(branching=(2, 2)), "model", True), (TreeBudget(branching=(2, 2)), "model", False),
                (TreeBudget(max_nodes=8, max_depth=4, top_k=2), "model", True)]
    outs = [generate(target, drafts, [request(PROMPT, 24, params, b, d, coupled=c)])[0].token_ids
            for b, d, c in settings]
    others = [request((7, 7, i), 24, SamplingParams(temperature=1.0, seed=i), TreeBudget(branching=(3,)),
                      "model") for i in range(5)]
    batched = generate(target, drafts, others[:2] + [request(PROMPT, 24, params)] + others[2:])[2]
    assert all(o == outs[0] for o in outs) and batched.token_ids == outs[0]


def test_coupled_self_drafting_proposes_what_the_target_samples(small_vocab):
    """The target drafting for itself with coupling guesses every sampled token: each step
    accepts its whole chain (uncoupled top-1 chains are accepted far less at T = 1)."""
    target = target_engine(small_vocab["target"])
    drafts = draft_engine(small_vocab["target"])
    chain = TreeBudget(branching=(1, 1, 1))
    taus = {}
    for coupled in (True, False):
        outs = generate(target, drafts, [request(PROMPT, 25, SamplingParams(temperature=1.0, seed=s),
                                                 chain, "model", coupled=coupled) for s in range(8)])
        taus[coupled] = sum(o.stats.mean_acceptance_length for o in outs) / len(outs)
    assert taus[True] > 3.9  # 4 tokens per step (the last step may be cut by max_tokens)
    assert taus[False] < taus[True] - 0.5
