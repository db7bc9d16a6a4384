"""Log-probabilities of emitted tokens, as the OpenAI API returns them.

They are the raw model's: ``log_softmax`` of the logits at the position that produced each
token, before temperature, top-k or top-p (vLLM's default, ``raw_logprobs``), so a greedy
request gets meaningful numbers too. The target computes them from the same logits that verify
the step, one row per new token, so they cost one ``log_softmax`` over the rows kept and are
the same with speculation on or off: a token's row is the logits at its position whether the
position was reached by a tree node or by a plain step.
"""
from __future__ import annotations

from typing import Sequence

import torch

from specgrove.types import TokenLogprob


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int], top: int | None) -> tuple[TokenLogprob, ...]:
    """Row i of ``logits`` [n, V] produced ``tokens[i]``; each gets its log-probability and the
    ``top`` most likely tokens at its position. ``()`` when ``top`` is None (not asked for)."""
    if top is None:
        return ()
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(logits.to(work), dim=-1)  # [n, V]
    chosen = logp.gather(-1, torch.tensor(list(tokens), device=logp.device).unsqueeze(-1)).squeeze(-1).tolist()
    if top:
        values, ids = torch.topk(logp, top, dim=-1)  # [n, top], most likely first
        alts = [tuple(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        alts = [()] * len(chosen)
    return tuple(TokenLogprob(t, lp, alt) for t, lp, alt in zip(tokens, chosen, alts))
