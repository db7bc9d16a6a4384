"""Token trees proposed by drafters and verified by the target (torch-free).

A tree is two parallel arrays, nodes in topological order: ``token_ids[i]`` and ``parents[i]``
(``parents[0] == -1``; node 0 is the pending token the target sampled last step). Siblings carry
distinct tokens, so a path is identified by its tokens. Everything else -- depth, RoPE positions
(siblings share one), ancestor mask, children -- is derived. Trees as used by SpecInfer
(Miao et al., 2023) and Sequoia (Chen et al., 2024); static shapes as "branching per depth".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence


class TreeError(ValueError):
    """A token tree that violates the structural rules."""


@dataclass(frozen=True)
class TokenTree:
    token_ids: tuple[int, ...]
    parents: tuple[int, ...]
    # Optional per-node draft scores (cumulative draft log-probability); informational only.
    scores: tuple[float, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "token_ids", tuple(int(t) for t in self.token_ids))
        object.__setattr__(self, "parents", tuple(int(p) for p in self.parents))
        _validate(self.token_ids, self.parents, self.scores)

    @staticmethod
    def root_only(token_id: int) -> "TokenTree":
        return TokenTree((token_id,), (-1,))

    @staticmethod
    def chain(token_ids: Sequence[int]) -> "TokenTree":
        return TokenTree(tuple(token_ids), tuple(range(-1, len(token_ids) - 1)))

    @staticmethod
    def from_pb(msg) -> "TokenTree":
        """From a ``specgrove.v1.TokenTree``; raises TreeError if it is malformed."""
        scores = tuple(msg.scores) if len(msg.scores) else None
        return TokenTree(tuple(msg.token_ids), tuple(msg.parents), scores)

    def to_pb(self):
        from specgrove.pb.v1 import common_pb2

        return common_pb2.TokenTree(
            token_ids=self.token_ids, parents=self.parents, scores=self.scores or ()
        )

    def __len__(self) -> int:
        return len(self.token_ids)

    @cached_property
    def depths(self) -> tuple[int, ...]:
        d: list[int] = []
        for p in self.parents:
            d.append(0 if p < 0 else d[p] + 1)
        return tuple(d)

    @property
    def depth(self) -> int:
        """Longest root-to-leaf path in edges (0 for a root-only tree)."""
        return max(self.depths)

    def positions(self, committed_len: int) -> list[int]:
        """RoPE position of each node when the sequence has ``committed_len`` tokens in KV."""
        return [committed_len + d for d in self.depths]

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        kids: list[list[int]] = [[] for _ in self.parents]
        for i, p in enumerate(self.parents):
            if p >= 0:
                kids[p].append(i)
        return tuple(tuple(k) for k in kids)

    def ancestor_mask(self) -> list[list[bool]]:
        """``mask[i][j]`` is True iff node j is node i or one of its ancestors. [N][N]"""
        n = len(self)
        mask = [[False] * n for _ in range(n)]
        for i, p in enumerate(self.parents):
            if p >= 0:
                mask[i][:] = mask[p]
            mask[i][i] = True
        return mask

    def subtree(self, nodes: Sequence[int]) -> "TokenTree":
        """The tree made of ``nodes`` (ascending, the root first, each node's parent among
        them), renumbered in that order."""
        index = {old: new for new, old in enumerate(nodes)}
        parents = tuple(-1 if self.parents[u] < 0 else index[self.parents[u]] for u in nodes)
        scores = None if self.scores is None else tuple(self.scores[u] for u in nodes)
        return TokenTree(tuple(self.token_ids[u] for u in nodes), parents, scores)

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root to ``node`` inclusive."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]


def _validate(tokens: tuple[int, ...], parents: tuple[int, ...], scores) -> None:
    if not tokens:
        raise TreeError("a token tree needs at least the root node")
    if len(tokens) != len(parents):
        raise TreeError(f"token_ids has {len(tokens)} entries but parents has {len(parents)}")
    if scores is not None and len(scores) != len(tokens):
        raise TreeError(f"scores has {len(scores)} entries for {len(tokens)} nodes")
    if parents[0] != -1:
        raise TreeError("parents[0] must be -1 (node 0 is the root)")
    if any(t < 0 for t in tokens):
        raise TreeError("token ids must be non-negative")
    seen: set[tuple[int, int]] = set()
    for i in range(1, len(parents)):
        p = parents[i]
        if not 0 <= p < i:
            raise TreeError(f"parents[{i}] = {p}: a parent must come before its child")
        if (p, tokens[i]) in seen:
            raise TreeError(f"node {i} repeats token {tokens[i]} among the children of node {p}")
        seen.add((p, tokens[i]))


MAX_SHAPE_DEPTH = 64  # depths of a static shape; no verifier takes trees anywhere near this
MAX_SHAPE_WIDTH = 4096  # children per node


def parse_branching(spec: str | Sequence[int]) -> tuple[int, ...]:
    """Parse a static tree shape like ``"4,2,2,1"`` (children per node at each depth)."""
    if isinstance(spec, str) and len(spec) > 8 * MAX_SHAPE_DEPTH:
        raise TreeError(f"bad tree shape: longer than {MAX_SHAPE_DEPTH} depths")
    if isinstance(spec, str):
        try:
            branching = tuple(int(x) for x in spec.replace(" ", "").split(",") if x)
        except ValueError as exc:
            raise TreeError(f"bad tree shape {spec!r}: expected integers like 4,2,2,1") from exc
    else:
        branching = tuple(int(x) for x in spec)
    if any(b < 1 for b in branching):
        raise TreeError(f"bad tree shape {spec!r}: every depth needs at least one child")
    if len(branching) > MAX_SHAPE_DEPTH or any(b > MAX_SHAPE_WIDTH for b in branching):
        raise TreeError(f"bad tree shape: at most {MAX_SHAPE_DEPTH} depths of at most "
                        f"{MAX_SHAPE_WIDTH} children")
    return branching


def static_tree_size(branching: Sequence[int]) -> int:
    """Number of nodes (root included) of the full tree with this branching."""
    total, width = 1, 1
    for b in branching:
        width *= b
        total += width
    return total
