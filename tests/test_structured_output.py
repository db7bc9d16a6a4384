"""Structured output is a grammar mask at every tree node, so speculation stays lossless:

- the per-node mask of one depth-first walk equals each node's history replayed from scratch
  on a fresh matcher (draft tokens the grammar refuses and end-of-sequence included);
- pruning keeps exactly the nodes whose whole path the grammar accepts, and the target's
  forward runs only those, reporting accepted nodes by their index in the tree as drafted;
- float64 logits, masked by unpacking the bits, equal XGrammar's kernel (float32);
- greedy and seeded outputs under a JSON schema, a regex and a choice are identical with
  speculation on and off (n-gram lookup and a model drafter; static and dynamic trees; batches
  of several), through the orchestrator over the in-process ports, and the text is a sentence
  of the grammar that ends with "stop";
- a re-prefill with output tokens (preemption) resumes the grammar where it was;
- a grammar that does not compile is INVALID_ARGUMENT for its request alone.
"""
from __future__ import annotations

import asyncio
import json
import random
import re
from dataclasses import replace

import pytest
import torch

from draft_service.drafters.model import ModelDrafter
from draft_service.drafters.ngram import NgramDrafter
from draft_service.engine import DraftEngine
from draft_service.local import LocalDraft
from gateway.offline import generate as run_orchestrator
from specgrove.errors import InvalidRequest
from specgrove.grammar import GrammarCompiler, GrammarState, all_allowed, apply_bitmask_, fill_tree_bitmask
from specgrove.tree import TokenTree
from specgrove.sampling_params import Grammar, SamplingParams
from specgrove.types import PrefillRequest, TreeBudget, VerifyItem
from target_service.local import LocalTarget, TargetLimits
from tests.helpers import generate, request, runner, target_engine
from tests.tiny_models import VOCAB, make_tokenizer

