"""Exact replay of recorded requests through a drafter, without the target's decoding.

The idea (exact offline evaluation of speculative drafters from recorded continuations): with
greedy decoding or seeded position-keyed Gumbel-max sampling (``specgrove.sampling``), the
target's token at a tree node is a pure function of the node's prefix and position. Along the
path the target accepts, the prefix is the emitted sequence itself, so the target's token at a
node of depth d is the continuation's next token but d. The acceptance walk
(``sampling.accept_path``) therefore accepts exactly the longest root-to-node path whose
tokens match the recorded continuation (``accepted_length``), and the step emits accepted + 1
tokens -- for any drafter and any tree, computed from the record alone.

``Replayer`` mirrors the step loop's propose phase for one sequence (``gateway.speculation``
and ``gateway.orchestrator``): the budget clamped as ``Proposer.budget`` clamps it (remaining
tokens, context, the verifier's node limit); no draft call when nothing fits (``NO_ROOM``); the
draft service registered lazily at the first drafting step with the whole history; then each
``propose`` carrying the tokens committed since the last one and, for feature drafters, the
target's hidden states of exactly those tokens (the rows the live loop would have forwarded).
Same calls, same inputs: the drafter proposes the same trees it proposed live.

Limits of "exact": the live target's tokens must not depend on the tree at the last bit
(float64 verify and decode agree to ~1e-13; in bf16 an argmax tie could flip), a model drafter
must be batch-invariant (replay drafts one sequence at a time), and feature rows come from one
prefill of the recorded sequence rather than from the verify forwards. A step whose accepted
path ran past a stop token live is counted up to the stop token (what the client saw).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from specgrove.cli.recordfile import Record
from specgrove.tree import TokenTree
from specgrove.sampling_params import SamplingParams
from specgrove.types import MAX_FEATURE_ROWS, Features, ProposeRequest, ProposeResult, TreeBudget


class DraftEngineLike(Protocol):
    """What replay drives: ``draft_service.engine.DraftEngine`` (the draft service's own engine)."""

    def prefill(self, seq_id: int, token_ids: Sequence[int], sampling: SamplingParams,
                features: Features | None) -> None: ...

    def propose(self, requests: Sequence[ProposeRequest]) -> list[ProposeResult]: ...

    def release(self, seq_id: int) -> None: ...


def accepted_length(tree: TokenTree, continuation: Sequence[int]) -> int:
    """Draft nodes the target accepts when its token at depth d is ``continuation[d]``: the
    longest root-to-node path matching the continuation (siblings carry distinct tokens, so the
    walk is unique)."""
    node = n = 0
    while n < len(continuation):
        want = continuation[n]
        nxt = next((c for c in tree.children[node] if tree.token_ids[c] == want), None)
        if nxt is None:
            break
        node, n = nxt, n + 1
    return n


@dataclass(frozen=True)
class Step:
    nodes: int  # tree nodes, root included (what the verify would have processed)
    accepted: int  # draft tokens accepted
    emitted: int  # tokens the step added (accepted + 1, unless the record ended)
    drafted: bool  # whether the step called the drafter (not when no draft fits: NO_ROOM)
    draft_s: float  # wall time of the step's draft calls


@dataclass
class Replayed:
    record: Record
    budget: TreeBudget
    steps: list[Step] = field(default_factory=list)
    drafter: str = ""  # the drafter that drafted (the engine's effective name)

    @property
    def accepted_tokens(self) -> int:
        return sum(s.accepted for s in self.steps)

    @property
    def drafted_tokens(self) -> int:
        return sum(s.nodes - 1 for s in self.steps)

    @property
    def step_accepted(self) -> tuple[int, ...]:
        return tuple(s.accepted for s in self.steps)

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens per verify step (accepted + bonus), as ``JobStats`` defines tau."""
        return (self.accepted_tokens + len(self.steps)) / len(self.steps) if self.steps else 0.0


FeatureSource = Callable[[Record], Features]  # target features of prompt + output[:-1], one row each


def _rows(features: Features | None, start: int, stop: int) -> Features | None:
    """Rows ``[start, stop)`` (at most the last ``MAX_FEATURE_ROWS``, as the gateway holds)."""
    if features is None:
        return None
    start = max(start, stop - MAX_FEATURE_ROWS)
    if stop <= start:
        return None
    w = 2 * features.width
    return Features(stop - start, features.width, features.data[start * w:stop * w])


class Replayer:
    def __init__(self, engine: DraftEngineLike, drafter: str, max_tree_nodes: int,
                 feature_source: FeatureSource | None = None) -> None:
        """``drafter``: a name the engine routes; ``max_tree_nodes``: the verifier's node
        limit the live step loop clamped budgets with; ``feature_source``: target features
        for feature drafters (None: the drafter reads none)."""
        self.engine, self.drafter, self.max_tree_nodes = engine, drafter, max_tree_nodes
        self.feature_source = feature_source
        self._ids = 0

    def replay(self, record: Record, budget: TreeBudget, coupled: bool = True) -> Replayed:
        self._ids += 1
        seq = self._ids
        out = record.output_ids
        history = list(record.prompt_ids) + [out[0]]  # the prefill's token is pending
        emitted = 1
        features = self.feature_source(record) if self.feature_source is not None else None
        result = Replayed(record, budget)
        state = _DraftState()
        try:
            while emitted < len(out):
                step_budget = budget.clamped(record.max_tokens - emitted,
                                             record.max_model_len - (len(history) - 1), self.max_tree_nodes)
                tree, draft_s = self._tree(seq, record, history, step_budget, coupled, features, state, result)
                accepted = accepted_length(tree, out[emitted:])
                new = out[emitted:emitted + accepted + 1]
                result.steps.append(Step(len(tree), accepted, len(new), step_budget.speculates, draft_s))
                history += new
                state.new_tokens += new
                emitted += len(new)
        finally:
            if state.synced:
                self.engine.release(seq)
        return result

    def _tree(self, seq: int, record: Record, history: list[int], budget: TreeBudget, coupled: bool,
              features: Features | None, state: "_DraftState", result: Replayed) -> tuple[TokenTree, float]:
        """The step's tree, as ``Proposer.propose`` gets it: root-only when nothing fits."""
        if not budget.speculates:
            return TokenTree.root_only(history[-1]), 0.0
        committed = len(history) - 1  # the pending token is not in the target's KV yet
        started = time.perf_counter()
        if not state.synced:  # the first drafting step registers the whole history
            self.engine.prefill(seq, tuple(history), record.sampling, _rows(features, 0, committed))
            state.synced, state.new_tokens, state.fed = True, [], committed
        (prop,) = self.engine.propose([ProposeRequest(seq, tuple(state.new_tokens), budget, self.drafter,
                                                      coupled, _rows(features, state.fed, committed))])
        draft_s = time.perf_counter() - started
        state.new_tokens, state.fed = [], committed
        if prop.tree.token_ids[0] != history[-1]:
            raise RuntimeError(f"drafter {prop.drafter!r} rooted a tree at {prop.tree.token_ids[0]}, "
                               f"not at the pending token {history[-1]}")
        result.drafter = prop.drafter
        return prop.tree, draft_s


@dataclass
class _DraftState:
    """What the live job tracks about the draft service (``Job.draft_synced``, ``new_tokens``,
    the features not yet sent)."""

    synced: bool = False
    new_tokens: list[int] = field(default_factory=list)
    fed: int = 0  # feature rows handed over so far
