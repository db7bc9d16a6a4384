"""The ``suffix`` drafter (SuffixDecoding) on its own: what it drafts from which text, how far
it speculates, the budget it keeps, its options, and its global structure's admin surface."""
from __future__ import annotations

import math
import random

import pytest

from draft_service.drafters.base import DraftInput
from draft_service.drafters.suffix import SuffixDrafter, SuffixOptions
from draft_service.factory import DRAFTER_KINDS, DraftTarget, build_drafter
from specgrove.errors import InvalidRequest
from specgrove.tree import TokenTree
from specgrove.types import TreeBudget

WIDE = TreeBudget(max_nodes=32, max_depth=12, top_k=8)


def _draft(drafter: SuffixDrafter, history, budget=WIDE, seq_id=1) -> TokenTree:
    return drafter.propose([DraftInput(seq_id, list(history), budget)])[0]


def _paths(tree: TokenTree) -> set[tuple[int, ...]]:
    """Every root-to-leaf path below the root, as tokens."""
    paths = set()
    for leaf in (i for i in range(1, len(tree)) if not tree.children[i]):
        path, n = [], leaf
        while n > 0:
            path.append(tree.token_ids[n])
            n = tree.parents[n]
        paths.add(tuple(reversed(path)))
    return paths


def test_drafts_what_followed_the_match_and_as_far_as_the_match_is_long():
    # "5 6 7" occurred before, followed by 8 9 10 11 12: at factor 1 a 3-token match
    # speculates 3 tokens ...
    history = [5, 6, 7, 8, 9, 10, 11, 12, 40, 41, 5, 6, 7]
    assert _paths(_draft(SuffixDrafter(SuffixOptions(factor=1.0)), history)) == {(8, 9, 10)}
    # ... factor scales the speculation length with the match length (the default is 2) ...
    assert _paths(_draft(SuffixDrafter(SuffixOptions(factor=1.5)), history)) == {(8, 9, 10, 11)}
    assert _paths(_draft(SuffixDrafter(), history)) == {(8, 9, 10, 11, 12, 40)}
    # ... and a one-token match risks factor tokens.
    assert _paths(_draft(SuffixDrafter(SuffixOptions(factor=1.0)), [3, 4, 50, 51, 3])) == {(4,)}


def test_continuations_are_weighted_by_frequency_best_first():
    # After "1 2" (always a 2-token match): 3 three times, 4 once. P(3) = 3/4, P(4) = 1/4.
    history = [50, 1, 2, 3, 51, 1, 2, 3, 52, 1, 2, 4, 53, 1, 2, 3, 54, 1, 2]
    tree = _draft(SuffixDrafter(SuffixOptions(min_prob=0.2, factor=1.0)), history)
    assert [tree.token_ids[c] for c in tree.children[0]] == [3, 4]  # more frequent first
    assert len(tree) == 3  # a 2-token match speculates 2 tokens at factor 1
    assert tree.scores[1:] == pytest.approx((math.log(0.75), math.log(0.25)))
    # Under min_prob the rarer branch is dropped.
    tree = _draft(SuffixDrafter(SuffixOptions(min_prob=0.3)), history)
    assert [tree.token_ids[c] for c in tree.children[0]] == [3]


def test_text_that_never_occurred_gives_root_only_trees():
    drafter = SuffixDrafter()
    drafter.propose([DraftInput(7, list(range(100, 160)), WIDE)])
    drafter.release(7)  # the global structure now holds unrelated text
    assert drafter.stats()["tokens"] > 0
    history = list(range(200, 260))
    for n in range(1, len(history) + 1):
        assert len(_draft(drafter, history[:n], seq_id=8)) == 1


BUDGETS = [TreeBudget(max_nodes=6, max_depth=3, top_k=2), TreeBudget(branching=(2, 2, 1)),
           TreeBudget(branching=(1, 1, 1, 1, 1, 1)), TreeBudget(max_nodes=2, max_depth=8), TreeBudget.off()]


@pytest.mark.parametrize("budget", BUDGETS, ids=["dynamic", "static", "chain", "one-node", "off"])
def test_trees_keep_the_budget_and_are_deterministic(budget):
    rng = random.Random(5)
    history = [rng.randrange(6) for _ in range(400)]  # small vocabulary: many branching matches
    a, b = SuffixDrafter(SuffixOptions(min_prob=0.01)), SuffixDrafter(SuffixOptions(min_prob=0.01))
    drafted = 0
    for n in range(20, len(history), 7):
        tree = _draft(a, history[:n], budget)
        assert tree == _draft(b, history[:n], budget)
        assert tree.token_ids[0] == history[n - 1]
        assert len(tree) <= budget.node_bound and tree.depth <= budget.depth
        for node, kids in enumerate(tree.children):
            depth = tree.depths[node]
            if kids:
                assert len(kids) <= (budget.branching[depth] if budget.is_static else budget.top_k)
        drafted += len(tree) - 1
    assert (drafted > 0) == budget.speculates


