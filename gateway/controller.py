"""Per-step speculation control from measured costs (DESIGN "Continuous batching and load
control"): speculation must never make throughput worse than plain decoding.

Each step the orchestrator asks whether the sequences on the gateway's *default* speculation
should speculate (requests that name their own settings are always honoured). The controller
keeps exponential moving averages of
  * verify latency by total tree nodes in the batch (bucketed to powers of two; on a CPU one
    extra node costs ~55% of a step, on a GPU almost nothing),
  * draft latency per speculative step,
  * accepted tokens per sequence-step for each drafter,
and speculates when (batch + expected accepted) / (verify(nodes) + draft) beats
batch / verify(batch). Unknown costs are explored first, and a decision is re-tested after
``explore_every`` steps so that changed load or acceptance is noticed. A re-test costs a step
of the losing option (at batch 8 on a CPU a speculative step costs ~3 plain ones), so each
re-test that confirms the decision doubles the interval, up to ``max_explore_every``; a
decision that flips resets it.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def _bucket(nodes: int) -> int:
    return 1 << max(0, nodes - 1).bit_length()


@dataclass
class _Ema:
    alpha: float
    value: float | None = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)


@dataclass
class SpeculationController:
    alpha: float = 0.2
    explore_every: int = 16
    max_explore_every: int = 512
    verify_s: dict[int, _Ema] = field(default_factory=dict)  # nodes bucket -> seconds
    draft_s: _Ema = field(default_factory=lambda: _Ema(0.2))
    accepted: dict[str, _Ema] = field(default_factory=dict)  # drafter -> tokens / seq-step
    _since_explore: int = 0
    _interval: int = 0  # the current re-test interval (0: explore_every)
    _before_retest: bool | None = None  # the decision a re-test just contradicted

    def _verify(self, nodes: int) -> float | None:
        ema = self.verify_s.get(_bucket(nodes))
        return None if ema is None else ema.value

    def should_speculate(self, batch: int, spec_nodes: int, drafters: list[str]) -> bool:
        """``batch`` sequences; ``spec_nodes`` total tree nodes if the default ones speculate."""
        plain_t, spec_t = self._verify(batch), self._verify(spec_nodes)
        gains = [self.accepted[d].value for d in drafters if d in self.accepted]
        if plain_t is None:
            return False  # measure plain decoding first: it is the floor we must not go under
        if spec_t is None or len(gains) < len(drafters) or self.draft_s.value is None:
            return True
        spec_rate = (batch + sum(gains)) / (spec_t + self.draft_s.value)
        choice = spec_rate > batch / plain_t
        interval = self._interval or self.explore_every
        if self._before_retest is not None:  # the first decision after a re-test
            confirmed = choice == self._before_retest
            self._interval = min(2 * interval, self.max_explore_every) if confirmed else self.explore_every
            self._before_retest = None
        self._since_explore += 1
        if self._since_explore >= (self._interval or self.explore_every):
            self._since_explore = 0
            self._before_retest = choice
            return not choice  # re-test the option not taken
        return choice

    def observe_verify(self, nodes: int, seconds: float) -> None:
        self.verify_s.setdefault(_bucket(nodes), _Ema(self.alpha)).add(seconds)

    def observe_draft(self, seconds: float) -> None:
        self.draft_s.add(seconds)

    def observe_accepted(self, drafter: str, tokens: int) -> None:
        self.accepted.setdefault(drafter, _Ema(self.alpha)).add(tokens)
