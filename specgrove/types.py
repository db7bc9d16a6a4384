"""One dataclass per wire concept (torch-free).

These are the objects that cross every service boundary; the gRPC issue adds ``from_pb`` /
``to_pb`` to each. One object per phase of a step: ``PrefillRequest`` -> ``PrefillResult``,
``ProposeRequest`` -> ``ProposeResult`` (a tree per sequence) -> ``VerifyItem`` ->
``VerifyResult``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from specgrove.tree import TokenTree


class InvalidRequest(ValueError):
    """A caller error naming the offending field (maps to HTTP 400 / INVALID_ARGUMENT)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class SamplingParams:
    """How the target distribution p is formed; temperature 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise InvalidRequest("temperature", f"must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequest("top_k", f"must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class TreeBudget:
    """Speculation settings for one sequence and step.

    Either a static shape (children per node at each depth, e.g. (4, 2, 2, 1)) or a dynamic
    budget: at most ``max_nodes`` nodes (root included), ``max_depth`` depths, expanding the
    ``top_k`` best nodes per depth (EAGLE-2). ``max_nodes == 1`` is speculation off.
    """

    branching: tuple[int, ...] = ()
    max_nodes: int = 1
    max_depth: int = 0
    top_k: int = 4

    @staticmethod
    def off() -> "TreeBudget":
        return TreeBudget()

    @property
    def is_static(self) -> bool:
        return bool(self.branching)

    @property
    def depth(self) -> int:
        return len(self.branching) if self.branching else self.max_depth


@dataclass(frozen=True)
class PrefillRequest:
    seq_id: int
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = SamplingParams()


@dataclass(frozen=True)
class PrefillResult:
    seq_id: int
    first_token: int  # the pending token: sampled, not yet run through the target


@dataclass(frozen=True)
class ProposeRequest:
    seq_id: int
    new_tokens: tuple[int, ...]  # tokens appended since the last call, pending token last
    budget: TreeBudget
    drafter: str = ""


@dataclass(frozen=True)
class VerifyItem:
    seq_id: int
    tree: TokenTree  # rooted at the sequence's pending token


@dataclass(frozen=True)
class VerifyResult:
    seq_id: int
    accepted_tokens: tuple[int, ...]  # tree tokens accepted after the root, in path order
    bonus_token: int  # sampled by the target after the last accepted node: the new pending
    accepted_nodes: tuple[int, ...] = field(default=(), compare=False)  # their node indices

    @property
    def new_tokens(self) -> tuple[int, ...]:
        """Tokens this step adds to the output: accepted + bonus (acceptance length tau)."""
        return self.accepted_tokens + (self.bonus_token,)
