"""Prompt-lookup drafting (Saxena 2023; the n-gram drafter of vLLM / TGI): no model at all.

The last ``n`` tokens of the history (pending token included) are searched for earlier in the
same history, longest ``n`` first, most recent match first; the tokens that followed each match
are the continuations. Distinct continuations are merged into a trie under the root, so several
plausible copies are verified at once (a tree instead of one chain). Deterministic, so the
target's deterministic-draft rule keeps it lossless.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from draft_service.drafters.base import DraftInput
from specgrove.tree import TokenTree, static_tree_size


class NgramDrafter:
    kind = "ngram"
    feature_layers: tuple[int, ...] = ()

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, max_matches: int = 8) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.max_matches = max_matches

    def release(self, seq_id: int) -> None:  # stateless
        pass

    def propose(self, inputs: Sequence[DraftInput]) -> list[TokenTree]:
        return [self._propose_one(inp) for inp in inputs]

    def _propose_one(self, inp: DraftInput) -> TokenTree:
        budget = inp.budget
        depth = budget.depth
        max_nodes = static_tree_size(budget.branching) if budget.is_static else budget.max_nodes
        if depth == 0 or max_nodes <= 1:
            return TokenTree.root_only(inp.history[-1])
        hist = np.asarray(inp.history, dtype=np.int64)
        tokens, parents = [int(hist[-1])], [-1]
        children: dict[tuple[int, int], int] = {}
        for cont in self._continuations(hist, depth):
            node = 0
            for tok in cont:
                key = (node, int(tok))
                if key not in children:
                    if len(tokens) >= max_nodes:
                        break
                    children[key] = len(tokens)
                    tokens.append(int(tok))
                    parents.append(node)
                node = children[key]
            if len(tokens) >= max_nodes:
                break
        return TokenTree(tuple(tokens), tuple(parents))

    def _continuations(self, hist: np.ndarray, depth: int):
        """Yield up to ``max_matches`` continuations (arrays of <= depth tokens), best first."""
        n_hist = len(hist)
        found = 0
        for n in range(min(self.max_ngram, n_hist - 1), self.min_ngram - 1, -1):
            pattern = hist[n_hist - n :]
            windows = np.lib.stride_tricks.sliding_window_view(hist[: n_hist - 1], n)
            starts = np.flatnonzero((windows == pattern).all(axis=1))
            for s in starts[::-1]:  # most recent first
                cont = hist[s + n : s + n + depth]
                if len(cont):
                    yield cont
                    found += 1
                    if found >= self.max_matches:
                        return