def test_a_released_output_is_drafted_for_other_sequences():
    prompt, output = [90, 91, 92, 93], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    drafter = SuffixDrafter(SuffixOptions(factor=1.0))
    drafter.propose([DraftInput(1, prompt + [output[0]], WIDE)])  # the first draft: prompt + token
    drafter.propose([DraftInput(1, prompt + output, WIDE)])
    drafter.release(1)
    assert drafter.stats()["tokens"] == len(output)  # outputs only by default
    # Another sequence reaching "12 13 14" speculates the rest of the stored output.
    assert _paths(_draft(drafter, [60, 12, 13, 14], seq_id=2)) == {(15, 16, 17)}
    # A longer match speculates further.
    assert _paths(_draft(drafter, [10, 11, 12, 13, 14], seq_id=3)) == {(15, 16, 17, 18, 19)}
    # Without the global structure nothing is known across sequences.
    alone = SuffixDrafter(SuffixOptions(budget=0))
    alone.propose([DraftInput(1, prompt + output, WIDE)])
    alone.release(1)
    assert len(_draft(alone, [10, 11, 12, 13, 14], seq_id=2)) == 1


def test_prompts_option_keeps_the_prompt_so_a_repeated_request_matches_at_once():
    prompt, output = [90, 91, 92, 93, 94, 95], [10, 11, 12, 13, 14, 15]
    # Outputs only: the first output token is all that matches, so one token is speculated; with
    # the prompt stored too, the whole output at the first step.
    for prompts, want in ((False, 2), (True, 6)):
        drafter = SuffixDrafter(SuffixOptions(prompts=prompts, factor=1.0))
        drafter.propose([DraftInput(1, prompt + output[:1], WIDE)])
        drafter.propose([DraftInput(1, prompt + output, WIDE)])
        drafter.release(1)
        tree = _draft(drafter, prompt + output[:1], seq_id=2)
        assert len(tree) == want
        if prompts:
            assert _paths(tree) == {tuple(output[1:])}


def test_clear_and_stats_report_the_global_structure():
    drafter = SuffixDrafter(SuffixOptions(budget=1000))
    for seq in range(5):
        drafter.propose([DraftInput(seq, [1, 2] + [seq * 10 + i for i in range(20)], WIDE)])
    stats = drafter.stats()
    assert stats["sequences"] == 5 and stats["tokens"] == 0
    for seq in range(5):
        drafter.release(seq)
    stats = drafter.stats()
    assert stats["sequences"] == 0 and stats["documents"] == 5 and stats["budget"] == 1000
    assert stats["tokens"] == 5 * 1  # each saw one history: prompt = all but the pending token
    assert stats["nodes"] > 0 and stats["bytes"] > 0
    drafter.clear()
    assert {k: v for k, v in drafter.stats().items() if k not in ("budget", "evicted_documents")} == \
        {"tokens": 0, "documents": 0, "nodes": 0, "bytes": 0, "sequences": 0, "sequence_tokens": 0}
    assert SuffixDrafter(SuffixOptions(budget=0)).stats()["tokens"] == 0


def test_options_parse_round_trip_and_reject_bad_specs():
    opts = SuffixOptions.parse("budget=5000, prompts=1,min_prob=0.25,max_match=16")
    assert opts == SuffixOptions(budget=5000, prompts=True, min_prob=0.25, max_match=16)
    assert SuffixOptions.parse(opts.spec().partition(":")[2]) == opts
    assert SuffixOptions.parse("") == SuffixOptions() and SuffixOptions().spec() == "suffix"
    for bad in ("budget", "budget=-1", "budget=1e12", "size=3", "prompts=2", "min_prob=0",
                "factor=nan", "max_match=0", "candidates=x", "budget=1,budget=2"):
        with pytest.raises(InvalidRequest):
            SuffixOptions.parse(bad)


def test_factory_builds_suffix_specs():
    assert "suffix" in DRAFTER_KINDS
    target = DraftTarget("unused")  # a suffix drafter reads nothing of the target
    drafter = build_drafter("suffix:budget=0,factor=2", target, None)
    assert isinstance(drafter, SuffixDrafter) and drafter.kind == "suffix"
    assert drafter.options == SuffixOptions(budget=0, factor=2.0) and drafter.store is None
    assert build_drafter("suffix", target, None).options == SuffixOptions()
    with pytest.raises(InvalidRequest):
        build_drafter("suffix:nonsense", target, None)
