"""Logits processors that depend on the history, applied per tree node so speculation never
changes what they do.

OpenAI's ``presence_penalty`` / ``frequency_penalty`` and ``logit_bias``, and vLLM's
``repetition_penalty`` (Keskar et al. 2019, CTRL) and ``min_tokens``, change the target
distribution ``p`` depending on what came before. In a token tree every node has its own
history: the sequence's prompt and output so far, then the tokens on the path from the root to
the node. So each node's logits are processed with that node's history, exactly as plain
decoding would process them at that position, and the lossless acceptance rules
(``specgrove.sampling``) then see the same ``p`` either way.

Order, as vLLM applies them: ``logit_bias``, the ``min_tokens`` mask, then repetition,
frequency and presence penalties, then the grammar's mask (structured output,
``specgrove.grammar``: ``-inf`` for what the grammar forbids, which no earlier step can undo);
temperature, min-p, top-k and top-p follow in ``specgrove.sampling.target_logits``. Output
counts include the pending token (the tree's root), which is output already.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from specgrove.grammar import GrammarState
from specgrove.tree import TokenTree
from specgrove.sampling_params import SamplingParams


@dataclass
class OutputHistory:
    """What the processors need of one sequence's history (kept by the target per sequence)."""

    prompt_seen: torch.Tensor | None  # [V] bool: tokens of the prompt (repetition penalty)
    counts: torch.Tensor | None  # [V] int64: occurrences of each token in the output so far
    length: int = 0  # output tokens so far, the pending one included
    grammar: GrammarState | None = None  # the request's grammar, standing at the output so far

    @staticmethod
    def start(params: SamplingParams, prompt: Sequence[int], output: Sequence[int], vocab: int,
              device: torch.device | str, compiled_grammar=None) -> "OutputHistory":
        """``compiled_grammar``: the request's grammar compiled for this target (``None``
        without one)."""
        grammar = GrammarState(compiled_grammar, output) if compiled_grammar is not None else None
        if not params.counts_output:
            return OutputHistory(None, None, len(output), grammar)
        seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        seen[torch.tensor(list(prompt), dtype=torch.long, device=device)] = True
        counts = torch.zeros(vocab, dtype=torch.long, device=device)
        if output:
            counts.index_add_(0, torch.tensor(list(output), dtype=torch.long, device=device),
                              torch.ones(len(output), dtype=torch.long, device=device))
        return OutputHistory(seen, counts, len(output), grammar)

    def extend(self, tokens: Sequence[int]) -> None:
        """Tokens appended to the output (a step's accepted tokens and its bonus)."""
        self.length += len(tokens)
        if self.grammar is not None:
            self.grammar.extend(tokens)
        if self.counts is not None and tokens:
            ids = torch.tensor(list(tokens), dtype=torch.long, device=self.counts.device)
            self.counts.index_add_(0, ids, torch.ones_like(ids))


def path_counts(tree: TokenTree, vocab: int, device) -> torch.Tensor:
    """[N, V]: how often each token occurs on the path from the root (excluded) to each node
    (included), i.e. what each node adds to the output before the token its logits predict."""
    n = len(tree)
    mask = torch.tensor(tree.ancestor_mask(), dtype=torch.bool, device=device)  # [N, N]: a is u or an ancestor
    mask[:, 0] = False  # the root is the pending token, counted in the history already
    rows, cols = mask.nonzero(as_tuple=True)
    tokens = torch.tensor(tree.token_ids, dtype=torch.long, device=device)
    counts = torch.zeros(n, vocab, dtype=torch.long, device=device)
    counts.index_put_((rows, tokens[cols]), torch.ones_like(rows), accumulate=True)
    return counts


def process_logits(logits: torch.Tensor, params: SamplingParams, history: OutputHistory,
                   tree: TokenTree | None, end_ids: Sequence[int]) -> torch.Tensor:
    """Apply the request's history-dependent processors to ``logits`` [N, V] (one row per node
    of ``tree``; ``tree`` None: one row predicting the first output token, at prefill).
    ``end_ids``: the model's end-of-sequence tokens, masked with the request's stop tokens
    until ``min_tokens`` are out. Returns new logits (float64 for float64 input, else float32)."""
    if not params.processes_logits:
        return logits
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    out = logits.to(work).clone()
    vocab = out.shape[-1]
    if params.logit_bias:
        ids = torch.tensor([t for t, _ in params.logit_bias], dtype=torch.long, device=out.device)
        out[:, ids] += torch.tensor([b for _, b in params.logit_bias], dtype=work, device=out.device)
    depths = torch.tensor(tree.depths if tree is not None else [0], device=out.device)  # [N]
    if params.min_tokens:
        # Row u predicts output token number length + depth(u) + 1 (1-based).
        early = (history.length + depths) < params.min_tokens  # [N]
        stop = sorted({*end_ids, *params.stop_token_ids})
        if stop:
            rows = early.nonzero(as_tuple=True)[0]
            out[rows.unsqueeze(-1), torch.tensor(stop, device=out.device)] = float("-inf")
    if params.counts_output:
        counts = history.counts.unsqueeze(0).expand(out.shape[0], vocab)  # [N, V]
        if tree is not None and len(tree) > 1:
            counts = counts + path_counts(tree, vocab, out.device)
        if params.repetition_penalty != 1.0:
            seen = history.prompt_seen.unsqueeze(0) | (counts > 0)
            scaled = torch.where(out > 0, out / params.repetition_penalty, out * params.repetition_penalty)
            out = torch.where(seen, scaled, out)
        out = out - params.frequency_penalty * counts.to(work) - params.presence_penalty * (counts > 0).to(work)
    if history.grammar is not None:
        out = history.grammar.mask_(out, tree)  # in place: ``out`` is this function's own copy
    return out
