"""One generation request inside the step loop: its settings, its state, and its event stream.

A job reports to its ``hooks`` (the gateway's metrics and tracing, ``gateway.observe``) when
tokens arrive and when it ends, whichever code path ends it. Stop handling (stop tokens,
``max_tokens``, stop strings) and the per-request speculation stats live here, once.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.shadow import ShadowTrack
from gateway.text import IncrementalDecoder, StopMatcher, TextCodec
from specgrove.sampling_params import SamplingParams
from specgrove.types import MAX_FEATURE_ROWS, Features, TokenLogprob, TreeBudget


@dataclass(frozen=True)
class JobSpec:
    """Everything a request asks for, validated by the API layer."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    drafter: str = ""  # "" = the draft service's default
    budget: TreeBudget = TreeBudget.off()
    adaptive: bool = False  # on the gateway's default speculation: the controller may skip it
    coupled: bool = True  # model drafts ranked by the request's sampling noise (never changes output)
    ignore_eos: bool = False  # keep generating past end-of-sequence tokens (up to max_tokens)
    stop_token_ids: frozenset[int] = frozenset()  # more tokens that end the request (not shown as text)
    shadow: tuple[str, ...] = ()  # drafters scored on this request without drafting for it
    shadow_budget: TreeBudget = TreeBudget.off()  # the tree a shadow drafter proposes within
    request_id: str = ""  # the response's id, for traces
    operation: str = "text_completion"  # or "chat" (the GenAI semantic conventions' names)


@dataclass(frozen=True)
class Delta:
    text: str
    token_ids: tuple[int, ...]
    accepted: int  # how many of token_ids came from accepted draft nodes
    # When the request asked for them: one per token of ``token_ids`` that is text (stop and
    # end-of-sequence tokens have none, as they have no text).
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" | "length"


@dataclass(frozen=True)
class Failed:
    status: int  # HTTP status (400, 429, 503, ...)
    message: str


Event = Delta | Finished | Failed


class JobHooks(Protocol):
    def tokens_added(self, job: "Job", count: int, gap_s: float) -> None:
        """``count`` tokens arrived ``gap_s`` after the previous ones (or after submission)."""

    def finished(self, job: "Job", event: "Finished | Failed") -> None:
        """The job ended (once)."""