EOS = 2
SCHEMA = {"type": "object", "properties": {
    "ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
    "n": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["ok", "color", "n"]}
JSON_SCHEMA = Grammar("json_schema", json.dumps(SCHEMA))
REGEX = Grammar("regex", r"(yes|no), [a-z]{2,5}!")
CHOICE = Grammar("choice", choices=("red fox", "lazy dog", "brown", "the quick brown fox"))
TEXTS = ['{"ok": false, "color": "red", "n": 7} {"ok": ', "the quick brown fox jumps", "hello world, ",
         '{"color": "blue", "n": 42}']
BUDGETS = [
    ("ngram", TreeBudget(branching=(2, 2, 1))),
    ("ngram", TreeBudget(max_nodes=8, max_depth=4)),
    ("model", TreeBudget(branching=(3, 2, 1))),
    ("model", TreeBudget(max_nodes=10, max_depth=4, top_k=3)),
]


def valid(grammar: Grammar, text: str) -> bool:
    if grammar.kind == "choice":
        return text in grammar.choices
    if grammar.kind == "regex":
        return re.fullmatch(grammar.spec, text) is not None
    obj = json.loads(text)
    return (set(obj) == {"ok", "color", "n"} and isinstance(obj["ok"], bool)
            and obj["color"] in ("red", "green", "blue") and 0 <= obj["n"] <= 99)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def compiler(tiny_dirs):
    return GrammarCompiler.build(tiny_dirs["llama"], VOCAB, (EOS,))


@pytest.fixture(scope="module")
def engines(tiny_dirs):
    target = target_engine(tiny_dirs["llama"], block_size=4, shuffle_seed=2)
    drafts = DraftEngine.of({"ngram": NgramDrafter(), "model": ModelDrafter(runner(tiny_dirs["draft"], block_size=3))},
                            "ngram")
    return target, drafts


# --- the mask walk --------------------------------------------------------------------------
def _allowed(matcher) -> list[int]:
    row = all_allowed(1, VOCAB)
    matcher.fill_next_token_bitmask(row, 0)
    return [t for t in range(VOCAB) if (int(row[0, t // 32]) >> (t % 32)) & 1]


def _random_tree(compiler, compiled, output: list[int], rng: random.Random, nodes: int = 24) -> TokenTree:
    """A tree rooted at ``output[-1]`` whose children are mostly grammatical, some refused
    tokens among them, and end-of-sequence wherever the grammar allows it."""
    tokens, parents, frontier = [output[-1]], [-1], [0]
    while frontier and len(tokens) < nodes:
        u = frontier.pop(0)
        path = [tokens[n] for n in TokenTree(tuple(tokens), tuple(parents)).path_to(u)[1:]]
        m = GrammarState(compiled, output + path).matcher
        ok = [] if m.is_terminated() else _allowed(m)
        kids = rng.sample(ok, min(len(ok), rng.randint(1, 3))) + [rng.randrange(VOCAB)]
        for t in dict.fromkeys(kids + ([EOS] if EOS in ok else [])):
            if len(tokens) < nodes:
                tokens.append(t)
                parents.append(u)
                frontier.append(len(tokens) - 1)
    return TokenTree(tuple(tokens), tuple(parents))


def _replayed_row(compiled, output: list[int], path: list[int]) -> torch.Tensor:
    """Brute force: node's history on a fresh matcher; all-allowed when it leaves the grammar
    (a refused token) or ends it (end-of-sequence): such rows never decide an emitted token."""
    m = GrammarState(compiled, ()).matcher
    row = all_allowed(1, VOCAB)
    for t in output + path:
        if m.is_terminated() or not m.accept_token(t):
            return row[0]
    if not m.is_terminated():
        m.fill_next_token_bitmask(row, 0)
    return row[0]


@pytest.mark.parametrize("grammar", [JSON_SCHEMA, REGEX, CHOICE, Grammar("json_object")], ids=lambda g: g.kind)
def test_tree_walk_equals_each_nodes_history_replayed(compiler, tok, grammar):
    compiled = compiler.compile(grammar)
    sentence = {"json_schema": '{"ok": true, "color": "green", "n": 12}', "regex": "yes, abc!",
                "choice": "the quick brown fox", "json_object": '{"a": [1, {"b": null}], "c": "d"}'}[grammar.kind]
    ids = tok.encode(sentence, add_special_tokens=False)
    rng = random.Random(0)
    for cut in range(1, len(ids) + 1):  # every output prefix; the last token is the pending root
        output = ids[:cut]
        tree = _random_tree(compiler, compiled, output, rng)
        state = GrammarState(compiled, output)
        bitmask = all_allowed(len(tree), VOCAB)
        fill_tree_bitmask(state.matcher, tree, bitmask)
        for u in range(len(tree)):
            path = [tree.token_ids[n] for n in tree.path_to(u)[1:]]
            assert torch.equal(bitmask[u], _replayed_row(compiled, output, path)), (cut, u)
        # The walk leaves the matcher where it was: the next step starts from the same state.
        again = all_allowed(len(tree), VOCAB)
        fill_tree_bitmask(state.matcher, tree, again)
        assert torch.equal(again, bitmask)


def _grammatical_replayed(compiled, output: list[int], path: list[int]) -> bool:
    """Brute force: the grammar accepts every token of ``path`` after ``output``, none of
    them after the grammar ended (a node below end-of-sequence is never emitted)."""
    m = GrammarState(compiled, output).matcher
    return all(not m.is_terminated() and m.accept_token(t) for t in path)


@pytest.mark.parametrize("grammar", [JSON_SCHEMA, REGEX, CHOICE], ids=lambda g: g.kind)
def test_pruning_keeps_exactly_the_grammatical_paths(compiler, tok, grammar):
    compiled = compiler.compile(grammar)
    ids = tok.encode({"json_schema": '{"ok": true, "color": "red", "n": 5}', "regex": "no, abcd!",
                      "choice": "lazy dog"}[grammar.kind], add_special_tokens=False)
    rng = random.Random(3)
    for cut in range(1, len(ids) + 1):
        output = ids[:cut]
        tree = _random_tree(compiler, compiled, output, rng)
        state = GrammarState(compiled, output)
        pruned, kept = state.prune(tree)
        expected = [u for u in range(len(tree))
                    if _grammatical_replayed(compiled, output, [tree.token_ids[n] for n in tree.path_to(u)[1:]])]
        assert kept == expected, cut
        assert len(kept) < len(tree)  # every random tree holds a refused token
        # The pruned tree is the same tree restricted to the kept nodes.
        assert pruned.token_ids == tuple(tree.token_ids[u] for u in kept)
        assert [kept[p] if p >= 0 else -1 for p in pruned.parents] == [tree.parents[u] for u in kept]
        assert state.prune(tree)[1] == kept  # the matcher stands where it stood


def test_the_target_verifies_only_grammatical_nodes(engines, tok, compiler, monkeypatch):
    """Forbidden draft tokens cost no verified node; accepted_nodes index the tree as drafted."""
    target, _ = engines
    prompt = tuple(tok.encode("pick one"))
    sampling = SamplingParams(grammar=CHOICE)
    first = target.prefill([PrefillRequest(905, prompt, sampling), PrefillRequest(906, prompt, sampling)])[0].first_token
    pick = target.verify([VerifyItem(906, TokenTree.root_only(first))])[0].bonus_token  # the target's choice
    target.release(906)
    allowed = _allowed(GrammarState(compiler.compile(CHOICE), [first]).matcher)
    bad = next(t for t in range(VOCAB) if t not in allowed)
    # Root, a forbidden child with a child of its own, then the target's grammatical pick.
    tree = TokenTree((first, bad, pick, bad), (-1, 0, 0, 1))
    seen = []
    run = target.runner.run
    monkeypatch.setattr(target.runner, "run",
                        lambda items, **kw: seen.append([len(i.token_ids) for i in items]) or run(items, **kw))
    res = target.verify([VerifyItem(905, tree)])[0]
    target.release(905)
    assert seen == [[2]]  # the root and the one grammatical child
    assert res.accepted_nodes == (2,) and res.accepted_tokens == (pick,)


def test_unpacked_mask_equals_xgrammars_kernel(compiler, tok):
    """float64 logits are masked by unpacking the bits; the others by XGrammar's kernel."""
    import xgrammar

    output = tok.encode('{"ok": tr', add_special_tokens=False)
    compiled = compiler.compile(JSON_SCHEMA)
    tree = _random_tree(compiler, compiled, output, random.Random(1))
    bitmask = all_allowed(len(tree), VOCAB)
    fill_tree_bitmask(GrammarState(compiled, output).matcher, tree, bitmask)
    logits = torch.randn(len(tree), VOCAB)
    theirs = logits.clone()
    xgrammar.apply_token_bitmask_inplace(theirs, bitmask)
    assert torch.equal(apply_bitmask_(logits.double(), bitmask), theirs.double())
    assert torch.equal(apply_bitmask_(logits.clone(), bitmask), theirs)
    assert torch.isinf(theirs).any() and not torch.isinf(theirs).all(dim=-1).any()


# --- losslessness through the orchestrator ----------------------------------------------------
def _run(engines, tok, drafter: str, budget: TreeBudget, sampling: SamplingParams):
    """The prompts of TEXTS in one batch (seeded requests: a seed each)."""
    target, drafts = engines
    seeds = [None if sampling.seed is None else sampling.seed + i for i in range(len(TEXTS))]
    reqs = [request(tok.encode(t), 48, replace(sampling, seed=seed), budget=budget, drafter=drafter,
                    ignore_eos=False) for t, seed in zip(TEXTS, seeds)]
    free = target.runner.blocks.num_free_blocks
    outs = generate(target, drafts, reqs)
    assert target.runner.blocks.num_free_blocks == free
    return outs


@pytest.mark.parametrize("grammar", [JSON_SCHEMA, REGEX, CHOICE], ids=lambda g: g.kind)
def test_greedy_speculative_equals_plain_under_a_grammar(engines, tok, grammar):
    sampling = SamplingParams(grammar=grammar)
    plain = _run(engines, tok, "", TreeBudget.off(), sampling)
    for o in plain:
        assert o.finish_reason == "stop" and o.token_ids[-1] == EOS
        assert valid(grammar, tok.decode(o.token_ids[:-1])), tok.decode(o.token_ids)
    for drafter, budget in BUDGETS if grammar is JSON_SCHEMA else BUDGETS[1::2]:
        outs = _run(engines, tok, drafter, budget, sampling)
        assert [o.token_ids for o in outs] == [o.token_ids for o in plain], (drafter, budget)
        assert [o.finish_reason for o in outs] == ["stop"] * len(TEXTS)
        if grammar is JSON_SCHEMA and drafter == "ngram":
            # The prompts hold the schema's keys: lookup finds them and whole paths are accepted,
            # so deep nodes' masks decide emitted tokens.
            assert sum(o.stats.accepted_tokens for o in outs) > 20


@pytest.mark.parametrize("grammar", [JSON_SCHEMA, REGEX], ids=lambda g: g.kind)
def test_seeded_sampling_is_the_same_with_and_without_speculation(engines, tok, grammar):
    sampling = SamplingParams(temperature=1.0, top_p=0.95, seed=7, grammar=grammar)
    plain = _run(engines, tok, "", TreeBudget.off(), sampling)
    for o in plain:
        if o.finish_reason == "stop":
            assert valid(grammar, tok.decode(o.token_ids[:-1])), tok.decode(o.token_ids)
    for drafter, budget in BUDGETS[1::2]:
        outs = _run(engines, tok, drafter, budget, sampling)
        assert [o.token_ids for o in outs] == [o.token_ids for o in plain], (drafter, budget)


# --- the engine: re-prefill and errors --------------------------------------------------------
def test_re_prefill_with_output_resumes_the_grammar(engines, tok):
    target, _ = engines
    prompt = tuple(tok.encode("hello world"))
    sampling = SamplingParams(grammar=JSON_SCHEMA)
    first = target.prefill([PrefillRequest(901, prompt, sampling)])[0].first_token
    out = [first]
    for _ in range(8):
        out.append(target.verify([VerifyItem(901, TokenTree.root_only(out[-1]))])[0].bonus_token)
    target.release(901)
    # Preempted after 5 output tokens: the prompt now holds them, the target counts them as output.
    again = target.prefill([PrefillRequest(902, prompt + tuple(out[:5]), sampling, num_output_tokens=5)])[0]
    target.release(902)
    assert again.first_token == out[5]


def test_a_grammar_that_does_not_compile_fails_its_request_alone(engines, tok):
    target, drafts = engines
    good = request(tok.encode("hello"), 48, SamplingParams(grammar=CHOICE), ignore_eos=False)
    bad = request(tok.encode("hello"), 8, SamplingParams(grammar=Grammar("regex", "a(")))
    worse = request(tok.encode("hello"), 8, SamplingParams(grammar=Grammar("json_schema", '{"type": "foo"}')))
    local_target = LocalTarget(target, "tiny", "float64", TargetLimits(64, 64))
    local_draft = LocalDraft(drafts, target.vocab_size)
    try:
        with pytest.raises(InvalidRequest, match=r"sampling\.grammar: the regular expression does not "
                                                 r"compile: Regex parsing error at position 3"):
            asyncio.run(local_target.prefill([PrefillRequest(903, good.prompt_ids, good.sampling),
                                               PrefillRequest(904, bad.prompt_ids, bad.sampling)]))
        assert not target.has_sequence(903)  # the batch is refused before any state changes
        # Admitted in one batch by the step loop: the good request is served all the same.
        outs = run_orchestrator(local_target, local_draft, [good, bad, worse])
    finally:
        local_target.thread.shutdown()
        local_draft.thread.shutdown()
        local_draft.loader.shutdown()
    assert outs[0].finish_reason == "stop" and tok.decode(outs[0].token_ids[:-1]) in CHOICE.choices
    assert outs[1].error.status == 400 and "regular expression" in outs[1].error.message
    assert outs[2].error.status == 400 and 'Unsupported type "foo"' in outs[2].error.message
    assert target.num_sequences == 0


def test_min_tokens_with_a_grammar_is_refused():
    with pytest.raises(InvalidRequest, match="min_tokens"):
        SamplingParams(min_tokens=3, grammar=CHOICE)
    with pytest.raises(InvalidRequest, match="grammar"):
        Grammar("choice", choices=())
    with pytest.raises(InvalidRequest, match="exceed the limit"):
        Grammar("regex", "a" * (1 << 17))
    assert SamplingParams.from_pb(SamplingParams(grammar=CHOICE).to_pb()).grammar == CHOICE
    assert SamplingParams.from_pb(SamplingParams(grammar=JSON_SCHEMA).to_pb()).grammar == JSON_SCHEMA
    assert SamplingParams.from_pb(SamplingParams(grammar=Grammar("json_object")).to_pb()).grammar.kind == "json_object"
    assert SamplingParams.from_pb(SamplingParams().to_pb()).grammar is None
