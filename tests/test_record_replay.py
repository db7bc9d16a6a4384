"""Exact record/replay: a drafter's tau computed offline from recorded continuations equals the
tau the real step loop measured live, step for step.

Live runs go through the orchestrator with explicit (non-adaptive) speculation, in process and
through real gRPC services and the gateway (``specgrove record``); replays go through
``specgrove.cli.replay_loop`` and ``specgrove replay`` with fresh drafters. Tiny float64 models.
"""
from __future__ import annotations

import json
import random

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from draft_service.engine import DraftEngine
from draft_service.factory import DraftTarget, build_drafter
from specgrove.cli import main
from specgrove.cli.recordfile import LiveStats, Record, read_records, write_record
from specgrove.cli.replay_cmd import target_features
from specgrove.cli.replay_costs import CostModel, Curve, calibrate_verify, node_counts
from specgrove.cli.replay_loop import Replayer, Step, accepted_length
from specgrove.config import ModelRunConfig
from specgrove.kv import KVCacheConfig
from specgrove.sampling import accept_path
from specgrove.tree import TokenTree
from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget
from tests.gateway_stack import running_stack
from tests.helpers import draft_engine, generate, request, target_engine
from tests.test_eagle import make_head
from tests.tiny_models import make_tokenizer

PROMPTS = [(5, 6, 7, 8, 5, 6, 7, 8, 5, 6), (20, 21, 22, 23, 24, 25, 20, 21, 22), (42, 43)]
MAX_TOKENS = (16, 7, 16)  # 7: the last steps' trees are clamped by the remaining tokens
NODE_LIMIT = 256  # tests.helpers.generate's TargetLimits.max_tree_nodes


def _random_tree(rng: random.Random, root: int, nodes: int, vocab: int) -> TokenTree:
    tokens, parents = [root], [-1]
    while len(tokens) < nodes:
        parent = rng.randrange(len(tokens))
        taken = {tokens[c] for c in range(len(tokens)) if parents[c] == parent}
        tok = rng.randrange(vocab)
        if tok not in taken:
            tokens.append(tok)
            parents.append(parent)
    return TokenTree(tuple(tokens), tuple(parents))


def test_accepted_length_is_the_acceptance_walk_of_a_target_that_emits_the_continuation():
    """Give the real acceptance walk, at every node, the token a target whose output is the
    continuation would pick there (the continuation's token at the node's depth when the path
    to it matches; anything otherwise): it accepts what ``accepted_length`` says."""
    rng = random.Random(0)
    for _ in range(500):
        vocab = rng.choice([2, 3, 8])
        tree = _random_tree(rng, 0, rng.randint(1, 12), vocab)
        cont = [rng.randrange(vocab) for _ in range(rng.randint(1, 8))]
        target = []
        for node in range(len(tree)):
            path = tree.path_to(node)[1:]  # nodes below the root, root excluded
            on_track = len(path) < len(cont) and [tree.token_ids[n] for n in path] == cont[:len(path)]
            target.append(cont[len(path)] if on_track else rng.randrange(vocab))
        path, bonus = accept_path(tree, target)
        n = accepted_length(tree, cont)
        assert len(path) == n or (n == len(cont) and len(path) >= n)
        if n < len(cont):
            assert bonus == cont[n]


@pytest.fixture(scope="module")
def models(tiny_dirs, tmp_path_factory):
    """A target and a draft model near it. The target is the tiny llama with its logits scaled
    up 5x (final norm), so that at T = 0.8 it still repeats itself often enough for prompt
    lookup to be accepted; the draft is the target plus a little weight noise, so it agrees
    with the target often but not always and replays see accepted paths of every length."""
    root = tmp_path_factory.mktemp("replay-models")
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(5.0)
    model.save_pretrained(root / "target")
    make_tokenizer().save_pretrained(root / "target")
    noise = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(0.03 * torch.randn(p.shape, generator=noise))
    model.save_pretrained(root / "draft")
    return {"target": root / "target", "draft": root / "draft"}


@pytest.fixture(scope="module")
def target(models):
    return target_engine(models["target"])


@pytest.mark.parametrize("drafter,budget", [("ngram", TreeBudget(max_nodes=6, max_depth=3)),
                                            ("model", TreeBudget(branching=(3, 2, 1)))])
