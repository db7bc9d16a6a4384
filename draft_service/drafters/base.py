"""What every drafter implements."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from specgrove.tree import TokenTree
from specgrove.sampling_params import SamplingParams
from specgrove.types import Features, TreeBudget


@dataclass(frozen=True)
class DraftInput:
    seq_id: int
    history: Sequence[int]  # every token of the sequence so far; the pending token (root) last
    budget: TreeBudget
    sampling: SamplingParams = SamplingParams()  # the target's settings for this sequence
    coupled: bool = False  # rank the first child by the sequence's sampling noise
    # Target features not handed to a drafter before: rows for the last ``rows`` tokens of
    # ``history[:-1]`` (row j is the hidden state that predicted the token after it).
    features: Features | None = None


class Drafter(Protocol):
    kind: str
    feature_layers: tuple[int, ...]  # target layers whose features it needs; () = none

    def propose(self, inputs: Sequence[DraftInput]) -> list[TokenTree]:
        """One tree per input, rooted at ``history[-1]``, within the input's budget."""

    def release(self, seq_id: int) -> None:
        """Forget a sequence (frees any KV it holds); unknown ids are ignored."""
