"""One generation request inside the gateway: its settings, its state, and its event stream.

A job reports to its ``hooks`` (the gateway's metrics and tracing, ``gateway.observe``) when
tokens arrive and when it ends, whichever code path ends it.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.text import IncrementalDecoder, StopMatcher, TextCodec
from specgrove.types import SamplingParams, TreeBudget


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
    request_id: str = ""  # the response's id, for traces
    operation: str = "text_completion"  # or "chat" (the GenAI semantic conventions' names)


@dataclass(frozen=True)
class Delta:
    text: str
    token_ids: tuple[int, ...]
    accepted: int  # how many of token_ids came from accepted draft nodes


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
    steps: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    max_batch_size: int = 0
    effective_drafter: str = ""

    @property
    def mean_acceptance_length(self) -> float:
        return (self.accepted_tokens + self.steps) / self.steps if self.steps else 0.0


class Job:
    def __init__(self, seq_id: int, spec: JobSpec, codec: TextCodec, stop_ids: frozenset[int]) -> None:
        self.seq_id = seq_id
        self.spec = spec
        self.stop_ids = stop_ids
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.tokens: list[int] = []
        self.stats = JobStats()
        self.cancelled = False
        self.done = False
        self.new_tokens: tuple[int, ...] = ()  # since the last Propose (the draft's catch-up)
        self.draft_synced = False  # the draft service holds this sequence's history
        self.created = time.monotonic()
        self.first_token_at: float | None = None  # monotonic times, for TTFT / TPOT
        self.last_token_at: float | None = None
        self.hooks: JobHooks | None = None
        self.span: Any = None  # the request's trace span while tracing is on
        self._decoder = IncrementalDecoder(codec)
        self._stops = StopMatcher(spec.stop)

    def cancel(self) -> None:
        """The client went away; the step loop releases the sequence at the next step."""
        self.cancelled = True

    def add_tokens(self, tokens: tuple[int, ...], accepted: int) -> bool:
        """Append a step's tokens, stream their text; False once the job has finished."""
        take: list[int] = []
        reason = ""
        for tok in tokens:
            take.append(tok)
            if tok in self.stop_ids:
                reason = "stop"
                break
            if len(self.tokens) + len(take) >= self.spec.max_tokens:
                reason = "length"
                break
        self.tokens.extend(take)
        if take:
            self._timestamp(len(take))
        text = self._decoder.push([t for t in take if t not in self.stop_ids])
        if reason:
            text += self._decoder.flush()
        out, hit_stop = self._stops.feed(text, final=bool(reason))
        if hit_stop:
            reason = "stop"
        self.events.put_nowait(Delta(out, tuple(take), min(accepted, len(take))))
        if reason:
            self.finish(Finished(reason))
        return not reason

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
