"""Drafters and tree growth on their own: prompt lookup (n-gram) and the EAGLE-2 tree rules."""
from __future__ import annotations

import math
import random

import pytest

from draft_service.drafters.base import DraftInput
from draft_service.drafters.ngram import NgramDrafter
from draft_service.trees import TreeGrowth
from specgrove.tree import static_tree_size
from specgrove.types import TreeBudget


# --- n-gram lookup -------------------------------------------------------------------------------
def _ngram(history, budget=TreeBudget(max_nodes=10, max_depth=4), **kw):
    return NgramDrafter(**kw).propose([DraftInput(0, history, budget)])[0]


def test_ngram_continues_the_longest_most_recent_match():
    # ... 1 2 3 [9 9] ... 1 2 3 [7 7] ... 1 2 3 -> the most recent "1 2 3" is followed by 7 7.
    history = [1, 2, 3, 9, 9, 5, 1, 2, 3, 7, 7, 6, 1, 2, 3]
    tree = _ngram(history, TreeBudget(max_nodes=2, max_depth=4))
    assert tree.token_ids == (3, 7) and tree.parents == (-1, 0)
    chain = _ngram(history, TreeBudget(branching=(1, 1, 1)))
    assert chain.token_ids == (3, 7, 7, 6)


def test_ngram_merges_distinct_continuations_into_a_trie():
    history = [1, 2, 3, 9, 9, 5, 1, 2, 3, 7, 7, 6, 1, 2, 3]
    tree = _ngram(history)
    paths = {tuple(tree.token_ids[n] for n in tree.path_to(i)[1:]) for i in range(len(tree))
             if not tree.children[i]}
    assert (7, 7, 6, 1) in paths and (9, 9, 5, 1) in paths
    assert tree.children[0] and len({tree.token_ids[c] for c in tree.children[0]}) == len(tree.children[0])


def test_ngram_respects_the_budget_and_finds_nothing_without_a_match():
    rng = random.Random(0)
    history = [rng.randrange(5) for _ in range(200)]
    for budget in (TreeBudget(max_nodes=6, max_depth=3), TreeBudget(branching=(2, 2)),
                   TreeBudget(max_nodes=1, max_depth=4), TreeBudget.off()):
        tree = _ngram(history, budget)
        assert len(tree) <= budget.node_bound and tree.depth <= budget.depth
        assert tree.token_ids[0] == history[-1]
    assert len(_ngram([1, 2, 3, 4, 5])) == 1  # no earlier occurrence of anything: root only


def test_ngram_rejects_bad_settings():
    with pytest.raises(ValueError):
        NgramDrafter(max_ngram=1, min_ngram=2)


# --- tree growth -----------------------------------------------------------------------------
def _grow(budget: TreeBudget, seed: int, width: int = 6):
    """Grow a tree with random candidate scores, depth by depth, as a drafter does."""
    rng = random.Random(seed)
    g = TreeGrowth.start(0, budget)
    frontier = [0]
    for depth in range(budget.depth):
        if depth:
            frontier = g.next_frontier(depth)
        for node in frontier:
            k = g.children_wanted(depth)
            probs = sorted((rng.random() for _ in range(width)), reverse=True)
            total = sum(probs)
            tokens = rng.sample(range(100), k)
            g.add_children(node, tokens, [math.log(p / total) for p in probs[:k]])
    return g, g.finish()


@pytest.mark.parametrize("seed", range(20))
def test_dynamic_tree_keeps_ancestors_and_the_budget(seed):
    budget = TreeBudget(max_nodes=10, max_depth=5, top_k=3)
    growth, tree = _grow(budget, seed)
    assert len(tree) == min(budget.max_nodes, len(growth.tokens)) and tree.depth <= budget.max_depth
    kept_scores = tree.scores
    for i in range(1, len(tree)):  # every kept node's parent is kept, and scores only fall
        assert 0 <= tree.parents[i] < i
        assert kept_scores[i] <= kept_scores[tree.parents[i]] + 1e-12
    # The kept nodes are the best max_nodes - 1 by cumulative score (EAGLE-2's re-ranking).
    best = sorted(growth.scores[1:], reverse=True)[: budget.max_nodes - 1]
    assert sorted(kept_scores[1:], reverse=True) == pytest.approx(best)


def test_dynamic_tree_expands_only_the_top_k_frontier():
    budget = TreeBudget(max_nodes=64, max_depth=3, top_k=2)
    growth, _ = _grow(budget, 1)
    by_depth = {}
    for node, parent in enumerate(growth.parents[1:], start=1):
        by_depth.setdefault(growth.depths[node], set()).add(parent)
    assert all(len(parents) <= 2 for depth, parents in by_depth.items() if depth > 1)


@pytest.mark.parametrize("branching", [(3,), (2, 2), (4, 2, 2, 1)])
def test_static_tree_is_full(branching):
    growth, tree = _grow(TreeBudget(branching=branching), 3)
    assert len(tree) == static_tree_size(branching)
    assert [sum(1 for d in tree.depths if d == k) for k in range(1, len(branching) + 1)] == \
        [math.prod(branching[:k]) for k in range(1, len(branching) + 1)]
