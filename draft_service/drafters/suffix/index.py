"""Where a context occurred before: an anchor index over token documents.

SuffixDecoding (Oliaro et al., NeurIPS 2025) keeps suffix trees; what it reads from them is, for
the last ``m`` tokens of the context, every earlier occurrence and the tokens that followed it
(a node's count is the number of occurrences through it). This index answers the same question
with positions instead of tree nodes: each document position is filed under the hashed
"anchors" of order 1, 2 and 4 that end there, a query takes the occurrences of the longest
anchor that occurred at all, and the true match length of each is then found by comparing
backwards (``match_length``). A compressed suffix tree has O(n) nodes too, but here each
token costs a few list entries rather than Python node objects, and no tree has to be split
or unlinked when a document comes or goes.

Removal is lazy: a removed document's entries stay in the anchor lists, skipped by queries
(which read lists newest first, so they rarely reach them), until dead entries outnumber live
ones and the whole index is rebuilt -- amortized O(1) per token. So the entries held never
exceed twice the live ones, plus a small slack.
"""
from __future__ import annotations

from array import array
from typing import Iterator, Sequence

ORDERS = (4, 2, 1)  # anchor lengths, longest first
_SHIFT = 24  # bits per token in a packed anchor; larger ids only risk a collision, which
_MASK = (1 << _SHIFT) - 1  # match_length (comparing real tokens) then rejects
_POS_BITS = 32  # an entry is doc_id << _POS_BITS | position
_POS_MASK = (1 << _POS_BITS) - 1
_REBUILD_SLACK = 4096  # dead entries tolerated before a rebuild is even considered


def _anchor(tokens: Sequence[int], end: int, order: int) -> int:
    """The packed anchor of ``tokens[end - order + 1 : end + 1]``."""
    key = 0
    for t in tokens[end - order + 1:end + 1]:
        key = (key << _SHIFT) | (t & _MASK)
    return key


class AnchorIndex:
    def __init__(self) -> None:
        self.docs: dict[int, array] = {}  # doc_id -> its tokens (int32)
        self._anchors: list[dict[int, list[int]]] = [{} for _ in ORDERS]  # per order: key -> entries
        self.entries = 0  # list entries held, dead ones included
        self.live_entries = 0
        self.tokens = 0  # tokens of live documents

    def __contains__(self, doc_id: int) -> bool:
        return doc_id in self.docs

    @property
    def keys(self) -> int:
        return sum(len(a) for a in self._anchors)

    def extend(self, doc_id: int, tokens: Sequence[int]) -> None:
        """Append ``tokens`` to document ``doc_id`` (a new one if unknown) and file them."""
        doc = self.docs.get(doc_id)
        if doc is None:
            doc = self.docs[doc_id] = array("i")
        start = len(doc)
        doc.extend(tokens)
        self._file(doc_id, doc, start)
        self.tokens += len(doc) - start

    def remove(self, doc_id: int) -> None:
        doc = self.docs.pop(doc_id, None)
        if doc is None:
            return
        self.tokens -= len(doc)
        self.live_entries -= _entries_of(len(doc))
        if self.entries - self.live_entries > max(self.live_entries, _REBUILD_SLACK):
            self._rebuild()

    def clear(self) -> None:
        self.__init__()

    def occurrences(self, context: Sequence[int], order: int, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` earlier occurrences ``(doc_id, end)`` of the last ``order`` tokens of
        ``context`` that have a continuation, most recent first; ``end`` is the position of
        their last token. The caller tries the orders longest first (``ORDERS``)."""
        if order > len(context):
            return []
        return list(self._at(ORDERS.index(order), _anchor(context, len(context) - 1, order), limit))

    # --- internals ---------------------------------------------------------------------------------
    def _at(self, i: int, key: int, limit: int) -> Iterator[tuple[int, int]]:
        entries = self._anchors[i].get(key)
        if not entries:
            return
        yielded = 0
        for entry in reversed(entries):  # appended in document order: the newest last
            doc = self.docs.get(entry >> _POS_BITS)
            end = entry & _POS_MASK
            # Skip removed documents (dead entries, mostly the oldest, so rarely reached) and
            # an occurrence with nothing after it (the context's own end, in a request's history).
            if doc is not None and end + 1 < len(doc):
                yield entry >> _POS_BITS, end
                yielded += 1
                if yielded >= limit:
                    return

    def _file(self, doc_id: int, doc: array, start: int) -> None:
        """File positions ``start..`` of ``doc``; each order's anchor is a rolling packed key."""
        base = doc_id << _POS_BITS
        for i, order in enumerate(ORDERS):
            table, mask = self._anchors[i], (1 << (_SHIFT * order)) - 1
            key = 0
            for t in doc[max(0, start - order + 1):start]:  # the tokens before ``start``
                key = (key << _SHIFT) | (t & _MASK)
            for end in range(start, len(doc)):
                key = ((key << _SHIFT) | (doc[end] & _MASK)) & mask
                if end < order - 1:
                    continue  # fewer than ``order`` tokens so far
                entries = table.get(key)
                if entries is None:
                    table[key] = [base | end]
                else:
                    entries.append(base | end)
        added = _entries_of(len(doc)) - _entries_of(start)
        self.entries += added
        self.live_entries += added

    def _rebuild(self) -> None:
        docs = self.docs
        self.__init__()
        for doc_id, doc in docs.items():  # dict order = insertion order: entries stay oldest first
            self.extend(doc_id, doc)


def _entries_of(n: int) -> int:
    """Anchor entries filed for a document of ``n`` tokens."""
    return sum(max(0, n - order + 1) for order in ORDERS)


def match_length(doc: Sequence[int], end: int, context: Sequence[int], limit: int) -> int:
    """How many tokens before and at ``doc[end]`` equal the last ones of ``context`` (<= limit)."""
    n = 0
    last = len(context) - 1
    while n < limit and n <= end and n <= last and doc[end - n] == context[last - n]:
        n += 1
    return n
