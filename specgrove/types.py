"""One dataclass per wire concept (torch-free), each with ``from_pb`` / ``to_pb``.

These are the objects that cross every service boundary; protobuf messages never leave the
servicers and clients. One object per phase of a step: ``PrefillRequest`` -> ``PrefillResult``,
``ProposeRequest`` -> ``ProposeResult`` (a tree per sequence) -> ``VerifyItem`` ->
``VerifyResult``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from specgrove.errors import InvalidRequest
from specgrove.pb.v1 import common_pb2, draft_pb2, target_pb2
from specgrove.sampling_params import SamplingParams
from specgrove.tree import TokenTree, static_tree_size


@dataclass(frozen=True)
class TokenLogprob:
    """An emitted token's log-probability and the most likely tokens at its position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, log-probability), most likely first

    @staticmethod
    def from_pb(msg: common_pb2.TokenLogprob) -> "TokenLogprob":
        return TokenLogprob(msg.token_id, msg.logprob, tuple(zip(msg.top_ids, msg.top_logprobs)))

    def to_pb(self) -> common_pb2.TokenLogprob:
        return common_pb2.TokenLogprob(token_id=self.token_id, logprob=self.logprob,
                                       top_ids=[t for t, _ in self.top], top_logprobs=[p for _, p in self.top])


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

    def __post_init__(self) -> None:
        if any(b < 1 for b in self.branching):
            raise InvalidRequest("tree", "every depth of a static shape needs >= 1 child")
        if self.max_nodes < 1 or self.max_depth < 0 or self.top_k < 1:
            raise InvalidRequest("tree", "need max_nodes >= 1, max_depth >= 0, top_k >= 1")

    @staticmethod
    def off() -> "TreeBudget":
        return TreeBudget()

    @property
    def is_static(self) -> bool:
        return bool(self.branching)

    @property
    def depth(self) -> int:
        if self.branching:
            return len(self.branching)
        return self.max_depth if self.max_nodes > 1 else 0

    @property
    def speculates(self) -> bool:
        """False for a budget that can only give root-only trees (plain decoding)."""
        return self.depth > 0

    @property
    def node_bound(self) -> int:
        """The most nodes (root included) a tree within this budget can have."""
        return static_tree_size(self.branching) if self.is_static else self.max_nodes

    def clamped(self, room_tokens: int, room_context: int, max_nodes: int) -> "TreeBudget":
        """Shrink the budget so that a step never drafts past the request's remaining tokens
        (``room_tokens``), the context (``room_context`` free positions) or the verifier's
        node limit. The tree's root is the pending token, so depth d needs d + 1 of each."""
        depth = max(0, min(self.depth, room_tokens - 1, room_context - 1))
        if self.is_static:
            branching = self.branching[:depth]
            while branching and static_tree_size(branching) > min(room_context, max_nodes):
                branching = branching[:-1]
            return replace(self, branching=branching)
        nodes = max(1, min(self.max_nodes, room_context, max_nodes))
        return replace(self, max_depth=depth, max_nodes=nodes)

    @staticmethod
    def from_pb(msg: common_pb2.TreeBudget) -> "TreeBudget":
        return TreeBudget(tuple(msg.branching), max(msg.max_nodes, 1), msg.max_depth,
                          msg.top_k or 4)

    def to_pb(self) -> common_pb2.TreeBudget:
        return common_pb2.TreeBudget(branching=self.branching, max_nodes=self.max_nodes,
                                     max_depth=self.max_depth, top_k=self.top_k)


# Feature rows held for one sequence while no drafter consumes them (gateway and draft service):
# a feature drafter then starts from this suffix, which costs it acceptance, never correctness.
MAX_FEATURE_ROWS = 4096


@dataclass(frozen=True)
class Features:
    """Target hidden states for feature drafters (EAGLE): ``rows`` tokens x ``width`` values
    (the chosen layers side by side) as little-endian bfloat16 bytes, row-major. Opaque to the
    gateway, which only forwards and concatenates them (no torch needed)."""

    rows: int
    width: int
    data: bytes  # rows * width * 2 bytes

    def __post_init__(self) -> None:
        if self.rows < 0 or self.width < 0 or len(self.data) != 2 * self.rows * self.width:
            raise InvalidRequest("features", f"{len(self.data)} bytes do not hold {self.rows} x "
                                 f"{self.width} bfloat16 values")

    @staticmethod
    def empty(width: int = 0) -> "Features":
        return Features(0, width, b"")

    @staticmethod
    def concat(parts: "list[Features]") -> "Features":
        parts = [p for p in parts if p.rows]
        if not parts:
            return Features.empty()
        if len({p.width for p in parts}) != 1:
            raise InvalidRequest("features", "feature rows of different widths")
        return Features(sum(p.rows for p in parts), parts[0].width, b"".join(p.data for p in parts))

    def tail(self, rows: int) -> "Features":
        """The last ``rows`` rows."""
        rows = min(rows, self.rows)
        return Features(rows, self.width, self.data[len(self.data) - 2 * rows * self.width:])

    @staticmethod
    def from_tensor(t) -> "Features":  # [rows, width] -> bfloat16 bytes
        import torch

        t = t.detach().to(torch.bfloat16).contiguous().cpu()
        return Features(t.shape[0], t.shape[1], t.view(torch.int16).numpy().tobytes())

    def to_tensor(self):  # [rows, width] bfloat16
        import numpy as np
        import torch

        raw = np.frombuffer(self.data, dtype=np.int16).reshape(self.rows, self.width)
        return torch.from_numpy(raw.copy()).view(torch.bfloat16)

    @staticmethod
    def from_pb(msg: common_pb2.Features) -> "Features":
        return Features(msg.rows, msg.width, msg.data)

    def to_pb(self) -> common_pb2.Features:
        return common_pb2.Features(rows=self.rows, width=self.width, data=self.data)


