"""Shadow drafting: score other drafters on live traffic without touching its output.

Under greedy decoding or seeded position-keyed sampling (``specgrove.sampling``) a request's
continuation does not depend on the speculation, so the tokens the target emits are the
continuation *any* drafter would have been verified against. A shadow drafter X therefore
follows its own trajectory along that one continuation, exactly as ``specgrove replay`` does
offline: a tree rooted at output position ``r`` is scored by its longest path matching the
tokens emitted after ``r`` (the target's own acceptance, which depends only on those tokens),
and the shadow's next root is ``r + accepted + 1``. Its acceptance length is the one a live run
with X would have had, token for token.

The shadow is a sequence of its own in the draft service (its own id, registered with the
history up to its root and the request's seed, so coupled model drafts are the live ones), and
its trees are asked for in the same ``Propose`` call as the live drafts. A tree waits until the
emitted tokens decide it (its depth, or the end of the output); a shadow that falls behind the
live sequence catches up when the request ends (``Proposer.flush_shadows``). Budgets are
clamped as a live step's would be at that root, so the last steps match too. Feature drafters
(EAGLE heads) are not shadowed: their features would have to follow the shadow's position.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from specgrove.tree import TokenTree
from specgrove.sampling_params import SamplingParams
from specgrove.types import DraftPrefill, ProposeRequest, TreeBudget


def accepted_along(tree: TokenTree, continuation: Sequence[int]) -> int:
    """How many nodes below the root the target accepts when it emits ``continuation`` after the
    root: the longest root path whose tokens are a prefix of it."""
    node, accepted = 0, 0
    while accepted < len(continuation):
        child = next((c for c in tree.children[node] if tree.token_ids[c] == continuation[accepted]), None)
        if child is None:
            break
        node, accepted = child, accepted + 1
    return accepted


@dataclass
class ShadowStats:
    """What a shadow drafter would have done on one request (the live request's stats' terms)."""

    steps: int = 0  # verify steps a live run with the drafter would have taken
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def mean_acceptance_length(self) -> float:
        return (self.accepted_tokens + self.steps) / self.steps if self.steps else 0.0

    def as_json(self) -> dict:
        return {"steps": self.steps, "drafted_tokens": self.drafted_tokens,
                "accepted_tokens": self.accepted_tokens,
                "mean_acceptance_length": round(self.mean_acceptance_length, 4)}


@dataclass
class ShadowTrack:
    """One shadow drafter following one request."""

    drafter: str
    draft_id: int  # its sequence id in the draft service (never a live one)
    prompt_len: int
    root: int = 0  # output position of the next tree's root (0: the first generated token)
    synced: int = 0  # history tokens the draft service holds for it (0: not registered)
    tree: TokenTree | None = None  # proposed, not yet scored
    stopped: bool = False  # the draft service failed it, or its drafter went away
    stats: ShadowStats = field(default_factory=ShadowStats)

    def wants_tree(self, output_len: int, finished: bool) -> bool:
        """Its previous tree is scored and its root token is out -- and, once the request has
        finished, is not the last token (no live step starts there)."""
        end = output_len - 1 if finished else output_len
        return not self.stopped and self.tree is None and self.root < end

    def request(self, history: Sequence[int], budget: TreeBudget, coupled: bool,
                sampling: SamplingParams) -> tuple[DraftPrefill | None, ProposeRequest]:
        """The draft calls for its next tree: a registration first if it has none, then the
        propose with the tokens up to its root (the root last)."""
        end = self.prompt_len + self.root + 1
        prefill = None
        if not self.synced:
            prefill = DraftPrefill(self.draft_id, tuple(history[:end]), sampling)
            self.synced = end
        new = tuple(history[self.synced:end])
        self.synced = end
        return prefill, ProposeRequest(self.draft_id, new, budget, self.drafter, coupled)

    def take_tree(self, tree: TokenTree) -> None:
        self.tree = tree

    def score(self, output: Sequence[int], finished: bool) -> tuple[int, int] | None:
        """Score the pending tree if the emitted tokens decide it: (drafted, accepted)."""
        tree = self.tree
        if tree is None:
            return None
        after = output[self.root + 1:]
        if len(after) < tree.depth and not finished:
            return None  # a deeper path may still match
        step = len(tree) - 1, accepted_along(tree, after)
        self.record(*step)
        self.tree = None
        return step

    def record(self, drafted: int, accepted: int) -> None:
        s = self.stats
        s.steps += 1
        s.drafted_tokens += drafted
        s.accepted_tokens += accepted
        self.root += accepted + 1