@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "seeded-T0.8"])
def test_replay_equals_the_live_step_loop(models, target, drafter, budget, temperature):
    specs = [request(p, n, SamplingParams(temperature, seed=101 + i), budget, drafter)
             for i, (p, n) in enumerate(zip(PROMPTS, MAX_TOKENS))]
    live = generate(target, draft_engine(models['draft']), specs)  # the four requests batched
    replayer = Replayer(draft_engine(models['draft']), drafter, NODE_LIMIT)  # fresh drafters, one request at a time
    total_accepted = 0
    for i, (spec, out) in enumerate(zip(specs, live)):
        assert out.error is None and len(out.token_ids) == spec.max_tokens
        rec = Record(f"r{i}", "test", "tiny", spec.prompt_ids, tuple(out.token_ids), out.finish_reason,
                     spec.max_tokens, target.max_model_len, out.job.spec.sampling, ignore_eos=True)
        got = replayer.replay(Record.from_json(json.loads(json.dumps(rec.to_json()))), budget)
        st = out.stats
        assert (len(got.steps), got.drafted_tokens, got.accepted_tokens) == \
            (st.steps, st.drafted_tokens, st.accepted_tokens), f"request {i}"
        assert got.mean_acceptance_length == st.mean_acceptance_length
        assert got.drafter == drafter
        total_accepted += got.accepted_tokens
    assert total_accepted > 0  # the comparison saw accepted drafts, not only rejections


class _Noting:
    """A real drafter that notes what each ``propose`` hands it: history length and features."""

    def __init__(self, inner) -> None:
        self.inner, self.kind, self.feature_layers = inner, inner.kind, inner.feature_layers
        self.seen: list[tuple[int, bytes | None]] = []

    def propose(self, inputs):
        self.seen += [(len(i.history), i.features.data if i.features is not None else None) for i in inputs]
        return self.inner.propose(inputs)

    def release(self, seq_id: int) -> None:
        self.inner.release(seq_id)


def _eagle(models, head) -> _Noting:
    run = ModelRunConfig("", "float64", "cpu", "torch", KVCacheConfig(4, 256))
    return _Noting(build_drafter(f"eagle:{head}", DraftTarget(str(models["target"])), run))


def test_feature_drafter_replay_gets_the_features_it_got_live(models, target, tmp_path):
    """An EAGLE head sees, in replay, the same histories and the same feature rows (bytes) that
    the live loop forwarded from prefill and verify; features come from one prefill per record."""
    make_head(models["target"], tmp_path / "head")
    budget = TreeBudget(max_nodes=6, max_depth=3, top_k=2)
    for i, (prompt, n) in enumerate(zip(PROMPTS, MAX_TOKENS)):
        live_head = _eagle(models, tmp_path / "head")
        spec = request(prompt, n, SamplingParams(0.8, seed=300 + i), budget, "eagle")
        (out,) = generate(target, DraftEngine.of({"eagle": live_head}, "eagle"), [spec])  # one at a time
        rec = Record(f"e{i}", "test", "tiny", spec.prompt_ids, tuple(out.token_ids), out.finish_reason, n,
                     target.max_model_len, out.job.spec.sampling, ignore_eos=True)
        replay_head = _eagle(models, tmp_path / "head")
        replayer = Replayer(DraftEngine.of({"eagle": replay_head}, "eagle"), "eagle", NODE_LIMIT,
                            target_features(target, replay_head.feature_layers))
        got = replayer.replay(rec, budget)
        assert replay_head.seen == live_head.seen and any(f for _, f in live_head.seen)
        assert (len(got.steps), got.drafted_tokens, got.accepted_tokens) == \
            (out.stats.steps, out.stats.drafted_tokens, out.stats.accepted_tokens)


def test_cost_model_speedup():
    steps = [Step(nodes=8, accepted=3, emitted=4, drafted=True, draft_s=0.001),
             Step(nodes=1, accepted=0, emitted=1, drafted=False, draft_s=0.0)]
    costs = CostModel(Curve.parse("1=10,8=17"), None, "given")
    # plain: 5 tokens x 10 ms; speculative: (17 + 1) + 10 ms
    assert costs.expected_speedup(steps) == pytest.approx(50 / 28)
    assert Curve.parse("1=10,8=17").ms(16) == pytest.approx(25.0)  # extended along the last segment
    assert CostModel(Curve.parse("10"), Curve.parse("2"), "given").expected_speedup(steps) == pytest.approx(50 / 22)


def test_calibration_times_every_size_and_leaves_the_target_as_it_was(target):
    free = target.runner.blocks.num_free_blocks
    curve = calibrate_verify(target, list(range(3, 40)), node_counts(5), repeats=2)
    assert [n for n, _ in curve.points] == [1, 2, 4, 5] and all(ms > 0 for _, ms in curve.points)
    assert target.num_sequences == 0 and target.runner.blocks.num_free_blocks == free