def _features_of(msg, field_name: str = "features") -> "Features | None":
    return Features.from_pb(getattr(msg, field_name)) if msg.HasField(field_name) else None


@dataclass(frozen=True)
class PrefillRequest:
    seq_id: int
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = SamplingParams()
    feature_layers: tuple[int, ...] = ()  # target layers whose hidden states the drafter needs
    num_output_tokens: int = 0  # the last ones of prompt_ids that are output (after preemption)

    @staticmethod
    def from_pb(msg: target_pb2.PrefillRequest) -> "PrefillRequest":
        return PrefillRequest(msg.seq_id, tuple(msg.prompt_ids), SamplingParams.from_pb(msg.sampling),
                              tuple(msg.feature_layers), msg.num_output_tokens)

    def to_pb(self) -> target_pb2.PrefillRequest:
        return target_pb2.PrefillRequest(seq_id=self.seq_id, prompt_ids=self.prompt_ids,
                                         sampling=self.sampling.to_pb(),
                                         feature_layers=self.feature_layers,
                                         num_output_tokens=self.num_output_tokens)


@dataclass(frozen=True)
class PrefillResult:
    seq_id: int
    first_token: int  # the pending token: sampled, not yet run through the target
    features: Features | None = field(default=None, compare=False)  # one row per prompt token
    first_logprob: TokenLogprob | None = field(default=None, compare=False)  # when asked for

    @staticmethod
    def from_pb(msg: target_pb2.PrefillResult) -> "PrefillResult":
        first = TokenLogprob.from_pb(msg.first_logprob) if msg.HasField("first_logprob") else None
        return PrefillResult(msg.seq_id, msg.first_token, _features_of(msg), first)

    def to_pb(self) -> target_pb2.PrefillResult:
        return target_pb2.PrefillResult(seq_id=self.seq_id, first_token=self.first_token,
                                        features=self.features.to_pb() if self.features else None,
                                        first_logprob=self.first_logprob.to_pb() if self.first_logprob else None)


@dataclass(frozen=True)
class DraftPrefill:
    """Registers a sequence with the draft service: its history so far."""

    seq_id: int
    token_ids: tuple[int, ...]  # prompt + generated tokens, the pending token last
    sampling: SamplingParams = SamplingParams()  # with the seed: for coupled drafting
    features: Features | None = field(default=None, compare=False)  # rows for token_ids[:-1] (or a suffix)

    @staticmethod
    def from_pb(msg: draft_pb2.DraftPrefill) -> "DraftPrefill":
        sampling = SamplingParams.from_pb(msg.sampling) if msg.HasField("sampling") else SamplingParams()
        return DraftPrefill(msg.seq_id, tuple(msg.token_ids), sampling, _features_of(msg))

    def to_pb(self) -> draft_pb2.DraftPrefill:
        return draft_pb2.DraftPrefill(seq_id=self.seq_id, token_ids=self.token_ids,
                                      sampling=self.sampling.to_pb(),
                                      features=self.features.to_pb() if self.features else None)


@dataclass(frozen=True)
class DraftInfo:
    vocab_size: int
    default_drafter: str
    num_sequences: int

    @staticmethod
    def from_pb(msg: draft_pb2.DraftInfo) -> "DraftInfo":
        return DraftInfo(msg.vocab_size, msg.default_drafter, msg.num_sequences)

    def to_pb(self) -> draft_pb2.DraftInfo:
        return draft_pb2.DraftInfo(**self.__dict__)


