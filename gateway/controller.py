"""Per-step speculation control from measured costs (DESIGN "Continuous batching and load
control"): speculation must never make throughput worse than plain decoding.

Each step the orchestrator asks whether the sequences on the gateway's *default* speculation
should speculate (requests that name their own settings are always honoured). The controller
keeps, from the steps it has seen,
  * verify latency by total tree nodes in the batch (bucketed to powers of two; on a CPU one
    extra node can cost ~50% of a step, on a GPU almost nothing),
  * draft latency per speculative step by the number of drafting sequences (bucketed alike),
  * accepted tokens per sequence-step for each drafter,
and speculates when (batch + expected accepted) / (verify(nodes) + draft(batch)) beats
batch / verify(batch), the expected accepted tokens summed over the drafting sequences.

Acceptance depends on the text far more than on the drafter (the shipped EAGLE head accepts
1.7 tokens a step on JSON and 0.3 on translations), so each sequence's expectation starts at
its drafter's average and moves to its own record as that grows: ``(PRIOR_STEPS * drafter +
accepted) / (PRIOR_STEPS + steps)``, a mean shrunk toward the prior. At batch 1 speculation is
then switched per request, and a request it does not pay for stops paying for it.

Latencies are the median of the last few samples, not a running mean: the first calls of a
path are slow (lazy allocation, kernel builds, caches), and one such sample in a mean can hold
speculation off for hundreds of steps, because a rejected option is only sampled again at a
re-test. Acceptance stays a moving average: its mean is what the throughput depends on.

Unknown costs are explored first (unless the costs of smaller sizes already show that
speculation loses: costs only grow with size), and a decision is re-tested after
``explore_every`` steps so that changed load or acceptance is noticed. A re-test costs a step
of the losing option (at batch 8 on a CPU a speculative step costs ~3 plain ones, plus the
drafter's catch-up), so each re-test that confirms the decision doubles the interval (or
multiplies it by 8 where one option wins by a wide margin), up to ``max_explore_every``; a
decision that flips resets it.
"""
from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence


PRIOR_STEPS = 4  # weight of the drafter-wide acceptance in a sequence's expectation, in steps
WIDE_MARGIN = (0.8, 1.25)  # speculative / plain rate outside this: re-test intervals grow 8x, not 2x


class SeqRecord(NamedTuple):
    """What one sequence that would draft has shown so far on the default speculation."""

    drafter: str
    accepted: int = 0  # draft tokens accepted over its drafting steps
    steps: int = 0  # its drafting steps


def _bucket(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass
class _Ema:
    alpha: float
    value: float | None = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)


class _RecentMedian:
    """The median of the last ``size`` samples: a few outliers (a cold first call) do not move it."""

    def __init__(self, size: int = 7) -> None:
        self.samples: deque[float] = deque(maxlen=size)

    def add(self, x: float) -> None:
        self.samples.append(x)

    @property
    def value(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def _latency(table: dict[int, _RecentMedian], n: int) -> float | None:
    entry = table.get(_bucket(n))
    return None if entry is None else entry.value


def _floor(table: dict[int, _RecentMedian], n: int) -> float | None:
    """A lower bound on the latency at size ``n``: that of the largest measured size below it
    (verifying more nodes, or drafting for more sequences, never costs less)."""
    below = [b for b in table if b <= _bucket(n)]
    return table[max(below)].value if below else None


@dataclass
class SpeculationController:
    alpha: float = 0.2
    explore_every: int = 16
    max_explore_every: int = 512
    verify_s: dict[int, _RecentMedian] = field(default_factory=dict)  # nodes bucket -> seconds
    draft_s: dict[int, _RecentMedian] = field(default_factory=dict)  # drafting seqs bucket -> seconds
    accepted: dict[str, _Ema] = field(default_factory=dict)  # drafter -> tokens / seq-step
    _since_explore: int = 0
    _interval: int = 0  # the current re-test interval (0: explore_every)
    _before_retest: bool | None = None  # the decision a re-test just contradicted

    def expected_accepted(self, seq: SeqRecord) -> float | None:
        """Draft tokens ``seq`` should get accepted per step (None: its drafter is unmeasured)."""
        drafter = self.accepted.get(seq.drafter)
        if drafter is None:
            return None
        return (PRIOR_STEPS * drafter.value + seq.accepted) / (PRIOR_STEPS + seq.steps)

    def should_speculate(self, batch: int, spec_nodes: int, seqs: Sequence[SeqRecord]) -> bool:
        """``batch`` sequences; ``spec_nodes`` total tree nodes if the default ones speculate;
        ``seqs``: each sequence that would draft."""
        plain_t, spec_t = _latency(self.verify_s, batch), _latency(self.verify_s, spec_nodes)
        draft_t = _latency(self.draft_s, len(seqs))
        gains = [self.expected_accepted(s) for s in seqs]
        if plain_t is None:
            return False  # measure plain decoding first: it is the floor we must not go under
        if spec_t is None or draft_t is None or None in gains:
            # Explore the unknown cost, unless even the floors of the costs say speculation
            # loses (a batch size not seen yet, on a machine where smaller ones already lose):
            # each exploration costs a speculative step.
            floor = _floor(self.verify_s, spec_nodes)
            if None in gains or floor is None:
                return True
            return (batch + sum(gains)) / (floor + (_floor(self.draft_s, len(seqs)) or 0.0)) > batch / plain_t
        gain = sum(gains)
        ratio = (batch + gain) / (spec_t + draft_t) / (batch / plain_t)  # speculative / plain rate
        choice = ratio > 1.0
        interval = self._interval or self.explore_every
        if self._before_retest is not None:  # the first decision after a re-test
            confirmed = choice == self._before_retest
            # A re-test of a speculative step pays a catch-up over every token since the last
            # one (the drafter's prefill, for sequences that never drafted): where the decision
            # wins by a wide margin, re-test it much less often.
            growth = 2 if WIDE_MARGIN[0] < ratio < WIDE_MARGIN[1] else 8
            self._interval = min(growth * interval, self.max_explore_every) if confirmed else self.explore_every
            self._before_retest = None
        self._since_explore += 1
        if self._since_explore >= (self._interval or self.explore_every):
            self._since_explore = 0
            self._before_retest = choice
            return not choice  # re-test the option not taken
        return choice

    def observe_verify(self, nodes: int, seconds: float) -> None:
        self.verify_s.setdefault(_bucket(nodes), _RecentMedian()).add(seconds)

    def observe_draft(self, sequences: int, seconds: float) -> None:
        """One steady-state ``Propose`` for ``sequences`` drafting sequences."""
        self.draft_s.setdefault(_bucket(sequences), _RecentMedian()).add(seconds)

    def observe_accepted(self, drafter: str, tokens: int) -> None:
        self.accepted.setdefault(drafter, _Ema(self.alpha)).add(tokens)