def _synthetic_records(n: int, tokens: int) -> list[Record]:
    """Requests whose outputs repeat their prompts' phrases (what prompt lookup is for)."""
    rng = random.Random(1)
    out = []
    for i in range(n):
        phrase = [rng.randrange(300) for _ in range(6)]
        prompt = phrase * 3 + [rng.randrange(300) for _ in range(20)]
        cont = [t for _ in range(tokens) for t in (phrase if rng.random() < 0.5 else [rng.randrange(300)])][:tokens]
        sampling = SamplingParams(0.8, seed=i) if i % 2 else SamplingParams()
        out.append(Record(f"s{i}", ["chat", "code"][i % 2], "not-a-loaded-model", tuple(prompt), tuple(cont),
                          "length", tokens, 4096, sampling,
                          live=LiveStats("lookup", {"nodes": 8, "depth": 4, "top_k": 4}, False, True,
                                         0, 0, 0, 0.0, None)))
    return out


def test_record_file_round_trips_and_ngram_replay_takes_no_target(tmp_path):
    records = _synthetic_records(30, 128)
    path = tmp_path / "rec.jsonl"
    with open(path, "w") as f:
        for r in records:
            write_record(f, r)
    assert read_records(path) == records
    # The records name a model that does not exist: an n-gram replay never loads the target.
    res = CliRunner().invoke(main, ["replay", str(path), "--drafter", "lookup=ngram", "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["requests"] == 30 and s["output_tokens"] == 30 * 128
    assert s["tree"] == "8:4:4" and s["accepted_tokens"] > 0
    assert s["mean_acceptance_length"] == pytest.approx(1 + sum(s["acceptance_per_position"]))
    assert sum(len(r.output_ids) for r in records) - 30 == s["steps"] + s["accepted_tokens"]
    assert s["expected_speedup"] is None and set(s["per_category"]) == {"chat", "code"}


@pytest.fixture(scope="module")
def stack(models):
    with running_stack(models["target"], models["draft"]) as s:
        yield s


@pytest.mark.parametrize("drafter,spec,tree,temperature", [
    ("lookup", "ngram", "6:3", "0"), ("small", "model:{draft}", "3,2,1", "0.8")], ids=["ngram-greedy", "model-T0.8"])
def test_record_through_the_gateway_then_replay_equals_live(stack, models, tmp_path, drafter, spec, tree,
                                                            temperature):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": "fox", "category": "text", "prompt": "the quick brown fox jumps over the lazy dog the quick"},
            {"id": "hello", "category": "chat", "messages": [{"role": "user", "content": "hello world hello"}]},
            {"prompt": "speculative decoding speculative"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rec = tmp_path / "rec.jsonl"
    res = CliRunner().invoke(main, [
        "record", "--url", stack["http"], "--grpc", stack["grpc"], "--prompts", str(prompts), "--out", str(rec),
        "--max-tokens", "16", "--temperature", temperature, "--seed", "7", "--no-chat",
        "--drafter", drafter, "--tree", tree, "--concurrency", "2"])
    assert res.exit_code == 0, res.output
    records = {r.id: r for r in read_records(rec)}
    assert set(records) == {"fox", "hello", "p2"}
    for r in records.values():
        assert r.sampling.seed is not None and r.live.drafter == drafter and not r.live.adaptive
        assert r.live.step_accepted is not None and len(r.live.step_accepted) == r.live.steps
    assert records["hello"].prompt_ids[:1] == (1,)  # <|im_start|>: the chat template was applied

    replay = CliRunner().invoke(main, [
        "replay", str(rec), "--drafter", f"{drafter}={spec.format(draft=models['draft'])}",
        "--dtype", "float64", "--kernels", "torch", "--block-size", "4", "--max-tree-nodes", "32",
        "--json", "--per-request"])
    assert replay.exit_code == 0, replay.output
    s = json.loads(replay.stdout)
    for req in s["per_request"]:
        assert req["step_accepted"] == req["live_step_accepted"], req["id"]
    live = s["live"]
    assert live["requests_equal_step_for_step"] == live["requests_compared"] == 3
    assert (s["steps"], s["accepted_tokens"], s["drafted_tokens"]) == \
        (live["steps"], live["accepted_tokens"], live["drafted_tokens"])
    assert s["mean_acceptance_length"] == live["mean_acceptance_length"] and s["accepted_tokens"] > 0
    assert s["tree"] == tree.replace("6:3", "6:3:4")  # each request's live tree
