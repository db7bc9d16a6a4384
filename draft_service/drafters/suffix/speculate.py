"""From earlier occurrences of the context to a token tree (SuffixDecoding's speculation).

Following SuffixDecoding (Oliaro et al., NeurIPS 2025; Arctic Inference's ``_speculate_tree``):

- the occurrences whose preceding tokens match the context's last ``m`` tokens form the set
  S_m; the tokens after each are merged into a trie of continuations, each node counting the
  occurrences through it, so ``count(node) / |S_m|`` estimates the probability that the target
  continues with that path (frequency-weighted over the request's own text and the global
  structure's, pooled);
- the tree is grown greedily, best estimated probability first (a child never scores above its
  parent, so parents always come first), dropping nodes under ``min_prob``;
- the speculation length adapts: S_m may speculate at most ``factor * m + offset`` tokens, so a
  one-token match risks one token and a long one fills the budget; every ``m`` that occurred
  is tried and the tree with the highest expected number of accepted tokens (the sum of its
  node probabilities) wins. Nothing matched: a root-only tree, so a miss costs a plain step.

The tree is a function of the history and of the stored text only -- never of the target's
sampling noise -- so the target's rules for deterministic drafts keep it lossless.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Sequence

from draft_service.drafters.suffix.index import ORDERS, AnchorIndex, match_length
from specgrove.tree import TokenTree
from specgrove.types import TreeBudget


@dataclass(frozen=True)
class Occurrence:
    source: int  # which index it came from (0: the request's own, 1: the global one)
    doc_id: int
    end: int  # position of the matched context's last token in the document
    match: int  # matched context length (<= max_match)


@dataclass(frozen=True)
class TreeShape:
    """What a tree may look like under a budget: nodes (root included), depth, and children per
    node at each depth (a static shape's branching; ``top_k`` for a dynamic budget)."""

    max_nodes: int
    depth: int
    children: tuple[int, ...]  # [depth]

    @staticmethod
    def of(budget: TreeBudget) -> "TreeShape | None":
        """None when the budget cannot speculate (plain decoding)."""
        if not budget.speculates or budget.node_bound <= 1:
            return None
        children = budget.branching if budget.is_static else (budget.top_k,) * budget.depth
        return TreeShape(budget.node_bound, budget.depth, children)


def find_occurrences(context: Sequence[int], indexes: Sequence[AnchorIndex], limit: int,
                     max_match: int) -> list[Occurrence]:
    """Up to ``limit`` earlier occurrences of the longest anchor of ``context`` found in any of
    ``indexes`` (earlier indexes first, each most recent first), with their match lengths."""
    for order in ORDERS:
        found: list[Occurrence] = []
        for source, index in enumerate(indexes):
            if len(found) >= limit:
                break
            for doc_id, end in index.occurrences(context, order, limit - len(found)):
                m = match_length(index.docs[doc_id], end, context, max_match)
                if m:  # 0 only on a packed-anchor collision
                    found.append(Occurrence(source, doc_id, end, m))
        if found:
            return found
    return []


class _Node:
    __slots__ = ("count", "children")

    def __init__(self) -> None:
        self.count = 0
        self.children: dict[int, _Node] = {}


class ContinuationTrie:
    """The continuations of a set of occurrences, merged, with a count per node."""

    def __init__(self) -> None:
        self.root = _Node()

    def insert(self, tokens: Sequence[int]) -> None:
        node = self.root
        node.count += 1
        for t in tokens:
            child = node.children.get(t)
            if child is None:
                child = node.children[t] = _Node()
            child.count += 1
            node = child

    def grow(self, root_token: int, shape: TreeShape, max_new: int,
             min_prob: float) -> tuple[TokenTree, float]:
        """The best-first tree of at most ``max_new`` nodes below the root, and its score."""
        total = self.root.count
        tokens, parents, probs = [root_token], [-1], [1.0]
        n_children = [0]
        heap: list = []
        order = 0

        def push(node: _Node, parent: int, depth: int) -> None:
            nonlocal order
            # Highest count first, then the lowest token id: a deterministic order for ties.
            for tok, child in sorted(node.children.items(), key=lambda kv: (-kv[1].count, kv[0])):
                p = child.count / total
                if p < min_prob:
                    break
                heapq.heappush(heap, (-p, order, tok, child, parent, depth))
                order += 1

        push(self.root, 0, 1)
        while heap and len(tokens) - 1 < max_new:
            neg_p, _, tok, node, parent, depth = heapq.heappop(heap)
            if n_children[parent] >= shape.children[depth - 1]:
                continue  # the parent is full; its lower-probability children are skipped too
            n_children[parent] += 1
            tokens.append(tok)
            parents.append(parent)
            probs.append(-neg_p)
            n_children.append(0)
            if depth < shape.depth:
                push(node, len(tokens) - 1, depth + 1)
        scores = tuple(math.log(p) for p in probs)
        return TokenTree(tuple(tokens), tuple(parents), scores), sum(probs[1:])


def best_tree(context: Sequence[int], occurrences: Sequence[Occurrence], docs: Sequence[dict],
              shape: TreeShape, factor: float, offset: float, min_prob: float
              ) -> tuple[TokenTree, list[Occurrence]]:
    """The highest-scoring tree over the sets S_m, longest match first (ties keep the longer
    match), and the occurrences it was drawn from. ``docs[source][doc_id]`` is a document."""
    ranked = sorted(occurrences, key=lambda o: -o.match)  # stable: recency order within a length
    trie = ContinuationTrie()
    best, best_score, used = TokenTree.root_only(context[-1]), 0.0, 0
    i = 0
    while i < len(ranked):
        m = ranked[i].match
        while i < len(ranked) and ranked[i].match == m:
            o = ranked[i]
            trie.insert(docs[o.source][o.doc_id][o.end + 1:o.end + 1 + shape.depth])
            i += 1
        max_new = min(shape.max_nodes - 1, int(factor * m + offset + 1e-6))
        if max_new < 1:
            continue
        tree, score = trie.grow(context[-1], shape, max_new, min_prob)
        if score > best_score:
            best, best_score, used = tree, score, i
    return best, list(ranked[:used])
