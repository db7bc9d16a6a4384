"""The ``suffix`` drafter: SuffixDecoding (Oliaro et al., NeurIPS 2025) without a model.

Each sequence's own text (prompt and output so far) is indexed as it grows; when a sequence is
released, its output -- with ``prompts=1`` its whole text -- joins the global structure shared
by every sequence of this drafter (``store.GlobalStore``: a token budget, LRU eviction). Each
step drafts from the earlier occurrences of the context's suffix in both, pooled and weighted by
frequency (``speculate``). Nothing matched: a root-only tree, so a miss costs a plain step.

What the drafter sees of a sequence is the history of its last ``propose``: the tokens the
target accepted in the sequence's final step are not in it, nor is a sequence that never asked
this drafter for a draft. The prompt's end is taken to be the history's first sight minus the
pending token (the gateway prefills the draft service at the sequence's first draft); for a
drafter loaded mid-sequence, that counts some output as prompt.

``propose``, ``release`` and ``clear`` hold one lock, so the admin API may ``clear`` or read
``stats`` from another thread than the engine's.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Sequence

from draft_service.drafters.base import DraftInput
from draft_service.drafters.suffix.index import AnchorIndex
from draft_service.drafters.suffix.options import SuffixOptions
from draft_service.drafters.suffix.speculate import TreeShape, best_tree, find_occurrences
from draft_service.drafters.suffix.store import GlobalStore
from specgrove.tree import TokenTree

_DOC = 0  # a request's index holds one document: its history
_LOCAL, _GLOBAL = 0, 1  # the indexes drafted from, in ``find_occurrences`` order


@dataclass
class _Request:
    prompt_len: int
    index: AnchorIndex = field(default_factory=AnchorIndex)

    def sync(self, history: Sequence[int]) -> None:
        """Index the tokens the history gained since the last step."""
        have = len(self.index.docs.get(_DOC, ()))
        if len(history) < have:  # a rewound history (never expected): index it afresh
            self.index.clear()
            have = 0
        if len(history) > have:
            self.index.extend(_DOC, history[have:])

    @property
    def text(self):
        return self.index.docs.get(_DOC, ())


class SuffixDrafter:
    kind = "suffix"
    feature_layers: tuple[int, ...] = ()

    def __init__(self, options: SuffixOptions = SuffixOptions()) -> None:
        self.options = options
        self.store = GlobalStore(options.budget) if options.budget else None
        self._requests: dict[int, _Request] = {}
        self._lock = threading.Lock()

    def propose(self, inputs: Sequence[DraftInput]) -> list[TokenTree]:
        with self._lock:
            return [self._propose_one(inp) for inp in inputs]

    def release(self, seq_id: int) -> None:
        with self._lock:
            req = self._requests.pop(seq_id, None)
            if req is None or self.store is None:
                return
            self.store.add(req.text if self.options.prompts else req.text[req.prompt_len:])

    def clear(self) -> None:
        """Forget the global structure (the admin API's clear); running sequences keep theirs."""
        with self._lock:
            if self.store is not None:
                self.store.clear()

    def stats(self) -> dict[str, int]:
        """The global structure's size (``GlobalStore.stats``; zeros without one) and the
        number of sequences, and tokens, indexed for the requests in flight."""
        with self._lock:
            sizes = self.store.stats() if self.store is not None else \
                {"tokens": 0, "budget": 0, "documents": 0, "nodes": 0, "evicted_documents": 0, "bytes": 0}
            sizes["sequences"] = len(self._requests)
            sizes["sequence_tokens"] = sum(r.index.tokens for r in self._requests.values())
            return sizes

    def _propose_one(self, inp: DraftInput) -> TokenTree:
        req = self._requests.get(inp.seq_id)
        if req is None:
            req = self._requests[inp.seq_id] = _Request(prompt_len=max(0, len(inp.history) - 1))
        req.sync(inp.history)
        shape = TreeShape.of(inp.budget)
        if shape is None:
            return TokenTree.root_only(inp.history[-1])
        opts = self.options
        indexes = [req.index] + ([self.store.index] if self.store is not None else [])
        found = find_occurrences(req.text, indexes, opts.candidates, opts.max_match)
        if not found:
            return TokenTree.root_only(inp.history[-1])
        tree, used = best_tree(req.text, found, [ix.docs for ix in indexes], shape,
                               opts.factor, opts.offset, opts.min_prob)
        if self.store is not None:
            self.store.touch(o.doc_id for o in used if o.source == _GLOBAL)
        return tree
