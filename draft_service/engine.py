"""In-process draft engine: keeps each sequence's history and routes it to a drafter.

Keeping the history here (not in the drafters) is what lets a drafter loaded later catch up on
a sequence the first time it is asked to draft for it. Target features (for EAGLE heads) that
arrive with the tokens are held until the sequence's next ``propose`` hands them to its drafter
(at most ``MAX_FEATURE_ROWS`` of them: a head that starts from a suffix still drafts). With
tracing on, each drafter's batch is a ``draft.propose`` span (attribute ``specgrove.drafter``).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

from draft_service.drafters.base import DraftInput, Drafter
from draft_service.registry import DrafterRegistry, RegistryEntry
from specgrove import telemetry
from specgrove.errors import InvalidRequest, UnknownSequence
from specgrove.sampling_params import SamplingParams
from specgrove.types import MAX_FEATURE_ROWS, Features, ProposeRequest, ProposeResult


class DraftEngine:
    def __init__(self, registry: DrafterRegistry) -> None:
        self.registry = registry
        self._history: dict[int, list[int]] = {}
        self._sampling: dict[int, SamplingParams] = {}
        self._features: dict[int, Features] = {}  # not yet handed to a drafter

    @staticmethod
    def of(drafters: Mapping[str, Drafter], default: str) -> "DraftEngine":
        return DraftEngine(DrafterRegistry.of(dict(drafters), default))

    @property
    def num_sequences(self) -> int:
        return len(self._history)

    def prefill(self, seq_id: int, token_ids: Sequence[int],
                sampling: SamplingParams = SamplingParams(), features: Features | None = None) -> None:
        """Register a sequence with its history (prompt + generated, pending token last), the
        target's sampling settings for it (their seed keys coupled drafting) and, for feature
        drafters, the target's features of ``token_ids[:-1]`` (or of a suffix of them)."""
        if seq_id in self._history:
            raise InvalidRequest("seq_id", f"sequence {seq_id} already exists")
        if not token_ids:
            raise InvalidRequest("token_ids", f"sequence {seq_id} has no tokens")
        if features is not None and features.rows > len(token_ids) - 1:
            raise InvalidRequest("features", f"{features.rows} feature rows for {len(token_ids) - 1} tokens")
        self._history[seq_id] = list(token_ids)
        self._sampling[seq_id] = sampling
        if features is not None and features.rows:
            self._features[seq_id] = features.tail(MAX_FEATURE_ROWS)

    def propose(self, requests: Sequence[ProposeRequest]) -> list[ProposeResult]:
        """Append each request's new tokens, then draft per drafter in one batch each."""
        ids = [r.seq_id for r in requests]
        if len(set(ids)) != len(ids):
            raise InvalidRequest("seq_id", "duplicate sequence ids in one propose")
        routes: list[RegistryEntry] = []
        for req in requests:  # validate everything before any history changes
            if req.seq_id not in self._history:
                raise UnknownSequence(f"unknown sequence {req.seq_id}")
            if req.features is not None and req.features.rows > len(req.new_tokens):
                raise InvalidRequest("features", f"{req.features.rows} feature rows for "
                                                 f"{len(req.new_tokens)} new tokens")
            routes.append(self.registry.resolve(req.drafter))
        groups: dict[str, list[DraftInput]] = defaultdict(list)
        entries: dict[str, RegistryEntry] = {}
        for req, entry in zip(requests, routes):
            hist = self._history[req.seq_id]
            hist.extend(req.new_tokens)
            sampling = self._sampling[req.seq_id]
            coupled = req.coupled and not sampling.greedy and sampling.seed is not None
            groups[entry.name].append(DraftInput(req.seq_id, hist, req.budget, sampling, coupled,
                                                 self._take_features(req)))
            entries[entry.name] = entry
        results: dict[int, ProposeResult] = {}
        for name, inputs in groups.items():
            with telemetry.span("draft.propose") as span:
                trees = entries[name].drafter.propose(inputs)
                if span is not None:
                    span.set_attributes({"specgrove.drafter": name, "specgrove.batch_size": len(inputs),
                                         "specgrove.tree.nodes": sum(len(t) for t in trees)})
            for inp, tree in zip(inputs, trees):
                results[inp.seq_id] = ProposeResult(inp.seq_id, tree, name)
        return [results[req.seq_id] for req in requests]

    def _take_features(self, req: ProposeRequest) -> Features | None:
        """Everything that arrived for the sequence since its drafter last drafted."""
        held = self._features.pop(req.seq_id, None)
        new = req.features
        if new is None or not new.rows:
            return held if not req.new_tokens else None  # tokens without features: a gap
        if held is None or held.width != new.width or new.rows < len(req.new_tokens):
            return new.tail(MAX_FEATURE_ROWS)  # nothing contiguous to join: the new rows alone
        return Features.concat([held, new]).tail(MAX_FEATURE_ROWS)

    def release(self, seq_id: int) -> None:
        self._history.pop(seq_id, None)
        self._sampling.pop(seq_id, None)
        self._features.pop(seq_id, None)
        for entry in self.registry.entries():
            entry.drafter.release(seq_id)