@dataclass(frozen=True)
class ProposeRequest:
    seq_id: int
    new_tokens: tuple[int, ...]  # tokens appended since the last call, pending token last
    budget: TreeBudget
    drafter: str = ""
    coupled: bool = True  # rank model drafts by the sequence's sampling noise
    features: Features | None = field(default=None, compare=False)  # one row per new token

    @staticmethod
    def from_pb(msg: draft_pb2.ProposeRequest) -> "ProposeRequest":
        coupled = msg.coupled if msg.HasField("coupled") else True
        return ProposeRequest(msg.seq_id, tuple(msg.new_tokens), TreeBudget.from_pb(msg.budget),
                              msg.drafter, coupled, _features_of(msg))

    def to_pb(self) -> draft_pb2.ProposeRequest:
        return draft_pb2.ProposeRequest(seq_id=self.seq_id, new_tokens=self.new_tokens,
                                        budget=self.budget.to_pb(), drafter=self.drafter,
                                        coupled=self.coupled,
                                        features=self.features.to_pb() if self.features else None)


@dataclass(frozen=True)
class ProposeResult:
    seq_id: int
    tree: TokenTree
    drafter: str  # the drafter that actually drafted (the effective setting)

    @staticmethod
    def from_pb(msg: draft_pb2.ProposeResult) -> "ProposeResult":
        return ProposeResult(msg.seq_id, TokenTree.from_pb(msg.tree), msg.drafter)

    def to_pb(self) -> draft_pb2.ProposeResult:
        return draft_pb2.ProposeResult(seq_id=self.seq_id, tree=self.tree.to_pb(),
                                       drafter=self.drafter)


@dataclass(frozen=True)
class VerifyItem:
    seq_id: int
    tree: TokenTree  # rooted at the sequence's pending token

    @staticmethod
    def from_pb(msg: target_pb2.VerifyItem) -> "VerifyItem":
        return VerifyItem(msg.seq_id, TokenTree.from_pb(msg.tree))

    def to_pb(self) -> target_pb2.VerifyItem:
        return target_pb2.VerifyItem(seq_id=self.seq_id, tree=self.tree.to_pb())


@dataclass(frozen=True)
class VerifyResult:
    seq_id: int
    accepted_tokens: tuple[int, ...]  # tree tokens accepted after the root, in path order
    bonus_token: int  # sampled by the target after the last accepted node: the new pending
    accepted_nodes: tuple[int, ...] = field(default=(), compare=False)  # their node indices
    features: Features | None = field(default=None, compare=False)  # root + accepted rows
    logprobs: tuple[TokenLogprob, ...] = field(default=(), compare=False)  # per new token, when asked for

    @property
    def new_tokens(self) -> tuple[int, ...]:
        """Tokens this step adds to the output: accepted + bonus (acceptance length tau)."""
        return self.accepted_tokens + (self.bonus_token,)

    @staticmethod
    def from_pb(msg: target_pb2.VerifyResult) -> "VerifyResult":
        return VerifyResult(msg.seq_id, tuple(msg.accepted_tokens), msg.bonus_token,
                            tuple(msg.accepted_nodes), _features_of(msg),
                            tuple(TokenLogprob.from_pb(x) for x in msg.logprobs))

    def to_pb(self) -> target_pb2.VerifyResult:
        return target_pb2.VerifyResult(
            seq_id=self.seq_id, accepted_tokens=self.accepted_tokens,
            bonus_token=self.bonus_token, accepted_nodes=self.accepted_nodes,
            features=self.features.to_pb() if self.features else None,
            logprobs=[x.to_pb() for x in self.logprobs],
        )


@dataclass(frozen=True)
class TargetInfo:
    model: str
    vocab_size: int
    max_model_len: int
    block_size: int
    total_blocks: int
    free_blocks: int
    tp_size: int
    eos_token_ids: tuple[int, ...]
    max_num_seqs: int
    max_tree_nodes: int
    dtype: str
    hidden_size: int = 0

    @staticmethod
    def from_pb(msg: target_pb2.TargetInfo) -> "TargetInfo":
        return TargetInfo(msg.model, msg.vocab_size, msg.max_model_len, msg.block_size,
                          msg.total_blocks, msg.free_blocks, msg.tp_size, tuple(msg.eos_token_ids),
                          msg.max_num_seqs, msg.max_tree_nodes, msg.dtype, msg.hidden_size)

    def to_pb(self) -> target_pb2.TargetInfo:
        return target_pb2.TargetInfo(**self.__dict__)


@dataclass(frozen=True)
class DrafterInfo:
    name: str
    kind: str
    spec: str
    is_default: bool
    feature_layers: tuple[int, ...] = ()  # target layers it needs features from (EAGLE heads)
    stats: dict[str, int] = field(default_factory=dict, compare=False)  # what it holds (suffix: tokens ...)

    @staticmethod
    def from_pb(msg: draft_pb2.DrafterInfo) -> "DrafterInfo":
        return DrafterInfo(msg.name, msg.kind, msg.spec, msg.is_default, tuple(msg.feature_layers),
                           dict(msg.stats))

    def to_pb(self) -> draft_pb2.DrafterInfo:
        return draft_pb2.DrafterInfo(**self.__dict__)
