"""The speculation controller picks the faster option from measured costs."""
from __future__ import annotations

from gateway.controller import SpeculationController


def _cpu_like(gain: float) -> SpeculationController:
    c = SpeculationController(explore_every=1000)
    c.observe_verify(1, 0.031)  # measured on this project's 2-core CPU (SmolLM2, float32)
    c.observe_verify(8, 0.061)
    c.observe_draft(0.002)
    c.observe_accepted("", gain)
    return c


def test_measures_plain_first_then_explores_speculation():
    c = SpeculationController()
    assert not c.should_speculate(1, 8, [""])  # plain cost unknown: measure the floor first
    c.observe_verify(1, 0.03)
    assert c.should_speculate(1, 8, [""])  # speculative cost unknown: try it


def test_skips_speculation_that_would_lose_and_keeps_what_wins():
    # 1 + 0.3 tokens in 63 ms loses to 1 token in 31 ms; 1 + 2.5 tokens in 63 ms wins.
    assert not _cpu_like(0.3).should_speculate(1, 8, [""])
    assert _cpu_like(2.5).should_speculate(1, 8, [""])


def test_unknown_drafter_is_explored_and_decisions_are_retested():
    c = _cpu_like(0.3)
    assert c.should_speculate(1, 8, ["", "small"])  # no acceptance estimate for "small" yet
    c = _cpu_like(0.3)
    c.explore_every = 4
    choices = [c.should_speculate(1, 8, [""]) for _ in range(4 + 8 + 16)]
    # A re-test after 4 decisions; each one that confirms the decision doubles the interval.
    assert [i for i, x in enumerate(choices) if x] == [3, 11, 27]
    c.observe_accepted("", 3.0)  # acceptance jumps: speculation now wins
    for _ in range(10):
        c.observe_accepted("", 3.0)
    c.max_explore_every = 8
    c._since_explore = 0
    assert c.should_speculate(1, 8, [""])


def test_emas_follow_changes():
    c = _cpu_like(0.3)
    for _ in range(30):  # acceptance improves (e.g. the text turned repetitive)
        c.observe_accepted("", 3.0)
    assert c.should_speculate(1, 8, [""])
