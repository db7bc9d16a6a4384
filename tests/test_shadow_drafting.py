"""Shadow drafting scores a drafter on live traffic exactly, and never touches the output:

- through the orchestrator (float64 tiny models), a shadow drafter X riding on requests that
  decode plainly, or speculate with another drafter, reports the steps, drafted and accepted
  tokens that the same requests served live by X report -- greedy and seeded, n-gram and model
  drafters, static and dynamic trees, requests batched together -- while the tokens stay those
  of the live runs; no draft sequence is left behind;
- through the REST API, ``speculation.shadow`` puts the shadow's stats in the response and the
  ``specgrove:shadow_*`` metrics count them; an unknown shadow drafter is a 400.
"""
from __future__ import annotations

from dataclasses import replace

import grpc
import httpx
import pytest

from draft_service.drafters.model import ModelDrafter
from draft_service.drafters.ngram import NgramDrafter
from draft_service.engine import DraftEngine
from gateway.shadow import ShadowStats, accepted_along
from specgrove.pb.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from specgrove.tree import TokenTree
from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget
from tests.gateway_stack import running_stack
from tests.helpers import generate, request, runner, target_engine

PROMPTS = [(5, 9, 14, 3, 22, 7, 31, 9, 14, 3), (8, 2, 40, 41, 42, 8, 2, 40), (1, 2, 3, 1, 2, 3, 1, 2),
           (60, 61, 62, 63)]
CASES = [("ngram", TreeBudget(max_nodes=8, max_depth=4)), ("model", TreeBudget(branching=(2, 2, 1))),
         ("model", TreeBudget(max_nodes=8, max_depth=4, top_k=3))]
SAMPLINGS = [SamplingParams(), SamplingParams(temperature=0.8, top_p=0.95, seed=21)]


@pytest.fixture(scope="module")
def engines(tiny_dirs):
    target = target_engine(tiny_dirs["llama"], block_size=4, shuffle_seed=1)
    drafts = DraftEngine.of({"ngram": NgramDrafter(), "model": ModelDrafter(runner(tiny_dirs["draft"], block_size=3))},
                            "ngram")
    return target, drafts


def test_accepted_along_follows_the_longest_matching_path():
    tree = TokenTree((9, 1, 2, 3, 4, 5), (-1, 0, 0, 1, 1, 3))  # 9 -> {1 -> {3 -> 5, 4}, 2}
    assert accepted_along(tree, [1, 3, 5, 7]) == 3
    assert accepted_along(tree, [1, 4]) == 2
    assert accepted_along(tree, [2, 2]) == 1
    assert accepted_along(tree, [7]) == 0 and accepted_along(tree, []) == 0
    assert accepted_along(tree, [1, 3]) == 2  # the output ended inside the tree


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "seeded"])
@pytest.mark.parametrize("drafter,budget", CASES, ids=["ngram", "model-static", "model-dynamic"])
def test_shadow_stats_equal_the_live_runs_of_that_drafter(engines, drafter, budget, sampling):
    target, drafts = engines
    seeds = [None if sampling.seed is None else sampling.seed + i for i in range(len(PROMPTS))]
    specs = [request(p, 14 + 3 * i, replace(sampling, seed=s)) for i, (p, s) in enumerate(zip(PROMPTS, seeds))]
    live = generate(target, drafts, [replace(s, drafter=drafter, budget=budget) for s in specs])
    # The same requests decoding plainly, and speculating with the other drafter, X in the shadow.
    other = "model" if drafter == "ngram" else "ngram"
    shadowed = [replace(s, shadow=(drafter,), shadow_budget=budget) for s in specs]
    free = target.runner.blocks.num_free_blocks
    outs = generate(target, drafts, [replace(s, budget=TreeBudget.off()) for s in shadowed] +
                    [replace(s, drafter=other, budget=TreeBudget(branching=(3, 1))) for s in shadowed])
    assert drafts.num_sequences == 0 and target.runner.blocks.num_free_blocks == free
    for i, o in enumerate(outs):
        ref = live[i % len(PROMPTS)]
        assert o.token_ids == ref.token_ids  # the user's output is untouched
        (track,) = o.job.shadows
        got, want = track.stats, ref.stats
        assert (got.steps, got.drafted_tokens, got.accepted_tokens) == \
               (want.steps, want.drafted_tokens, want.accepted_tokens), (i, got, want)
    assert any(o.job.shadows[0].stats.accepted_tokens for o in outs)  # the comparison is not vacuous


