"""Growing token trees one depth at a time from scored candidates.

A :class:`TreeGrowth` holds the nodes of one sequence's tree while a drafter expands it:
static shapes expand every node of a depth with a fixed number of children; dynamic trees
follow EAGLE-2 (Li et al., 2024): expand the ``top_k`` frontier nodes with the highest
cumulative draft log-probability, then keep the best ``max_nodes - 1`` nodes overall. Because
a child's cumulative log-probability never exceeds its parent's, the best-k set (ties broken
toward shallower, earlier nodes) always contains each chosen node's ancestors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from specgrove.runner import ForwardItem
from specgrove.tree import TokenTree
from specgrove.types import TreeBudget


@dataclass
class TreeGrowth:
    budget: TreeBudget
    tokens: list[int]
    parents: list[int] = field(default_factory=lambda: [-1])
    scores: list[float] = field(default_factory=lambda: [0.0])
    depths: list[int] = field(default_factory=lambda: [0])
    frontier: list[int] = field(default_factory=lambda: [0])  # nodes to expand next
    node_data: dict = field(default_factory=dict)  # per node, what a drafter keeps while growing

    @staticmethod
    def start(root_token: int, budget: TreeBudget) -> "TreeGrowth":
        return TreeGrowth(budget, [root_token])

    def children_wanted(self, depth: int) -> int:
        """How many children each expanded node at ``depth`` gets."""
        if self.budget.is_static:
            return self.budget.branching[depth]
        return self.budget.top_k

    def add_children(self, parent: int, tokens: list[int], logprobs: list[float]) -> None:
        for tok, lp in zip(tokens, logprobs):
            self.tokens.append(tok)
            self.parents.append(parent)
            self.scores.append(self.scores[parent] + lp)
            self.depths.append(self.depths[parent] + 1)

    def next_frontier(self, depth: int) -> list[int]:
        """Nodes at ``depth`` to expand: all of them (static) or the best ``top_k`` (dynamic)."""
        level = [i for i, d in enumerate(self.depths) if d == depth]
        if not self.budget.is_static:
            level.sort(key=lambda i: (-self.scores[i], i))
            level = sorted(level[: self.budget.top_k])
        self.frontier = level
        return level

    def finish(self) -> TokenTree:
        keep = list(range(len(self.tokens)))
        if not self.budget.is_static and len(keep) > self.budget.max_nodes:
            ranked = sorted(keep[1:], key=lambda i: (-self.scores[i], self.depths[i], i))
            keep = [0] + sorted(ranked[: self.budget.max_nodes - 1])
        new_index = {old: new for new, old in enumerate(keep)}
        return TokenTree(
            tuple(self.tokens[i] for i in keep),
            tuple(-1 if i == 0 else new_index[self.parents[i]] for i in keep),
            tuple(self.scores[i] for i in keep),
        )


def frontier_item(seq_id: int, growth: TreeGrowth, fed: list[int], frontier: list[int],
                  root_position: int, features=None) -> ForwardItem:
    """The forward item that expands ``frontier``: its nodes' tokens at RoPE position
    ``root_position + depth``, written after the tree nodes already ``fed`` this step, each
    seeing the committed prefix (the root included) plus its own ancestors in the window."""
    window = fed + frontier
    slot_of = {node: j for j, node in enumerate(window)}
    mask = []
    for node in frontier:
        row = [False] * len(window)
        n = node
        while n > 0:  # the root is committed prefix, outside the window
            row[slot_of[n]] = True
            n = growth.parents[n]
        mask.append(row)
    positions = [root_position + growth.depths[n] for n in frontier]
    return ForwardItem(seq_id, [growth.tokens[n] for n in frontier], positions,
                       tree_offset=len(fed), tree_mask=mask, all_logits=True, features=features)
