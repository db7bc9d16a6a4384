"""The DESIGN "One step" loop in one process: prefill, then propose -> verify -> postprocess.

Works with any target exposing ``prefill / verify / release / committed_len / max_model_len``
and any draft engine exposing ``prefill / propose / release`` (duck-typed, so this shared
library imports no service). The gateway runs the same loop over gRPC with continuous batching;
this version serves ``specgrove generate``, tests and benchmarks.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

from specgrove.tree import TokenTree, static_tree_size
from specgrove.types import (
    PrefillRequest,
    ProposeRequest,
    SamplingParams,
    TreeBudget,
    VerifyItem,
)


@dataclass(frozen=True)
class GenerationRequest:
    seq_id: int
    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    budget: TreeBudget = TreeBudget()
    drafter: str = ""
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class GenerationOutput:
    seq_id: int
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    steps: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens per verify step (accepted + bonus): tau."""
        return (self.accepted_tokens + self.steps) / self.steps if self.steps else 0.0


def clamp_budget(budget: TreeBudget, room_tokens: int, room_context: int) -> TreeBudget:
    """Shrink a budget so a step never drafts past max_tokens or the context."""
    depth = max(0, min(budget.depth, room_tokens - 1, room_context - 1))
    if budget.is_static:
        branching = budget.branching[:depth]
        while branching and static_tree_size(branching) > room_context:
            branching = branching[:-1]
        return replace(budget, branching=branching)
    return replace(budget, max_depth=depth, max_nodes=max(1, min(budget.max_nodes, room_context)))


def generate(target, drafts, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
    """Run a fixed batch to completion; sequences leave the batch as they finish."""
    outs = {r.seq_id: GenerationOutput(r.seq_id) for r in requests}
    reqs = {r.seq_id: r for r in requests}
    firsts = target.prefill([PrefillRequest(r.seq_id, r.prompt_ids, r.sampling) for r in requests])
    running, new_tokens = [], {}
    for res in firsts:
        r = reqs[res.seq_id]
        drafts.prefill(r.seq_id, list(r.prompt_ids) + [res.first_token])
        if _append(outs[r.seq_id], r, [res.first_token]):
            running.append(r.seq_id)
            new_tokens[r.seq_id] = ()
        else:
            _release(target, drafts, r.seq_id)
    try:
        while running:
            running = _step(target, drafts, reqs, outs, running, new_tokens)
    finally:
        for seq_id in running:
            _release(target, drafts, seq_id)
    return [outs[r.seq_id] for r in requests]


def _step(target, drafts, reqs, outs, running, new_tokens) -> list[int]:
    proposals = []
    for seq_id in running:
        r, out = reqs[seq_id], outs[seq_id]
        room_ctx = target.max_model_len - target.committed_len(seq_id)
        budget = clamp_budget(r.budget, r.max_tokens - len(out.token_ids), room_ctx)
        proposals.append(ProposeRequest(seq_id, new_tokens[seq_id], budget, r.drafter))
    trees: list[TokenTree] = [r.tree for r in drafts.propose(proposals)]
    results = target.verify([VerifyItem(s, t) for s, t in zip(running, trees)])
    still = []
    for seq_id, tree, res in zip(running, trees, results):
        out = outs[seq_id]
        out.steps += 1
        out.drafted_tokens += len(tree) - 1
        out.accepted_tokens += len(res.accepted_tokens)
        new_tokens[seq_id] = res.new_tokens
        if _append(out, reqs[seq_id], res.new_tokens):
            still.append(seq_id)
        else:
            _release(target, drafts, seq_id)
    return still


def _append(out: GenerationOutput, req: GenerationRequest, tokens: Sequence[int]) -> bool:
    """Add tokens up to a stop token or max_tokens; False once the sequence is finished."""
    for tok in tokens:
        out.token_ids.append(tok)
        if tok in req.stop_token_ids:
            out.finish_reason = "stop"
            return False
        if len(out.token_ids) >= req.max_tokens:
            out.finish_reason = "length"
            return False
    return True


def _release(target, drafts, seq_id: int) -> None:
    target.release(seq_id)
    drafts.release(seq_id)
