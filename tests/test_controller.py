"""The speculation controller picks the faster option from measured costs."""
from __future__ import annotations

from gateway.controller import PRIOR_STEPS, SeqRecord, SpeculationController

DEFAULT = SeqRecord("")  # a new sequence on the default drafter


def _cpu_like(gain: float) -> SpeculationController:
    c = SpeculationController(explore_every=1000)
    c.observe_verify(1, 0.031)  # measured on this project's 2-core CPU (SmolLM2, float32)
    c.observe_verify(8, 0.061)
    c.observe_draft(1, 0.002)
    c.observe_accepted("", gain)
    return c


def test_measures_plain_first_then_explores_speculation():
    c = SpeculationController()
    assert not c.should_speculate(1, 8, [DEFAULT])  # plain cost unknown: measure the floor first
    c.observe_verify(1, 0.03)
    assert c.should_speculate(1, 8, [DEFAULT])  # speculative cost unknown: try it


def test_skips_speculation_that_would_lose_and_keeps_what_wins():
    # 1 + 0.3 tokens in 63 ms loses to 1 token in 31 ms; 1 + 2.5 tokens in 63 ms wins.
    assert not _cpu_like(0.3).should_speculate(1, 8, [DEFAULT])
    assert _cpu_like(2.5).should_speculate(1, 8, [DEFAULT])


def test_unknown_drafter_is_explored_and_decisions_are_retested():
    c = _cpu_like(0.3)
    assert c.should_speculate(1, 8, [DEFAULT, SeqRecord("small")])  # no acceptance estimate for "small" yet
    c = _cpu_like(0.8)  # loses narrowly: 1.8 tokens in 63 ms against 1 in 31 ms
    c.explore_every = 4
    choices = [c.should_speculate(1, 8, [DEFAULT]) for _ in range(4 + 8 + 16)]
    # A re-test after 4 decisions; each one that confirms the decision doubles the interval.
    assert [i for i, x in enumerate(choices) if x] == [3, 11, 27]
    wide = _cpu_like(0.3)  # loses by a wide margin (0.64x): the interval grows 8x
    wide.explore_every = 4
    choices = [wide.should_speculate(1, 8, [DEFAULT]) for _ in range(40)]
    assert [i for i, x in enumerate(choices) if x] == [3, 35]
    c.observe_accepted("", 3.0)  # acceptance jumps: speculation now wins
    for _ in range(10):
        c.observe_accepted("", 3.0)
    c.max_explore_every = 8
    c._since_explore = 0
    assert c.should_speculate(1, 8, [DEFAULT])


def test_estimates_follow_changes():
    c = _cpu_like(0.3)
    for _ in range(30):  # acceptance improves (e.g. the text turned repetitive)
        c.observe_accepted("", 3.0)
    assert c.should_speculate(1, 8, [DEFAULT])


def test_a_cold_first_sample_does_not_hold_speculation_off():
    """The first draft and verify calls of a path are slow (allocation, caches): one such sample
    must not outweigh the steady state, which the median of recent samples reflects at once."""
    c = SpeculationController(explore_every=1000)
    c.observe_verify(1, 0.020)
    c.observe_verify(8, 0.900)  # cold
    c.observe_draft(1, 2.000)  # cold
    c.observe_accepted("", 1.1)
    for _ in range(2):
        c.observe_verify(8, 0.022)
        c.observe_draft(1, 0.012)
    # steady state: 2.1 tokens per 34 ms beats 1 token per 20 ms
    assert c.should_speculate(1, 8, [DEFAULT])


def test_expected_gain_is_summed_over_the_drafting_sequences():
    """At batch 4 each drafting sequence adds its own accepted tokens: 4 + 4 x 1.0 tokens in
    120 ms beat 4 in 90 ms, though 4 + 1.0 would not."""
    c = SpeculationController(explore_every=1000)
    c.observe_verify(4, 0.090)
    c.observe_verify(32, 0.110)
    c.observe_draft(4, 0.010)
    c.observe_accepted("", 1.0)
    assert c.should_speculate(4, 32, [DEFAULT] * 4)
    c.observe_draft(2, 0.010)
    assert c.should_speculate(4, 18, [DEFAULT] * 2)  # two draft: 4 + 2 tokens in 120 ms
    c.observe_verify(8, 0.110)
    c.observe_draft(1, 0.010)
    assert not c.should_speculate(4, 8, [DEFAULT])  # one drafts: 4 + 1 tokens in 120 ms lose


def test_draft_cost_is_kept_by_batch_size():
    """Drafting for 8 sequences costs more than for 1: each size is measured on its own."""
    c = SpeculationController(explore_every=1000)
    c.observe_verify(1, 0.020)
    c.observe_verify(8, 0.024)
    c.observe_draft(1, 0.008)
    c.observe_accepted("", 1.0)
    assert c.should_speculate(1, 8, [DEFAULT])
    c.observe_verify(8, 0.040)
    c.observe_verify(64, 0.050)
    assert c.should_speculate(8, 64, [DEFAULT] * 8)  # draft cost at 8 unknown: measure it
    c.observe_draft(8, 0.300)
    assert not c.should_speculate(8, 64, [DEFAULT] * 8)


def test_each_sequence_is_judged_by_its_own_acceptance_as_it_grows():
    """The drafter averages 1.1 accepted tokens a step, where speculation pays (2.1 tokens in
    34 ms against 1 in 20 ms). A request whose text the drafter cannot predict (a translation)
    soon shows its own record and stops speculating; a new one starts from the average."""
    c = SpeculationController(explore_every=1000)
    c.observe_verify(1, 0.020)
    c.observe_verify(8, 0.022)
    c.observe_draft(1, 0.012)
    c.observe_accepted("", 1.1)
    assert c.should_speculate(1, 8, [SeqRecord("", accepted=0, steps=0)])
    assert c.should_speculate(1, 8, [SeqRecord("", accepted=1, steps=2)])  # two poor steps: too early
    assert not c.should_speculate(1, 8, [SeqRecord("", accepted=2, steps=12)])
    assert c.expected_accepted(SeqRecord("", 2, 12)) == (PRIOR_STEPS * 1.1 + 2) / (PRIOR_STEPS + 12)
    assert c.should_speculate(1, 8, [SeqRecord("", accepted=30, steps=12)])


def test_a_new_batch_size_is_not_explored_where_smaller_costs_already_lose():
    """Exploring costs a speculative step. At batch 8 the tree verify is unmeasured, but the
    largest measured size below it (32 nodes, 90 ms) already makes 8 + 8 x 0.5 tokens lose to
    8 plain ones in 40 ms: no exploration. Where the floor would win, the cost is measured."""
    c = SpeculationController(explore_every=1000)
    c.observe_verify(8, 0.040)
    c.observe_verify(32, 0.090)
    c.observe_draft(4, 0.010)
    c.observe_accepted("", 0.5)
    assert not c.should_speculate(8, 64, [DEFAULT] * 8)
    for _ in range(20):
        c.observe_accepted("", 3.0)  # with these gains even the floor might win: measure
    assert c.should_speculate(8, 64, [DEFAULT] * 8)
