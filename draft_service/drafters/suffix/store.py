"""The global structure of the ``suffix`` drafter: recent requests' text within a token budget.

SuffixDecoding (Oliaro et al., NeurIPS 2025) drafts not only from the request at hand but from
a suffix tree over previous outputs, which is what makes agentic and templated workloads (the
same tool calls, the same JSON, the same question twice) fast. Here each finished sequence's
text is one document of an :class:`AnchorIndex`; the documents together hold at most
``budget`` tokens, and adding one evicts the least recently used first -- "used" meaning that
it supplied a draft, so text that keeps paying off stays while one-offs age out.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence

from draft_service.drafters.suffix.index import AnchorIndex

# Approximate bytes per stored token and per anchor-list entry / distinct anchor (CPython 3.11,
# 64-bit; measured with tracemalloc by tests/test_suffix_drafter_store.py, which keeps them honest).
TOKEN_BYTES = 4  # array('i')
ENTRY_BYTES = 42  # a list slot and the int it points to
KEY_BYTES = 145  # a dict slot, its packed-int key and the list object


class GlobalStore:
    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError("a global store needs a budget of at least one token")
        self.budget = budget
        self.index = AnchorIndex()
        self._lru: OrderedDict[int, None] = OrderedDict()  # doc ids, least recently used first
        self._next_id = 0
        self.evicted_docs = 0

    @property
    def tokens(self) -> int:
        return self.index.tokens

    def add(self, tokens: Sequence[int]) -> int | None:
        """Keep ``tokens`` as a new document (its last ``budget`` tokens if longer), evicting
        least recently used documents to stay within the budget; its id, or None if empty."""
        tokens = tokens[-self.budget:]
        if not tokens:
            return None
        while self._lru and self.index.tokens + len(tokens) > self.budget:
            doc_id, _ = self._lru.popitem(last=False)
            self.index.remove(doc_id)
            self.evicted_docs += 1
        doc_id, self._next_id = self._next_id, self._next_id + 1
        self.index.extend(doc_id, tokens)
        self._lru[doc_id] = None
        return doc_id

    def touch(self, doc_ids: Iterable[int]) -> None:
        """These documents just supplied a draft: least recently used no more."""
        for doc_id in doc_ids:
            if doc_id in self._lru:
                self._lru.move_to_end(doc_id)

    def clear(self) -> None:
        self.index.clear()
        self._lru.clear()

    def stats(self) -> dict[str, int]:
        """Its size: ``tokens`` stored (<= ``budget``), ``documents``, ``nodes`` (anchor-list
        entries, dead ones awaiting a rebuild included: the index's counterpart of suffix-tree
        nodes) and ``bytes`` (an estimate of the memory they take)."""
        index = self.index
        return {"tokens": index.tokens, "budget": self.budget, "documents": len(self._lru),
                "nodes": index.entries, "evicted_documents": self.evicted_docs,
                "bytes": index.tokens * TOKEN_BYTES + index.entries * ENTRY_BYTES + index.keys * KEY_BYTES}
