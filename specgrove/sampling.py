"""The target distribution p and the lossless rules that accept a path through a token tree.

Definitions (per sequence and step). The tree's root is the *pending* token: sampled by the
target last step, its K/V written this step. Walking down from the root, each node ``u``
either hands over to one child -- that child's token is **accepted** -- or the walk stops and
the target samples the **bonus** token from ``p_u``. A step therefore yields
``accepted + 1`` tokens (the acceptance length tau), and the bonus becomes the next pending
token. A root-only tree is plain decoding through the same code.

Rules:

* **Greedy** (temperature 0): follow the child whose token is ``argmax p_u``; the bonus is
  ``argmax p_u`` at the last accepted node. Output equals plain greedy decoding token for token.
* **Deterministic drafts** (the tokens of the tree are a function of the history: top-k trees,
  n-gram lookup). At node ``u`` draw one uniform ``r``; walk the children in order adding
  ``S += p_u(x_i)``; accept the first child with ``r < S``. Child ``i`` is thus taken with
  probability exactly ``p_u(x_i)``. If none is taken (probability ``1 - sum_i p_u(x_i)``) the
  bonus is drawn from ``p_u`` restricted to the untried tokens and renormalised. Together this
  is one exact draw from ``p_u``, so the output has the target's distribution whatever the
  drafter proposed (the multi-candidate generalisation of speculative sampling: Leviathan et
  al. 2023; Chen et al. 2023; SpecInfer, Miao et al. 2023; the acceptance at a node is the
  draft-tree quantity EAGLE-2, Li et al. 2024, estimates with the draft's confidence).

Scoring drafted top-k tokens with a softmax of the draft as if it were their sampling
distribution ``q`` is *not* lossless and is deliberately absent.
"""
from __future__ import annotations

import random

import torch

from specgrove.tree import TokenTree
from specgrove.types import SamplingParams


def make_generator(seed: int | None) -> torch.Generator:
    """Per-request CPU generator; an unseeded request gets a fresh random seed."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    return gen


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The one definition of p: temperature, then top-k, then top-p. [N, V] -> [N, V]."""
    work_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    scaled = logits.to(work_dtype) / params.temperature
    if 0 < params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[..., -1:]  # [N, 1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass strictly before it already reaches top_p (keeps >= 1).
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled.softmax(dim=-1)


def accept_greedy(tree: TokenTree, argmax_tokens: list[int]) -> tuple[list[int], int]:
    """Greedy walk. ``argmax_tokens[i]`` is argmax p at node i. Returns (path nodes, bonus)."""
    path: list[int] = []
    node = 0
    while True:
        want = argmax_tokens[node]
        nxt = next((c for c in tree.children[node] if tree.token_ids[c] == want), None)
        if nxt is None:
            return path, want
        path.append(nxt)
        node = nxt


def accept_sampled(
    tree: TokenTree,
    probs: torch.Tensor,  # [N, V] target distribution at every node of the tree (CPU)
    gen: torch.Generator,
) -> tuple[list[int], int]:
    """Deterministic-draft rule (module docstring). Returns (path nodes, bonus token)."""
    path: list[int] = []
    node = 0
    while True:
        kids = tree.children[node]
        if kids:
            kid_tokens = torch.tensor([tree.token_ids[c] for c in kids])
            kid_probs = probs[node, kid_tokens].tolist()
            r = torch.rand((), generator=gen, dtype=torch.float64).item()
            acc = 0.0
            chosen = None
            for child, p in zip(kids, kid_probs):
                acc += p
                if r < acc:
                    chosen = child
                    break
            if chosen is not None:
                path.append(chosen)
                node = chosen
                continue
            return path, _sample_excluding(probs[node], kid_tokens, gen)
        return path, _sample_excluding(probs[node], None, gen)


def _sample_excluding(
    p: torch.Tensor, exclude: torch.Tensor | None, gen: torch.Generator  # p: [V]
) -> int:
    """One draw from p with the ``exclude`` tokens removed and the rest renormalised."""
    if exclude is not None:
        rest = p.clone()
        rest[exclude] = 0.0
        # All mass on tried tokens can only mean rounding; fall back to p itself.
        if rest.sum() > 0:
            p = rest
    return int(torch.multinomial(p.float() if p.dtype == torch.float16 else p, 1, generator=gen))
