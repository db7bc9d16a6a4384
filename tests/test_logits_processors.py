"""Penalties, logit bias, min-p and min_tokens act on the target distribution at every tree node
with that node's own history, so speculation never changes their effect:

- the batched per-node processing equals processing each node's history one by one;
- plain decoding with them equals a hand-written reference loop over Hugging Face's model;
- greedy and seeded outputs are identical with speculation on and off (float64);
- sampled output has the processed distribution with speculation on (chi-square);
- through the official client: a bias can force a token, min_tokens holds EOS back.
"""
from __future__ import annotations

import collections
import math

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from specgrove.logits_processors import OutputHistory, process_logits
from specgrove.sampling import target_probs
from specgrove.tree import TokenTree
from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget
from tests.gateway_stack import running_stack
from tests.helpers import draft_engine, generate, request, target_engine
from tests.test_sampling import ALPHA, chi_square_p
from tests.tiny_models import save_tiny_model

EOS = (2,)
PENALISED = dict(presence_penalty=0.7, frequency_penalty=0.4, repetition_penalty=1.6,
                 logit_bias=((5, 1.5), (9, -2.0)))


def reference_logits(row: torch.Tensor, prompt, output, params: SamplingParams) -> torch.Tensor:
    """The processors for one position, written out token by token (the test's own reading
    of vLLM's semantics): bias, min_tokens mask, repetition, frequency and presence."""
    out = row.clone().double()
    for t, b in params.logit_bias:
        out[t] += b
    if len(output) < params.min_tokens:
        for t in set(EOS) | set(params.stop_token_ids):
            out[t] = -math.inf
    counts = collections.Counter(output)
    for t in range(out.shape[0]):
        if t in counts or t in prompt:
            if params.repetition_penalty != 1.0:
                out[t] = out[t] / params.repetition_penalty if out[t] > 0 else out[t] * params.repetition_penalty
        out[t] -= params.frequency_penalty * counts.get(t, 0) + params.presence_penalty * (counts.get(t, 0) > 0)
    return out


def test_per_node_processing_equals_each_nodes_own_history():
    torch.manual_seed(0)
    vocab, prompt, output = 12, [3, 4, 3], [7, 5]  # 5 is pending: the root
    tree = TokenTree((5, 7, 3, 7, 2, 7), (-1, 0, 0, 1, 1, 3))
    params = SamplingParams(1.0, **PENALISED, min_tokens=4)
    logits = torch.randn(len(tree), vocab, dtype=torch.float64)
    history = OutputHistory.start(params, prompt, output, vocab, "cpu")
    got = process_logits(logits, params, history, tree, EOS)
    for u in range(len(tree)):
        path = [tree.token_ids[n] for n in tree.path_to(u)[1:]]  # below the root, u included
        want = reference_logits(logits[u], prompt, output + path, params)
        assert torch.allclose(got[u], want, atol=1e-12), u


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab16p")
    return save_tiny_model(root / "t", "llama", seed=10, with_tokenizer=False, vocab_size=16)


PROMPT = [3, 1, 4, 1, 5]


def _generate(path, params, budget, drafter="model", n_new=12, seeds=(None,)):
    specs = [request(PROMPT, n_new, SamplingParams(params.temperature, seed=s, **{
        k: getattr(params, k) for k in ("presence_penalty", "frequency_penalty", "repetition_penalty",
                                         "min_p", "min_tokens", "logit_bias", "stop_token_ids")}),
                     budget, drafter) for s in seeds]
    # The draft model is the target itself, so long drafted paths are accepted and verified.
    return [o.token_ids for o in generate(target_engine(path), draft_engine(path), specs)]


def test_plain_decoding_with_processors_equals_a_reference_loop(small_vocab):
    params = SamplingParams(0.0, **PENALISED, min_tokens=6)
    got = _generate(small_vocab, params, TreeBudget.off())[0]
    hf = AutoModelForCausalLM.from_pretrained(small_vocab, dtype=torch.float64).eval()
    output: list[int] = []
    for _ in range(12):
        with torch.no_grad():
            row = hf(torch.tensor([PROMPT + output])).logits[0, -1]
        output.append(int(reference_logits(row, PROMPT, output, params).argmax()))
    assert got == output
    assert got != _generate(small_vocab, SamplingParams(0.0), TreeBudget.off())[0]  # they do act


