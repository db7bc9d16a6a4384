"""The target distribution p and the lossless rules that accept a path through a token tree.

Definitions (per sequence and step). The tree's root is the *pending* token: sampled by the
target last step, its K/V written this step. Walking down from the root, each node ``u`` either
hands over to one child -- that child's token is **accepted** -- or the walk stops and the
target's own token at ``u`` becomes the **bonus** token. A step therefore yields
``accepted + 1`` tokens (the acceptance length tau), and the bonus becomes the next pending
token. A root-only tree is plain decoding through the same code.

The target's token at a node ``u`` (whose token sits at absolute position ``i - 1``, so the
token it predicts sits at position ``i``) is:

* **Greedy** (temperature 0, or below ``GREEDY_BELOW``): ``x*_u = argmax p_u``.
* **Sampling**: ``x*_u = argmax_v (log p_u(v) + g_i(v))`` where ``g_i`` is a vector of i.i.d.
  standard Gumbel noise that is a pure function of the request's 64-bit seed and the position
  ``i`` (``position_noise``: a counter-based hash, SplitMix64, of (seed, position, token)).
  By the Gumbel-max trick (Gumbel 1954; Maddison, Tarlow & Minka 2014) ``x*_u`` is an exact
  sample from ``p_u``.

**Acceptance** is the same walk in both cases: at node ``u`` accept the child whose token equals
``x*_u`` (siblings carry distinct tokens, so at most one does); if none does, ``x*_u`` is the
bonus. For greedy decoding this is token-for-token plain greedy decoding. For sampling it is
lossless because along any path each position ``i`` is decided by its own noise ``g_i``,
independent of every other position, so the emitted sequence is drawn exactly as plain
sampling would draw it; siblings share ``g_i`` (one position, one draw), which is what makes
the choice at a node a single exact draw whatever the children are. The chance of accepting a
child at ``u`` is ``sum p_u(children)``, as for the multi-candidate speculative sampling of
SpecInfer (Miao et al. 2023) and Leviathan et al. 2023 / Chen et al. 2023 with deterministic
drafts. Better still, the emitted tokens are a fixed function of (prompt, seed): they do not
depend on the drafter, the tree, the batch or whether a step speculated at all, so a seeded
request reproduces exactly, and any drafter's acceptance can be computed offline.

A drafter may rank its candidates with the same noise (*coupled drafting*: its first child at
a node is ``argmax(log q + g_i)``; Gumbel-max coupling, as in the coupling view of speculative
decoding, e.g. Daliri et al. 2024): when ``q`` is close to ``p`` it proposes exactly the token
the target will pick. The draft's noise never changes the output, only how often it is guessed.

Scoring drafted top-k tokens with a softmax of the draft as if it were their sampling
distribution ``q`` is *not* lossless and is deliberately absent.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from specgrove.kernels.cpu_elementwise import argmax_rows
from specgrove.tree import TokenTree
from specgrove.sampling_params import SamplingParams

# SplitMix64 (Steele, Lea & Flood 2014) constants as signed 64-bit integers (torch has no uint64
# arithmetic; multiplication wraps modulo 2^64 exactly as the unsigned algorithm needs).
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    """SplitMix64's output function on a Python int (the per-row key)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _signed(z: int) -> int:
    return z - (1 << 64) if z >= 1 << 63 else z


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 lanes (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


@functools.lru_cache(maxsize=8)
def _token_states(vocab: int, device: str) -> torch.Tensor:  # [V] int64
    """``(v + 1) * golden`` for every token: SplitMix64's state offsets, computed once."""
    return torch.arange(1, vocab + 1, dtype=torch.int64, device=device) * _GOLDEN


def position_noise(seed: int, positions: Sequence[int], vocab: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:  # [P, V] float64
    """Standard Gumbel noise ``g_i(v)`` for each position ``i``: a pure function of
    (seed, i, v), identical on every device and in every batch.

    Row key ``k_i = mix(mix(seed) + i)``; token ``v`` gets SplitMix64's output for state
    ``k_i + (v + 1) * golden``; its top 53 bits make a uniform ``u`` in (0, 1) and
    ``g = -log(-log u)``. Vectorised over [P, V] int64 lanes: no per-token Python loop.
    """
    base = _mix64(seed)
    keys = torch.tensor([_signed(_mix64(base + i)) for i in positions], dtype=torch.int64,
                        device=device)
    z = keys[:, None] + _token_states(vocab, str(device))  # [P, V], wraps modulo 2^64
    z ^= _shr(z, 30)
    z *= _MIX1
    z ^= _shr(z, 27)
    z *= _MIX2
    z ^= _shr(z, 31)
    u = _shr(z, 11).to(torch.float64).add_(0.5).mul_(2.0**-53)  # (0, 1), never 0 or 1
    return u.log_().neg_().log_().neg_()


def target_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``log p`` up to a constant per row: temperature, then min-p, top-k, top-p. [N, V] -> [N, V]

    ``logits`` are the model's after the request's logits processors
    (``specgrove.logits_processors``). Tokens outside the min-p / top-k / top-p set are ``-inf``. Works in float64 for float64 logits,
    else float32.
    """
    work_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    scaled = logits.to(work_dtype) / params.temperature
    if params.min_p > 0.0:  # p(v) < min_p * max p  <=>  logit(v) < max logit + log(min_p)
        floor = scaled.max(dim=-1, keepdim=True).values + math.log(params.min_p)
        scaled = scaled.masked_fill(scaled < floor, float("-inf"))
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
    return scaled


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The one definition of p: ``softmax(target_logits)``. [N, V] -> [N, V]"""
    return target_logits(logits, params).softmax(dim=-1)


def sampled_tokens(log_p: torch.Tensor, noise: torch.Tensor) -> list[int]:
    """Gumbel-max: row n's token is ``argmax(log_p[n] + noise[n])``. [N, V] each, added in
    ``log_p``'s precision (float32, or float64 for float64 models)."""
    return (noise.to(log_p.dtype) + log_p).argmax(dim=-1).tolist()


def accept_path(tree: TokenTree, target_tokens: list[int]) -> tuple[list[int], int]:
    """The acceptance walk. ``target_tokens[u]`` is the target's token at node ``u`` (argmax p_u,
    or the Gumbel-max sample). Returns (accepted path nodes after the root, bonus token)."""
    path: list[int] = []
    node = 0
    while True:
        want = target_tokens[node]
        nxt = next((c for c in tree.children[node] if tree.token_ids[c] == want), None)
        if nxt is None:
            return path, want
        path.append(nxt)
        node = nxt


class NoiseCache:
    """One sequence's noise rows by position, computed once each ([V] float32 per row).

    A step verifies positions ``L+1 .. L+depth+1``; the ones it rejects are verified again next
    step, so each position's noise is computed once however often it is needed. Rows before
    the sequence's next undecided position are dropped (``forget_before``).
    """

    def __init__(self, seed: int, vocab: int, device: torch.device | str = "cpu") -> None:
        self.seed, self.vocab, self.device = seed, vocab, device
        self._rows: dict[int, torch.Tensor] = {}

    def rows(self, positions: Sequence[int]) -> torch.Tensor:  # [len(positions), V] float32
        missing = sorted({p for p in positions if p not in self._rows})
        if missing:
            fresh = position_noise(self.seed, missing, self.vocab, self.device).float()
            self._rows.update(zip(missing, fresh))
        return torch.stack([self._rows[p] for p in positions])

    def forget_before(self, position: int) -> None:
        for p in [p for p in self._rows if p < position]:
            del self._rows[p]


def target_tokens(logits: torch.Tensor, params: SamplingParams, positions: Sequence[int],
                  noise: NoiseCache | None) -> list[int]:
    """The target's token at each row of ``logits`` ([N, V]); row n predicts ``positions[n]``.
    Greedy: the argmax. Sampling: the Gumbel-max sample under the position's noise."""
    if params.greedy or noise is None:
        return argmax_rows(logits).tolist()
    return sampled_tokens(target_logits(logits, params), noise.rows(positions))
