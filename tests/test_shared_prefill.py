"""Equal prompts in one prefill batch (the n choices of a request) run one forward:

- the target's forward sees each distinct prompt once; the twins get a copy of its KV;
- every sequence's tokens equal those of the same request prefilled alone (float64, greedy and
  seeded, speculation on), so the copy is exact and each twin samples with its own seed;
- features for a feature drafter are the source's, and no KV block leaks;
- through the orchestrator, requests with one prompt (as a request's ``n`` choices are) admitted
  together run one prompt forward.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from draft_service.drafters.ngram import NgramDrafter
from draft_service.engine import DraftEngine
from specgrove.sampling_params import SamplingParams
from specgrove.types import PrefillRequest, TreeBudget
from tests.helpers import generate, request, target_engine

PROMPT_A = (5, 9, 14, 3, 22, 7, 31, 9, 14, 3)  # 10 tokens: blocks of 4 end part-full
PROMPT_B = (8, 2, 40, 41, 42, 8, 2, 40)
SEEDED = SamplingParams(temperature=0.9, top_p=0.95, seed=11)


@pytest.fixture()
def target(tiny_dirs):
    return target_engine(tiny_dirs["llama"], block_size=4, shuffle_seed=5)


def _count_forwards(engine, monkeypatch) -> list[list[int]]:
    seen: list[list[int]] = []
    run = engine.runner.run

    def counting(items, **kw):
        seen.append([len(i.token_ids) for i in items])
        return run(items, **kw)

    monkeypatch.setattr(engine.runner, "run", counting)
    return seen


def test_equal_prompts_run_one_forward_and_copy_the_kv(target, monkeypatch):
    reqs = [PrefillRequest(1, PROMPT_A, SamplingParams()), PrefillRequest(2, PROMPT_B, SEEDED),
            PrefillRequest(3, PROMPT_A, replace(SEEDED, seed=12)), PrefillRequest(4, PROMPT_A, SEEDED),
            PrefillRequest(5, PROMPT_A, SamplingParams(), feature_layers=(0, 1))]
    alone = []
    for r in reqs:  # each prefilled by itself: the reference
        alone.append(target.prefill([replace(r, seq_id=100 + r.seq_id)])[0])
        target.release(100 + r.seq_id)
    free = target.runner.blocks.num_free_blocks
    seen = _count_forwards(target, monkeypatch)
    together = target.prefill(reqs)
    # A and B once each; A with feature layers is another forward (it captures features).
    assert seen == [[len(PROMPT_A), len(PROMPT_B), len(PROMPT_A)]]
    assert [r.first_token for r in together] == [r.first_token for r in alone]
    assert together[4].features.to_tensor().equal(alone[4].features.to_tensor())
    for r in reqs:  # the twins' KV equals a forward's: same committed length, same cache rows
        assert target.committed_len(r.seq_id) == len(r.prompt_ids)
    cache = target.runner.executor.kv_cache
    slots = lambda s: target.runner.blocks.slots(s, 0, len(PROMPT_A))
    for twin in (3, 4):
        assert cache.flatten(2, 3)[:, :, slots(twin)].equal(cache.flatten(2, 3)[:, :, slots(1)])
    for r in reqs:
        target.release(r.seq_id)
    assert target.runner.blocks.num_free_blocks == free


@pytest.mark.parametrize("budget", [TreeBudget.off(), TreeBudget(branching=(2, 1, 1))], ids=["plain", "ngram"])
def test_choices_prefilled_together_equal_requests_served_alone(target, budget, monkeypatch):
    drafts = DraftEngine.of({"ngram": NgramDrafter()}, "ngram")
    drafter = "ngram" if budget.speculates else ""
    specs = [request(PROMPT_A, 12, replace(SEEDED, seed=s), budget=budget, drafter=drafter) for s in (1, 2, 3)]
    specs.append(request(PROMPT_A, 12, SamplingParams(), budget=budget, drafter=drafter))
    alone = [generate(target, drafts, [s])[0].token_ids for s in specs]
    free = target.runner.blocks.num_free_blocks
    seen = _count_forwards(target, monkeypatch)
    together = generate(target, drafts, specs)
    assert [o.token_ids for o in together] == alone
    assert seen[0] == [len(PROMPT_A)]  # one prompt forward for the four sequences
    assert target.runner.blocks.num_free_blocks == free
