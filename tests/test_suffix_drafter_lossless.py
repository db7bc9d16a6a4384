"""The ``suffix`` drafter through the gateway's orchestrator over the in-process ports (float64
tiny models): greedy output equals plain decoding, sampled output has the target's distribution,
and a repeated request is drafted from the global structure at close to the budget's limit."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from draft_service.drafters.suffix import SuffixDrafter, SuffixOptions
from draft_service.engine import DraftEngine
from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget
from tests.helpers import draft_engine, generate, request, target_engine
from tests.test_sampling import ALPHA, NEW, PROMPT, chi_square_p, exact_joint
from tests.tiny_models import save_tiny_model

PROMPTS = [
    (5, 6, 7, 8, 5, 6, 7, 8, 5, 6),  # repetitive: the request's own text drafts
    (9, 10, 11),
    (20, 21, 22, 23, 24, 25, 26, 20, 21),
    (42,),
]
MAX_TOKENS = 30


def _suffix_engine(options: SuffixOptions = SuffixOptions()) -> DraftEngine:
    return DraftEngine.of({"suffix": SuffixDrafter(options)}, "suffix")


@pytest.fixture(scope="module")
def target(tiny_dirs):
    return target_engine(tiny_dirs["llama"], block_size=4, shuffle_seed=2)


@pytest.fixture(scope="module")
def plain(target):
    return [o.token_ids for o in generate(target, draft_engine(), [request(p, MAX_TOKENS) for p in PROMPTS])]


@pytest.mark.parametrize("options,budget", [
    (SuffixOptions(), TreeBudget(max_nodes=10, max_depth=5)),
    (SuffixOptions(prompts=True, min_prob=0.05), TreeBudget(branching=(2, 2, 1))),
    (SuffixOptions(budget=0), TreeBudget(branching=(1,) * 6)),  # a chain, the request's text only
], ids=["dynamic", "static-prompts", "chain-local"])
def test_greedy_speculation_equals_plain_decoding(target, plain, options, budget):
    drafts = _suffix_engine(options)
    free = target.runner.blocks.num_free_blocks
    for _ in range(2):  # the second pass also drafts from the first one's text (global structure)
        outs = generate(target, drafts, [request(p, MAX_TOKENS, budget=budget, drafter="suffix")
                                         for p in PROMPTS])
        assert [o.token_ids for o in outs] == plain
    assert sum(o.stats.accepted_tokens for o in outs) > 0  # drafts were made, and verified
    assert target.runner.blocks.num_free_blocks == free
    assert drafts.num_sequences == 0


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    root = tmp_path_factory.mktemp("suffix-vocab16")
    return save_tiny_model(root / "t", "llama", seed=10, with_tokenizer=False, vocab_size=16)


def test_sampling_with_suffix_drafts_matches_target_distribution(small_vocab):
    """The global structure first holds 300 texts drawn from the target's own distribution, so
    the drafts are frequency-weighted guesses that are often accepted, sometimes not, with
    several children per step -- and the output must still follow the target exactly."""
    # 2000 samples (not 3000 as in test_sampling) keep the test near 30 s: every step verifies a
    # tree; the negative control below shows the test still rejects a slightly wrong p.
    n, params, budget = 2000, SamplingParams(temperature=0.9, top_k=10), TreeBudget(max_nodes=4, max_depth=3)
    joint = exact_joint(small_vocab, params)
    drafter = SuffixDrafter(SuffixOptions(prompts=True))
    outcomes = list(joint)
    rng = np.random.default_rng(0)
    for k in rng.choice(len(outcomes), size=300, p=np.array([joint[o] for o in outcomes])):
        drafter.store.add(PROMPT + outcomes[k])
    target = target_engine(small_vocab, num_blocks=4096)
    drafts = DraftEngine.of({"suffix": drafter}, "suffix")
    counts, accepted = collections.Counter(), 0
    for start in range(0, n, 500):
        reqs = [request(PROMPT, NEW, SamplingParams(params.temperature, params.top_p, params.top_k, seed=i),
                        budget, "suffix") for i in range(start, start + 500)]
        for out in generate(target, drafts, reqs):
            counts[tuple(out.token_ids)] += 1
            accepted += out.stats.accepted_tokens
    assert accepted > n // 4  # the drafts matter: many samples took an accepted draft token
    assert chi_square_p(counts, joint, n) > ALPHA
    shifted = exact_joint(small_vocab, SamplingParams(temperature=0.75, top_k=10))
    assert chi_square_p(counts, shifted, n) < ALPHA


@pytest.mark.parametrize("options,least", [(SuffixOptions(), 0.75), (SuffixOptions(prompts=True), 0.9)],
                         ids=["outputs", "prompts"])
def test_a_repeated_request_is_drafted_from_the_global_structure(target, options, least):
    """A seeded request asked again samples the same tokens, which the first pass left in the
    global structure: nearly every step accepts the deepest path the budget allows. Without the
    global structure the same request (random text, nothing repeats) barely drafts."""
    budget = TreeBudget(max_nodes=8, max_depth=6)
    prompt, sampling = tuple(range(100, 116)), SamplingParams(temperature=1.0, seed=3)
    # The first pass runs longer: the tokens of a sequence's final step reach no drafter.
    first = request(prompt, 48, sampling, budget, "suffix")
    again = request(prompt, 40, sampling, budget, "suffix")
    taus = {}
    for name, opts in (("global", options), ("local", SuffixOptions(budget=0))):
        drafts = _suffix_engine(opts)
        (one,) = generate(target, drafts, [first])
        (two,) = generate(target, drafts, [again])
        assert two.token_ids == one.token_ids[:40]
        taus[name] = two.stats.mean_acceptance_length
    best = budget.max_depth + 1  # tokens per step when the whole deepest path is accepted
    assert taus["global"] >= least * best, taus
    assert taus["local"] < 2.0, taus