def test_a_shadow_for_the_whole_gateway_and_per_request_over_rest(tiny_dirs):
    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"]) as stack:
        body = {"model": stack["model"], "prompt": "the quick brown fox jumps over", "max_tokens": 24,
                "temperature": 0.8, "seed": 5, "ignore_eos": True}
        live = httpx.post(stack["http"] + "/v1/completions", timeout=60,
                          json={**body, "speculation": {"drafter": "small", "tree": "2,2"}}).json()
        shadowed = httpx.post(stack["http"] + "/v1/completions", timeout=60, json={
            **body, "speculation": {"drafter": "none", "tree": "2,2", "shadow": ["small", "lookup"]}}).json()
        assert shadowed["choices"][0]["text"] == live["choices"][0]["text"]
        mine, theirs = shadowed["specgrove"]["shadow"]["small"], live["specgrove"]
        assert {k: mine[k] for k in ("steps", "drafted_tokens", "accepted_tokens", "mean_acceptance_length")} == \
               {k: theirs[k] for k in ("steps", "drafted_tokens", "accepted_tokens", "mean_acceptance_length")}
        assert set(shadowed["specgrove"]["shadow"]) == {"small", "lookup"}
        assert "shadow" not in live["specgrove"]  # only when asked
        metrics = httpx.get(stack["http"] + "/metrics", timeout=10).text
        drafts = [l for l in metrics.splitlines() if l.startswith('specgrove:shadow_num_drafts_total{drafter="small"}')]
        assert drafts and float(drafts[0].split()[-1]) == mine["steps"]
        assert 'specgrove:shadow_num_accepted_tokens_per_pos_total{drafter="small",position="0"}' in metrics
        bad = httpx.post(stack["http"] + "/v1/completions", timeout=60,
                         json={**body, "speculation": {"shadow": ["nope"]}})
        assert bad.status_code == 400 and "speculation.shadow.0" in bad.json()["error"]["message"]
        # gRPC: Speculation.shadow, the stats in the last message.
        req = gateway_pb2.GenerateRequest(
            model=stack["model"], prompt=body["prompt"], max_tokens=24,
            sampling=common_pb2.SamplingParams(temperature=0.8, seed=5),
            speculation=gateway_pb2.Speculation(off=True, tree_spec="2,2", shadow=["small"]))
        with grpc.insecure_channel(stack["grpc"]) as ch:
            last = list(gateway_pb2_grpc.GatewayStub(ch).Generate(req, timeout=60))[-1]
        assert last.shadow["small"].steps >= 1 and last.shadow["small"].drafted_tokens > 0


def test_shadow_stats_json_names_the_requests_terms():
    stats = ShadowStats(steps=4, drafted_tokens=12, accepted_tokens=6)
    assert stats.as_json() == {"steps": 4, "drafted_tokens": 12, "accepted_tokens": 6,
                               "mean_acceptance_length": 2.5}


def test_gateway_wide_shadows_follow_every_request_and_unknown_ones_are_named(engines, caplog):
    from gateway.offline import OFFLINE

    target, drafts = engines
    spec = request(PROMPTS[0], 12, SamplingParams(), shadow_budget=TreeBudget(branching=(2, 1)))
    live = generate(target, drafts, [replace(spec, drafter="ngram", budget=TreeBudget(branching=(2, 1)))])[0]
    with caplog.at_level("WARNING", logger="specgrove.gateway"):
        (out,) = generate(target, drafts, [spec], cfg=replace(OFFLINE, shadow_drafters=("nope", "ngram")))
    nope, ngram = out.job.shadows
    assert (ngram.stats.steps, ngram.stats.accepted_tokens) == (live.stats.steps, live.stats.accepted_tokens)
    assert nope.stopped and nope.stats.steps == 0
    assert "shadow drafter 'nope' is not loaded" in caplog.text
    assert drafts.num_sequences == 0