@dataclass
class JobStats:
    steps: int = 0  # verify steps the request took part in
    drafted_tokens: int = 0  # tree nodes below the root, over all steps
    accepted_tokens: int = 0  # draft tokens the target accepted (bonus tokens excluded)
    max_batch_size: int = 0  # the largest batch the request was verified in
    drafter: str = ""  # the drafter of its last step that drafted anything

    def record(self, drafted: int, accepted: int, batch_size: int, drafter: str) -> None:
        self.steps += 1
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        self.max_batch_size = max(self.max_batch_size, batch_size)
        if drafted:
            self.drafter = drafter

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens per verify step (accepted + bonus): tau."""
        return (self.accepted_tokens + self.steps) / self.steps if self.steps else 0.0


class Job:
    def __init__(self, seq_id: int, spec: JobSpec, codec: TextCodec | None,
                 stop_ids: frozenset[int]) -> None:
        """``codec`` None: tokens only, no text (callers that never look at text)."""
        self.seq_id = seq_id
        self.spec = spec
        self.stop_ids = (frozenset() if spec.ignore_eos else stop_ids) | spec.stop_token_ids
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.tokens: list[int] = []
        self.stats = JobStats()
        self.adaptive_steps = 0  # drafting steps on the default speculation (the load controller's record)
        self.adaptive_accepted = 0  # draft tokens accepted in those
        self.cancelled = False
        self.done = False
        self.new_tokens: tuple[int, ...] = ()  # since the last Propose (the draft's catch-up)
        self.draft_synced = False  # the draft service holds this sequence's history
        self.feature_layers: tuple[int, ...] = ()  # target features its drafter needs (EAGLE)
        # Target features the draft has not had, in arrival order: joined only when a Propose
        # takes them (while the load controller keeps speculation off they pile up, and joining
        # them every step copied the whole pile -- prompt rows included -- per job per step).
        self._unsent: list[Features] = []
        self._unsent_rows = 0
        self.shadows: list[ShadowTrack] = []  # shadow drafters following it (gateway.shadow)
        self.shadows_scored = asyncio.Event()  # set once the step loop is done with it
        self.created = time.monotonic()
        self.first_token_at: float | None = None  # monotonic times, for TTFT / TPOT
        self.last_token_at: float | None = None
        self.hooks: JobHooks | None = None
        self.span: Any = None  # the request's trace span while tracing is on
        self._decoder = IncrementalDecoder(codec) if codec is not None else None
        self._stops = StopMatcher(spec.stop)

    def cancel(self) -> None:
        """The client went away; the step loop releases the sequence at the next step."""
        self.cancelled = True

    def tokens_taken(self, tokens: tuple[int, ...]) -> int:
        """How many of a step's tokens the job keeps: up to a stop token or max_tokens."""
        for i, tok in enumerate(tokens):
            if tok in self.stop_ids or len(self.tokens) + i + 1 >= self.spec.max_tokens:
                return i + 1
        return len(tokens)

    def add_tokens(self, tokens: tuple[int, ...], accepted: int,
                   logprobs: tuple[TokenLogprob, ...] = ()) -> bool:
        """Append a step's tokens (with their log-probabilities when asked for), stream their
        text; False once the job has finished."""
        take = list(tokens[:self.tokens_taken(tokens)])
        reason = ""
        if take and take[-1] in self.stop_ids:
            reason = "stop"
        elif len(self.tokens) + len(take) >= self.spec.max_tokens:
            reason = "length"
        self.tokens.extend(take)
        if take:
            self._timestamp(len(take))
        out, hit_stop = self._text(take, final=bool(reason))
        if hit_stop:
            reason = "stop"
        kept = tuple(lp for tok, lp in zip(take, logprobs) if tok not in self.stop_ids)
        self.events.put_nowait(Delta(out, tuple(take), min(accepted, len(take)), kept))
        if reason:
            self.finish(Finished(reason))
        return not reason

    def add_features(self, features: Features | None) -> None:
        """Keep target features for the draft service until the next Propose carries them."""
        if features is None or not features.rows:
            return
        self._unsent.append(features)
        self._unsent_rows += features.rows
        while self._unsent_rows - self._unsent[0].rows >= MAX_FEATURE_ROWS:  # out of the window
            self._unsent_rows -= self._unsent.pop(0).rows

    def take_features(self) -> Features | None:
        """The held features (the last MAX_FEATURE_ROWS rows), now handed over; None if none."""
        if not self._unsent:
            return None
        features = Features.concat(self._unsent).tail(MAX_FEATURE_ROWS)
        self.drop_features()
        return features

    def drop_features(self) -> None:
        self._unsent, self._unsent_rows = [], 0

    def _text(self, tokens: list[int], final: bool) -> tuple[str, bool]:
        """The text the new tokens add that is safe to send, and whether a stop string hit."""
        if self._decoder is None:
            return "", False
        text = self._decoder.push([t for t in tokens if t not in self.stop_ids])
        if final:
            text += self._decoder.flush()
        return self._stops.feed(text, final)

    def _timestamp(self, count: int) -> None:
        now = time.monotonic()
        gap = now - (self.last_token_at if self.last_token_at is not None else self.created)
        self.last_token_at = now
        if self.first_token_at is None:
            self.first_token_at = now
        if self.hooks is not None:
            self.hooks.tokens_added(self, count, gap)

    def finish(self, event: Finished | Failed) -> None:
        if not self.done:
            self.done = True
            if self.hooks is not None:
                self.hooks.finished(self, event)
            self.events.put_nowait(event)

    @property
    def history(self) -> list[int]:
        """Prompt plus every generated token: what a re-prefill needs."""
        return list(self.spec.prompt_ids) + self.tokens
