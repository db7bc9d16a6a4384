"""In-process draft engine: keeps each sequence's history and routes it to a drafter.

Keeping the history here (not in the drafters) is what lets a drafter loaded later catch up on
a sequence the first time it is asked to draft for it.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

from draft_service.drafters.base import DraftInput, Drafter
from specgrove.tree import TokenTree
from specgrove.types import InvalidRequest, ProposeRequest


class DraftEngine:
    def __init__(self, drafters: Mapping[str, Drafter], default: str) -> None:
        if default not in drafters:
            raise ValueError(f"default drafter {default!r} is not among {sorted(drafters)}")
        self.drafters = dict(drafters)
        self.default = default
        self._history: dict[int, list[int]] = {}

    def prefill(self, seq_id: int, token_ids: Sequence[int]) -> None:
        """Register a sequence with its prompt and first pending token."""
        if seq_id in self._history:
            raise InvalidRequest("seq_id", f"sequence {seq_id} already exists")
        self._history[seq_id] = list(token_ids)

    def propose(self, requests: Sequence[ProposeRequest]) -> list[TokenTree]:
        """Append each request's new tokens, then draft per drafter in one batch each."""
        groups: dict[str, list[DraftInput]] = defaultdict(list)
        for req in requests:
            if req.seq_id not in self._history:
                raise KeyError(f"unknown sequence {req.seq_id}")
            if req.drafter and req.drafter not in self.drafters:
                raise InvalidRequest("drafter", f"unknown drafter {req.drafter!r}")
        for req in requests:
            hist = self._history[req.seq_id]
            hist.extend(req.new_tokens)
            groups[req.drafter or self.default].append(DraftInput(req.seq_id, hist, req.budget))
        trees: dict[int, TokenTree] = {}
        for name, inputs in groups.items():
            for inp, tree in zip(inputs, self.drafters[name].propose(inputs)):
                trees[inp.seq_id] = tree
        return [trees[req.seq_id] for req in requests]

    def release(self, seq_id: int) -> None:
        self._history.pop(seq_id, None)
        for drafter in self.drafters.values():
            drafter.release(seq_id)