@pytest.mark.parametrize("params", [
    SamplingParams(0.0, **PENALISED, min_tokens=5),
    SamplingParams(0.9, **PENALISED, min_p=0.05, min_tokens=3),
    SamplingParams(1.0, presence_penalty=-1.5, frequency_penalty=1.0),
], ids=["greedy", "seeded", "negative-presence"])
def test_speculation_does_not_change_processed_output(small_vocab, params):
    seeds = range(8) if not params.greedy else (None,)
    plain = _generate(small_vocab, params, TreeBudget.off(), seeds=seeds)
    for budget, drafter in ((TreeBudget(branching=(2, 2, 1)), "model"),
                            (TreeBudget(max_nodes=6, max_depth=4), "model"),
                            (TreeBudget(branching=(2, 1)), "ngram")):
        assert _generate(small_vocab, params, budget, drafter, seeds=seeds) == plain, (budget, drafter)


def test_sampled_output_has_the_processed_distribution_with_speculation(small_vocab):
    params = SamplingParams(1.0, presence_penalty=1.2, frequency_penalty=0.6, repetition_penalty=1.4,
                            logit_bias=((7, 2.0),), min_tokens=2)
    hf = AutoModelForCausalLM.from_pretrained(small_vocab, dtype=torch.float64).eval()
    prompt, new = [3, 1, 4], 3

    def joint(processed: bool) -> dict:
        out = {(): 1.0}
        for _ in range(new):
            nxt = {}
            for k, pk in out.items():
                with torch.no_grad():
                    row = hf(torch.tensor([prompt + list(k)])).logits[0, -1]
                if processed:
                    row = reference_logits(row, prompt, list(k), params)
                p = target_probs(row.unsqueeze(0), SamplingParams(params.temperature))[0]
                nxt.update({k + (t,): pk * p[t].item() for t in range(p.shape[0]) if p[t] > 0})
            out = nxt
        return out

    n = 3000
    target, drafts = target_engine(small_vocab, num_blocks=4096), draft_engine(small_vocab, num_blocks=4096)
    counts = collections.Counter()
    for start in range(0, n, 500):
        reqs = [request(prompt, new, SamplingParams(1.0, seed=i, presence_penalty=1.2, frequency_penalty=0.6,
                                                    repetition_penalty=1.4, logit_bias=((7, 2.0),), min_tokens=2),
                        TreeBudget(branching=(2, 2)), "model") for i in range(start, start + 500)]
        counts.update(tuple(o.token_ids) for o in generate(target, drafts, reqs))
    assert chi_square_p(counts, joint(True), n) > ALPHA
    assert chi_square_p(counts, joint(False), n) < ALPHA  # the test can tell them apart


@pytest.fixture(scope="module")
def stack(tiny_dirs):
    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"]) as s:
        yield s


def test_bias_and_min_tokens_through_the_openai_client(stack):
    client = openai.OpenAI(base_url=stack["http"] + "/v1", api_key="unused", max_retries=0)
    forced = client.completions.create(model=stack["model"], prompt="the quick", max_tokens=6, temperature=0,
                                       logit_bias={"17": 100}, extra_body={"ignore_eos": True})
    assert forced.usage.completion_tokens == 6
    ids = forced.model_extra["specgrove"]
    assert ids["steps"] >= 1
    eos_first = dict(model=stack["model"], prompt="the quick", max_tokens=10, temperature=0,
                     logit_bias={"2": 100})  # 2 is the tiny models' end-of-sequence token
    assert client.completions.create(**eos_first).usage.completion_tokens == 1
    held = client.completions.create(**eos_first, extra_body={"min_tokens": 4})
    assert held.usage.completion_tokens == 5 and held.choices[0].finish_reason == "stop"
    spec = dict(presence_penalty=1.0, frequency_penalty=0.5, extra_body={"repetition_penalty": 1.3})
    off = client.completions.create(model=stack["model"], prompt="hello world hello", max_tokens=12, temperature=0,
                                    **{**spec, "extra_body": {**spec["extra_body"], "speculation": {"drafter": "none"}}})
    on = client.completions.create(model=stack["model"], prompt="hello world hello", max_tokens=12, temperature=0,
                                   **{**spec, "extra_body": {**spec["extra_body"],
                                                             "speculation": {"drafter": "lookup", "tree": "2,2"}}})
    assert on.choices[0].text == off.choices[0].text
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.completions.create(model=stack["model"], prompt="x", max_tokens=2, logit_bias={"999999": 1})
    with pytest.raises(openai.BadRequestError, match="min_tokens"):
        client.completions.create(model=stack["model"], prompt="x", max_tokens=2, extra_body={"min_tokens": 5})
